"""Result files: written atomically (no partial file is ever left behind) and stamped with provenance.

Every CSV row carries ``profile``, ``seed`` (the row's own, for tables with one row per seed),
``git_commit`` (``+dirty`` when tracked files outside ``results/`` had uncommitted changes) and
``created_utc``, and the run configuration that produced a table is saved beside it
(``config/<name>.json``); :mod:`avg_lib.runs.runner` adds the wall time of each notebook to
``<results_dir>/provenance.csv``, with a short hash of the installed packages (:func:`environment`, listed in
``<results_dir>/environment.csv``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import uuid
from pathlib import Path

import pandas as pd

from avg_lib.paths import REPO_ROOT, repo_path

PROVENANCE_COLUMNS = ("profile", "seed", "git_commit", "created_utc")


def git_commit(root: Path = REPO_ROOT) -> str:
    """The checkout's commit (``+dirty`` with uncommitted code changes; ``unknown`` outside a git checkout)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        # outputs under results/ do not count: a run rewrites them as it goes, and they are not code
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def hardware(device: str | None = None) -> str:
    """The machine a number was measured on: the GPU when ``device`` is CUDA (default: when one is present),
    else the CPU."""
    import torch

    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB (torch {torch.__version__}, CUDA)"
    # the CPU model and the instruction set torch dispatches to: kernels differ between them, and so does float
    # rounding, so the same code and packages can train slightly different models on another CPU
    cap = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_model()} CPU ({cap}), {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> pd.DataFrame:
    """The software a run used: Python and every installed distribution with its version, sorted by name.
    Two runs whose listings differ may differ in their numbers even at the same commit and seed (a package
    that changes float rounding moves every trained model after it); :func:`environment_hash` names it."""
    rows = {"python": platform.python_version()}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            rows.setdefault(name.lower().replace("_", "-"), dist.version)
    return pd.DataFrame(sorted(rows.items()), columns=["package", "version"])


def environment_hash(env: pd.DataFrame) -> str:
    """12 hex digits identifying an :func:`environment` listing (the same listing gives the same hash)."""
    text = "\n".join(f"{p}=={v}" for p, v in zip(env["package"], env["version"]))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def environment_note(prov: pd.DataFrame) -> str:
    """One sentence on the installed packages that the notebooks of ``provenance.csv`` (its rows: ``prov``) ran
    with, for ``results/README.md``; ``environment.csv`` lists the latest."""
    envs = prov.get("environment")
    if envs is not None and envs.notna().all() and envs.nunique() == 1:
        return f"Every notebook ran with the same installed packages (`environment.csv`, hash `{envs.iloc[0]}`)."
    return "**The notebooks did not all run with one recorded set of installed packages**: compare with care."


def atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial"))
    # created like open() would (mode 0666 less the umask); mkstemp would make an owner-only file
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_csv(
    df: pd.DataFrame, path: str | os.PathLike, profile: str, seed: int | str, config: dict | None = None
) -> Path:
    """Write ``df`` plus the provenance columns to ``path`` (relative paths: from the repo root).

    A table with its own ``seed`` column (one row per training seed) keeps it: a row's seed is more
    specific than the run's. Any other provenance column already in ``df`` is an error. ``config``
    (the run configuration) is saved as ``config/<name>.json`` beside the CSV."""
    df = df.copy()
    commit, now = git_commit(), utc_now()
    for name, value in zip(PROVENANCE_COLUMNS, (profile, seed, commit, now)):
        if name not in df.columns:
            df[name] = value
        elif name != "seed":
            raise ValueError(f"{path}: column {name!r} is reserved for provenance")
    path = repo_path(path)
    if config is not None:
        meta = {"table": path.name, "profile": profile, "git_commit": commit, "created_utc": now, "config": config}
        write_text(json.dumps(meta, indent=1, default=str) + "\n", config_path(path))
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.4f"))


def config_path(csv_path: str | os.PathLike) -> Path:
    """Where the run configuration of a results CSV is saved: ``<dir>/config/<name>.json``."""
    p = repo_path(csv_path)
    return p.parent / "config" / f"{p.stem}.json"


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (markdown tables, reports) atomically."""
    return write_file(path, lambda f: f.write(text), mode="w")


INDEX_HEADING = "## Other studies in this folder"
GENERATED = "do not edit by hand"  # how a generated README says it is one (and may be rewritten)


def write_readme(directory: str | os.PathLike, title: str, made_by: str, body: list[str]) -> Path:
    """Every generated README: ``<directory>/README.md`` with the heading ``title``, the paragraph ``made_by`` (the
    command that generated it, saying "do not edit by hand"), the ``body`` lines, and the links to studies in
    subfolders (:func:`study_index`); then the generated README of the folder above links this one."""
    if GENERATED not in made_by:
        raise ValueError(f"a generated README must say '{GENERATED}': {made_by[:80]!r}")
    d = Path(directory)
    written = write_text("\n".join([f"# {title}", "", made_by, "", *body, *study_index(d)]), d / "README.md")
    refresh_study_index(d.parent / "README.md")
    return written


def study_index(d: str | os.PathLike, skip=("notebooks", "smoke")) -> list[str]:
    """README lines linking each subfolder of ``d`` that holds a README (a study made by another command: timing,
    GPU, scale, language models) with that README's title; none where there is none."""
    subs = sorted(p.parent for p in Path(d).glob("*/README.md") if p.parent.name not in skip)
    if not subs:
        return []
    title = {s: s.joinpath("README.md").read_text().splitlines()[0].removeprefix("# ") for s in subs}
    return [INDEX_HEADING, "", *[f"- [`{s.name}/`]({s.name}/README.md): {title[s]}" for s in subs], ""]


def refresh_study_index(readme: str | os.PathLike) -> Path | None:
    """Rewrite the :func:`study_index` at the end of a generated ``readme`` after another command added a study
    beside it (an index written before it had its heading: the trailing run of links). Nothing where ``readme``
    does not exist or was not generated (it does not say "do not edit by hand": a hand-written README is left as
    it is)."""
    readme = Path(readme)
    text = readme.read_text() if readme.exists() else ""
    if GENERATED not in text:
        return None
    lines = text.splitlines()
    if INDEX_HEADING in lines:
        lines = lines[: lines.index(INDEX_HEADING)]
    while lines and (not lines[-1].strip() or lines[-1].startswith("- [`")):
        lines.pop()
    return write_text("\n".join([*lines, "", *study_index(readme.parent)]), readme)


def write_file(path: str | os.PathLike, save, mode: str = "wb") -> Path:
    """``save(file)`` into ``path``, opened with ``mode``, atomically (no partial file on an interruption): e.g.
    ``write_file(p, lambda f: np.savez(f, **arrays))``."""

    def write(tmp):
        with open(tmp, mode) as f:
            save(f)

    return atomic_write(repo_path(path), write)


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    return atomic_write(repo_path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
