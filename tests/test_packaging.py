"""The two install descriptions say the same thing, and CI runs exactly the README's test command."""

import re
from pathlib import Path

import yaml

from avg_lib.paths import REPO_ROOT


def _pins(lines):
    return sorted(line.strip() for line in lines if line.strip() and not line.strip().startswith(("#", "-e")))


def test_environment_yml_matches_requirements():
    req = _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip) == req
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][\w.+]*", r) for r in req), "every requirement is pinned exactly"
    assert req.count("torch==2.13.0") == 1


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    run = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    ci = [line for line in run if line.strip() and not line.startswith("#")]
    m = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\s*\n(.+?)\n```", readme, re.S)
    assert m, "README must mark its test command with <!-- test-command -->"
    assert m.group(1).strip() in [line.strip() for line in ci]


def test_the_constraints_agree_with_every_pin():
    """constraints.txt (the whole environment, for scripts/setup.sh) pins each requirement at its own version."""
    lock = dict(line.split("==") for line in _pins((REPO_ROOT / "constraints.txt").read_text().splitlines()))
    lock = {name.lower().replace("_", "-"): version for name, version in lock.items()}
    assert "torch" not in lock, "torch is installed on its own (the CPU build), before the constraints apply"
    for req in ("requirements.txt", "requirements-lm.txt"):
        for pin in _pins((REPO_ROOT / req).read_text().splitlines()):
            name, version = pin.split("==")
            if name != "torch":
                assert lock.get(name.lower().replace("_", "-")) == version, f"{req}: {pin} against constraints.txt"
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    assert setup.count("-c constraints.txt") == 2
    assert "--upgrade pip==" in setup  # pip itself pinned: it is in every run's environment.csv


def _third_party_imports() -> set[str]:
    """Top-level names avg_lib imports that are neither the standard library nor avg_lib itself."""
    import ast
    import sys

    names = set()
    for path in (REPO_ROOT / "avg_lib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "avg_lib"}


def _declared() -> set[str]:
    import tomllib

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in deps}


def test_every_package_the_library_imports_is_declared():
    """pyproject's dependencies name the distribution of every third-party module avg_lib imports (a wheel
    installed with its dependencies runs), and each declared one is pinned in requirements.txt."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    declared = _declared()
    for name in _third_party_imports():
        owners = {d.lower() for d in dists.get(name, [])}
        assert owners & declared, f"avg_lib imports {name!r} ({owners or 'not installed'}): not in pyproject"
    pinned = {p.split("==")[0].lower() for p in _pins((REPO_ROOT / "requirements.txt").read_text().splitlines())}
    assert declared <= pinned, f"declared but not pinned: {sorted(declared - pinned)}"


def test_a_wheel_built_from_the_repository_installs_and_imports_every_module(tmp_path):
    """Build the wheel from a copy of the packaging files, install it (no dependencies) into a fresh environment
    that sees this one's packages only through a path entry, and import every module of the installed copy, away
    from the checkout; the ``avg`` console script is installed and answers ``--help``."""
    import shutil
    import subprocess
    import sys
    import sysconfig

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "avg_lib", src / "avg_lib", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("avg_replication-*.whl")
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    py = env / "bin" / "python"
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this environment's packages
    code = (
        "import importlib, pkgutil, avg_lib\n"
        "mods = [m.name for m in pkgutil.walk_packages(avg_lib.__path__, 'avg_lib.')]\n"
        "mods = [m for m in mods if not m.endswith('__main__')]\n"
        "[importlib.import_module(m) for m in mods]\n"
        "print(avg_lib.__file__, len(mods))\n"
    )
    out = subprocess.run([py, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert out[0].startswith(site), f"imported {out[0]}, not the installed wheel"
    expected = [p for p in (REPO_ROOT / "avg_lib").rglob("*.py") if p.name != "__main__.py"]
    assert int(out[1]) == len(expected) - 1  # every module but the package's own __init__
    help_text = subprocess.run([env / "bin" / "avg", "--help"], check=True, capture_output=True, text=True).stdout
    assert all(cmd in help_text for cmd in ("run", "search", "speed", "compare"))


def test_setup_installs_the_cuda_build_of_torch_on_request():
    """`scripts/setup.sh --cuda` takes torch's pinned version from PyTorch's CUDA index; without it the pin alone."""
    import subprocess

    def commands(*flags):
        out = subprocess.run(
            ["bash", "scripts/setup.sh", "--dry-run", *flags], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    torch_cpu = [c for c in commands() if " torch==" in c]
    torch_cuda = [c for c in commands("--cuda", "--lm") if " torch==" in c]
    assert torch_cpu == ["python -m pip install -q torch==2.13.0"]
    assert len(torch_cuda) == 1 and "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu" in torch_cuda[0]
    assert any("requirements-lm.txt" in c for c in commands("--lm")) and not any("lm" in c for c in commands())
    bad = subprocess.run(["bash", "scripts/setup.sh", "--gpu"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --gpu" in bad.stderr
