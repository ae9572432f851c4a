"""Cache-or-compute on disk: the one mechanism every expensive stage uses.

A stage's artefact lives in a directory whose name carries a key of the stage's configuration, and
which sits inside the directory of the stage it was computed from (features / two-tower / tokenizer
/ generator), so an artefact's path names its whole chain of inputs. :func:`cached` builds the
artefact into ``<name>.partial``, writes ``stage.json`` (the configuration that produced it) last,
and publishes the directory with one atomic rename: an interrupted run never leaves a directory
that looks finished, and nothing stale is ever read back, because a changed configuration is a
different directory.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

MARKER = "stage.json"
_READ_ONLY = [False]  # set by reading_only(): a missing artefact is an error instead of being built


class NotCached(LookupError):
    """An artefact asked for under :func:`reading_only` that no run has built yet."""


@contextlib.contextmanager
def reading_only():
    """Within this block :func:`cached` never builds: an artefact not on disk raises :class:`NotCached` naming its
    directory (commands that only read trained models, such as ``search``, must not start a training run)."""
    before, _READ_ONLY[0] = _READ_ONLY[0], True
    try:
        yield
    finally:
        _READ_ONLY[0] = before


def key(obj) -> str:
    """A short, stable hash of any JSON-able object (dict keys sorted; other objects by ``str``)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def is_done(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a published artefact."""
    return (Path(directory) / MARKER).is_file()


def may_build(directory: str | os.PathLike, what: str) -> None:
    """Raise :class:`NotCached` if ``directory`` (the artefact ``what``) is not built and :func:`reading_only` is
    on: for stages that start work of their own before :func:`cached` (streamed features)."""
    if _READ_ONLY[0] and not is_done(directory):
        raise NotCached(f"{directory}: not built yet ({what})")


def cached(
    directory: str | os.PathLike,
    build: Callable[[Path], object],
    config: dict,
    *,
    force: bool = False,
) -> Path:
    """Return ``directory`` once it holds a finished artefact, computing it first if needed.

    ``build(tmp)`` writes the artefact's files into the empty folder ``tmp``; ``config`` (the
    stage's settings and inputs, JSON-able) is saved beside them as ``stage.json``. ``force=True``
    deletes the artefact and computes it again."""
    out = Path(directory)
    may_build(out, config.get("stage", "artefact"))
    dist = distributed()
    if dist is not None:
        return _cached_by_rank_0(dist, out, build, config, force)
    with building(out):  # another process building the same artefact: wait for it, then read its result
        if force:
            shutil.rmtree(out, ignore_errors=True)
        if not is_done(out):
            tmp = out.with_name(out.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            build(tmp)
            _publish(tmp, out, config)
    return out


_HELD: set[Path] = set()  # the locks this process holds: building() is re-entrant within one process


@contextlib.contextmanager
def building(out: Path):
    """Hold an exclusive lock on ``out`` (a hidden ``.<name>.lock`` file beside it) between processes, so that
    two processes needing the same artefact (two runs sharing ``data/``, two notebooks at once) build it once: the
    second waits, then finds it published. Re-entrant within a process (a stage that holds it around work of its
    own before :func:`cached` takes it again). A no-op where ``fcntl`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    lock = (out.parent / f".{out.name}.lock").absolute()
    if lock in _HELD:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _HELD.add(lock)
        try:
            yield
        finally:
            _HELD.discard(lock)
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(tmp: Path, out: Path, config: dict) -> None:
    """Stamp ``tmp`` with ``stage.json`` and move it to ``out`` in one rename."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    (tmp / MARKER).write_text(json.dumps({**config, "created_utc": stamp}, indent=1, default=str))
    shutil.rmtree(out, ignore_errors=True)  # an unfinished directory from an older layout
    os.replace(tmp, out)


def distributed():
    """``torch.distributed`` when this process is one of several ranks (``torchrun``), else ``None``."""
    import sys

    if "torch" not in sys.modules:  # never imports torch itself: without torch there are no ranks
        return None
    import torch.distributed as dist

    ok = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return dist if ok else None


def _cached_by_rank_0(dist, out: Path, build, config: dict, force: bool) -> Path:
    """:func:`cached` under several ranks: every rank runs ``build`` (training is collective), only rank 0
    writes and publishes; the others build into a private folder they then delete, and all return once the
    artefact is published. Rank 0 decides whether it must be built."""
    rank = dist.get_rank()
    if force and rank == 0:
        shutil.rmtree(out, ignore_errors=True)
    need = [not is_done(out)] if rank == 0 else [None]
    dist.broadcast_object_list(need, 0)
    if need[0]:
        tmp = out.with_name(out.name + (".partial" if rank == 0 else f".rank{rank}.partial"))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        if rank == 0:
            _publish(tmp, out, config)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    return out


def trained(
    parent: str | os.PathLike,
    prefix: str,
    label: str,
    version: int,
    settings: dict,
    build: Callable[[Path], object],
    *,
    extra: dict | None = None,
    force: bool = False,
) -> Path:
    """A trained stage under the directory of its input: ``<parent>/<prefix>-<key>``, the key taken from the
    module's cache ``version``, the stage's ``settings`` and the values of ``extra`` (settings kept outside
    the stage's dataclass), all of which are also saved in ``stage.json``; otherwise as :func:`cached`."""
    extra = extra or {}
    parent = Path(parent)
    config = {"stage": label, "cache_version": version, "settings": settings, **extra, "input": str(parent)}
    return cached(parent / f"{prefix}-{key([version, settings, *extra.values()])}", build, config, force=force)


def stage_config(directory: str | os.PathLike) -> dict:
    """The ``stage.json`` of a published artefact."""
    return json.loads((Path(directory) / MARKER).read_text())
