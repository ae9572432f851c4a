"""Run the notebooks in order with papermill, for one profile (``run_all.sh``).

Each notebook's ``parameters`` cell names the profile (``profile = "smoke"`` as stored, so nbval and a
fresh Jupyter run the smoke settings); the runner injects the chosen profile's name and the notebook
builds everything else from it (:func:`avg_lib.runs.pipeline.setup`). The profile is validated before
anything runs (:mod:`avg_lib.runs.config`). The run stops at the first failing notebook and exits
non-zero, naming it. ``<results_dir>/provenance.csv`` gets one row per notebook (status, wall time, commit,
profile, seed, hardware, and ``environment``: the hash of the installed packages, listed in
``<results_dir>/environment.csv``, :func:`avg_lib.results.environment`), and after the notebooks it ran the runner
rewrites ``<results_dir>/README.md`` from the tables and figures then in that directory
(:mod:`avg_lib.evaluation.report`), so ``--only`` and ``--from`` leave it true.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

from avg_lib.evaluation import report
from avg_lib.paths import REPO_ROOT, data_dir, repo_path
from avg_lib.results import atomic_write, environment, environment_hash, git_commit, hardware, utc_now
from avg_lib.runs import config

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SCREEN_WIDTH = 900  # pixels: the widest figure in a committed executed notebook
HEADLINE_PROFILE = "default"  # the profile whose run writes the headline table of the repository's README.md


def notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def declared_parameters(nb: Path) -> dict[str, object]:
    """Names and literal values assigned in the notebook's cell tagged ``parameters``."""
    import ast

    import nbformat

    cells = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise SystemExit(f"{nb}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    out = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise SystemExit(f"{nb}: the parameters cell may only hold `name = literal` lines (line {node.lineno})")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise SystemExit(f"{nb}: parameter {node.targets[0].id!r} is not a literal (line {node.lineno})") from None
    return out


def parameters_for(nb: Path, profile_name: str) -> dict:
    """What the runner injects: the profile's name (the notebook builds its settings from it)."""
    declared = declared_parameters(nb)
    if "profile" not in declared:
        raise SystemExit(f"{nb}: the parameters cell must declare `profile` (the runner injects the profile's name)")
    return {"profile": profile_name}


def select(todo: list[Path], start: str | None = None, only: list[str] | None = None) -> list[Path]:
    """The notebooks of ``todo`` from ``start`` on (a number or name prefix), then those ``only`` names."""
    if start:
        todo = [p for p in todo if p.stem >= start or p.stem.startswith(start)]
    if only:
        todo = [p for p in todo if any(p.stem.startswith(o) for o in only)]
    return todo


class Provenance:
    """``<results_dir>/provenance.csv``: one row per notebook, rewritten atomically after each one, and the
    installed packages beside it (``environment.csv``)."""

    def __init__(self, results_dir: Path, profile: str, seed: int):
        self.path, self.profile, self.seed = results_dir / "provenance.csv", profile, seed
        self.table = pd.read_csv(self.path) if self.path.exists() else pd.DataFrame()
        self.commit, self.hardware, env = git_commit(), hardware(), environment()
        self.environment = environment_hash(env)
        atomic_write(results_dir / "environment.csv", lambda tmp: env.to_csv(tmp, index=False))

    def record(self, name: str, status: str, t0: float, started: str) -> None:
        row = {
            "notebook": name,
            "status": status,
            "wall_s": round(time.time() - t0, 1),
            "started_utc": started,
            "profile": self.profile,
            "seed": self.seed,
            "git_commit": self.commit,
            "hardware": self.hardware,
            "environment": self.environment,
        }
        prov = self.table[self.table["notebook"] != name] if len(self.table) else self.table
        self.table = pd.concat([prov, pd.DataFrame([row])], ignore_index=True).sort_values("notebook")
        atomic_write(self.path, lambda tmp: self.table.to_csv(tmp, index=False))
        print(f"<== {name}: {status} in {row['wall_s']:.0f}s", flush=True)


def execute(nb: Path, out_dir: Path, profile: str, log_output: bool) -> str:
    """Run one notebook with papermill into ``out_dir``; its status (``ok``, or ``failed: <error type>`` with the
    error printed and the executed copy, traceback included, left in ``out_dir``)."""
    import papermill as pm

    params = parameters_for(nb, profile)
    print(f"==> {nb.relative_to(REPO_ROOT)}  profile={profile}  parameters={params}", flush=True)
    try:
        pm.execute_notebook(
            str(nb),
            str(out_dir / nb.name),
            parameters=params,
            cwd=str(REPO_ROOT),
            log_output=log_output,
            progress_bar=False,
            kernel_name="python3",
        )
    except Exception as e:
        print(
            f"\nFAILED: {nb.relative_to(REPO_ROOT)} ({type(e).__name__}); executed copy with the "
            f"error: {(out_dir / nb.name).relative_to(REPO_ROOT)}\n{e}",
            file=sys.stderr,
        )
        return f"failed: {type(e).__name__}"
    return "ok"


def rewrite_readmes(results_dir: Path, profile: str) -> None:
    """The run's generated README, its paired profile's (each sets the other's shared claims beside its own) and,
    for the default profile, the repository README's headline table."""
    paired = paired_run(profile)
    readmes = [report.write_results_readme(results_dir, profile, paired)]
    if paired is not None and paired[0].resolve() != results_dir.resolve():
        readmes.append(report.write_results_readme(paired[0], paired[1], (results_dir, profile)))
    if profile == HEADLINE_PROFILE and report.write_readme_headline(REPO_ROOT / "README.md", results_dir):
        readmes.append(REPO_ROOT / "README.md")  # its headline table, from this run's main table and claims
    for readme in readmes:
        shown = readme.relative_to(REPO_ROOT) if readme.is_relative_to(REPO_ROOT) else readme
        print(f"<== {shown} rewritten from the tables and figures in that directory", flush=True)


def run(profile_name: str, only: list[str] | None = None, start: str | None = None, log_output: bool = True) -> int:
    """Run the selected notebooks of ``profile_name`` in order; 0, or 1 at the first failing notebook (2 for a
    bad profile or an empty selection). The READMEs are rewritten whatever happened."""
    try:
        cfg = config.load_config(profile_name)
    except config.ConfigError as e:
        print(f"run_all.sh: {e}", file=sys.stderr)
        return 2
    todo = select(notebooks(), start, only)
    if not todo:
        print("no notebook matches the selection", file=sys.stderr)
        return 2
    results_dir = repo_path(cfg.results_dir)
    out_dir = results_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("AVG_PLAIN_PROGRESS")
    os.environ["AVG_PLAIN_PROGRESS"] = "1"  # text progress bars in the executed notebooks and the log
    prov = Provenance(results_dir, profile_name, cfg.seed)
    try:
        for nb in todo:
            t0, started = time.time(), utc_now()
            status = execute(nb, out_dir, profile_name, log_output)
            prov.record(nb.name, status, t0, started)
            if status != "ok":
                return 1
            screen_resolution(out_dir / nb.name)  # the executed copy is committed: its figures at screen size
            portable(out_dir / nb.name)  # and no path of the machine that ran it
    finally:
        rewrite_readmes(results_dir, profile_name)
        if env_before is None:
            os.environ.pop("AVG_PLAIN_PROGRESS", None)
    return 0


# profile runs whose shared claims are set side by side in each other's README (the default's three seeds and the
# full profile's five): profile -> the profile it is compared with
PAIRED_PROFILES = {"default": "full", "full": "default"}


def paired_run(profile: str) -> tuple[Path, str] | None:
    """``(results directory, profile)`` of the run :data:`PAIRED_PROFILES` pairs with ``profile``, if it has one."""
    other = PAIRED_PROFILES.get(profile)
    if other is None:
        return None
    d = repo_path(config.load_config(other).results_dir)
    return (d, other) if (d / "provenance.csv").is_file() else None


def screen_resolution(notebook: Path, max_width: int = SCREEN_WIDTH) -> None:
    """Re-encode every PNG output of an executed notebook at screen resolution (at most ``max_width`` pixels wide,
    256 colours), so that committed notebooks stay small; the figures in ``<results_dir>/figures/`` keep their own
    resolution. Text and table outputs are left as they are."""
    import base64
    import io

    import nbformat
    from PIL import Image

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" not in data:
                continue
            im = Image.open(io.BytesIO(base64.b64decode(data["image/png"]))).convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
            buf = io.BytesIO()
            im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, "PNG", optimize=True)
            data["image/png"] = base64.b64encode(buf.getvalue()).decode()
            out.get("metadata", {}).pop("image/png", None)  # a stored width/height would stretch the smaller image
    atomic_write(notebook, lambda tmp: nbformat.write(nb, str(tmp)))


def portable(notebook: Path, root: Path = REPO_ROOT, data: Path | None = None) -> None:
    """Write the checkout's and the data directory's absolute paths in an executed notebook as relative ones
    (``notebooks/01_x.ipynb``, ``data/features/...``), in its outputs and papermill's metadata alike, so that a
    committed copy says nothing about the machine that ran it."""
    data = Path(data or data_dir())
    text = notebook.read_text()
    new = text.replace(f"{data.resolve()}/", "data/").replace(f"{data}/", "data/")
    new = new.replace(f"{Path(root).resolve()}/", "").replace(f"{root}/", "")
    if new != text:
        atomic_write(notebook, lambda tmp: Path(tmp).write_text(new))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="run_all.sh",
        description=(
            "Execute the notebooks in order with papermill, regenerating every table (CSV) and figure (PNG) "
            "of the chosen profile. Executed notebooks go to <results_dir>/notebooks/, timings to "
            "<results_dir>/provenance.csv."
        ),
    )
    ap.add_argument(
        "--profile",
        default="default",
        help=f"profiles/<name>.yaml, one of: {', '.join(config.known_profiles())} (default: default)",
    )
    ap.add_argument("--only", nargs="+", metavar="NN", help="run only the notebooks whose names start with these")
    ap.add_argument("--from", dest="start", metavar="NN", help="start at this notebook (resume after a failure)")
    ap.add_argument("--list", action="store_true", help="list profiles and notebooks, then exit")
    ap.add_argument("--quiet", action="store_true", help="do not stream notebook output to the terminal")
    args = ap.parse_args(argv)
    if args.list:
        for name in config.known_profiles():
            print(f"profile {name}: {config.load_profile(name).get('description', '')}")
        for nb in notebooks():
            print(f"notebook {nb.name}")
        return 0
    return run(args.profile, args.only, args.start, log_output=not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
