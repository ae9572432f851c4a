"""The two install descriptions say the same thing, and CI runs exactly the README's test command."""

import re

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
