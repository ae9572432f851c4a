"""Row-chunked arrays written straight to disk: bounded memory, resumable, split across processes.

:func:`stream_rows` fills an ``(n, d)`` float32 ``.npy`` file chunk by chunk from ``compute(start, stop)``
through a memory map, so only one chunk is ever in memory (a COCO-sized feature matrix never is). Each
finished chunk is recorded in a small ledger beside the file; a rerun after an interruption computes only
the chunks the ledger lacks. With ``world > 1`` processes (``torchrun`` ranks, or separate jobs), rank ``r``
computes chunks ``r, r + world, ...`` and writes its rows into the same file (disjoint rows of one memory
map); the array is complete once every chunk is in the ledger, whichever rank finished last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avg_lib.progress import tqdm


def _ledger(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.done.{rank}")


def done_chunks(path: str | Path) -> set[int]:
    """Chunks of ``path`` recorded as finished, by every rank."""
    path = Path(path)
    out: set[int] = set()
    for f in path.parent.glob(f"{path.name}.done.*"):
        out |= {int(x) for x in f.read_text().split()}
    return out


def stream_rows(
    path: str | Path,
    n: int,
    compute: Callable[[int, int], np.ndarray],
    chunk: int,
    rank: int = 0,
    world: int = 1,
    desc: str = "rows",
    progress: bool = True,
) -> bool:
    """Fill rows ``[0, n)`` of the float32 array at ``path`` (an ``.npy`` file) from ``compute(start, stop)``,
    ``chunk`` rows at a time, skipping chunks already recorded as done; this rank computes every
    ``world``-th chunk from ``rank``. Returns whether the whole array is now complete.

    The file's shape is fixed by the first chunk ever computed (``spec.json`` beside it keeps ``n``, ``chunk``
    and the width); a rerun with another ``n`` or ``chunk`` is an error naming the file, not a silent mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec_file = path.with_name(f"{path.name}.spec.json")
    chunks = range((n + chunk - 1) // chunk)
    done = done_chunks(path)  # read the ledgers once, not once per chunk
    todo = [c for c in chunks if c % world == rank and c not in done]
    if spec_file.is_file():
        spec = json.loads(spec_file.read_text())
        if (spec["n"], spec["chunk"]) != (n, chunk):
            raise ValueError(
                f"{path}: a partial array of {spec['n']} rows in chunks of {spec['chunk']} is here, not {n} in {chunk};"
                " delete it to start again"
            )
    array = np.load(path, mmap_mode="r+") if path.is_file() else None
    for c in tqdm(todo, desc=desc, disable=not progress):
        start, stop = c * chunk, min(n, (c + 1) * chunk)
        rows = np.asarray(compute(start, stop), dtype=np.float32)
        if rows.shape[0] != stop - start:
            raise ValueError(f"{path}: compute({start}, {stop}) returned {rows.shape[0]} rows")
        if array is None:
            if not path.is_file():  # the first chunk of any rank fixes the width
                _create(path, spec_file, {"n": n, "chunk": chunk, "width": int(rows.shape[1])}, rank)
            array = np.load(path, mmap_mode="r+")
        array[start:stop] = rows
        array.flush()
        with open(_ledger(path, rank), "a") as f:  # recorded only once the rows are on disk
            f.write(f"{c}\n")
    return set(chunks) <= done_chunks(path)


def _create(path: Path, spec_file: Path, spec: dict, rank: int) -> None:
    """Create the zero-filled array once, even when several ranks try at the same moment: each builds its own
    file and links it into place; a link never replaces an existing file, so the first rank's file wins."""
    tmp = path.with_name(f".{path.name}.{rank}.{os.getpid()}.partial")
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(spec["n"], spec["width"])).flush()
    spec_tmp = tmp.with_suffix(".json")
    spec_tmp.write_text(json.dumps(spec))
    os.replace(spec_tmp, spec_file)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def finish(path: str | Path, dest: str | Path) -> None:
    """Move a complete streamed array to ``dest`` and remove its ledger and spec."""
    path = Path(path)
    path.replace(dest)
    for f in [*path.parent.glob(f"{path.name}.done.*"), path.with_name(f"{path.name}.spec.json")]:
        f.unlink()
