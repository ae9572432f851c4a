import nbformat
import pytest

from avg_lib import runner


def _nb(path, params_src, body="x = 1"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nb, path)
    return path


def test_declared_parameters_reads_literals(tmp_path):
    p = _nb(tmp_path / "01_a.ipynb", 'a = 1\nb = "x"  # comment (with parens)\nc = {"k": [1, 2]}\nd = None')
    assert runner.declared_parameters(p) == {"a": 1, "b": "x", "c": {"k": [1, 2]}, "d": None}


def test_non_literal_parameter_is_rejected(tmp_path):
    with pytest.raises(SystemExit, match="not a literal"):
        runner.declared_parameters(_nb(tmp_path / "01_a.ipynb", "a = 1 + len('x')"))


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(SystemExit, match="known profiles: .*default"):
        runner.load_profile("nope")


def test_failing_notebook_stops_the_run_and_is_named(tmp_path, monkeypatch, capsys):
    nbdir, profdir = tmp_path / "notebooks", tmp_path / "profiles"
    nbdir.mkdir()
    profdir.mkdir()
    _nb(nbdir / "01_ok.ipynb", 'results_dir = "r"\nprofile = "p"\nseed = 0', "open('ran_01', 'w').write('x')")
    _nb(nbdir / "02_boom.ipynb", 'results_dir = "r"', "raise RuntimeError('boom')")
    _nb(nbdir / "03_never.ipynb", 'results_dir = "r"', "open('ran_03', 'w').write('x')")
    (profdir / "t.yaml").write_text(f"results_dir: {tmp_path / 'res'}\ncommon: {{seed: 3}}\nnotebooks: {{}}\n")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(runner, "PROFILE_DIR", profdir)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    rc = runner.main(["--profile", "t", "--quiet"])
    assert rc == 1
    assert "FAILED: notebooks/02_boom.ipynb" in capsys.readouterr().err
    assert (tmp_path / "ran_01").exists() and not (tmp_path / "ran_03").exists()
    import pandas as pd

    prov = pd.read_csv(tmp_path / "res" / "provenance.csv")
    assert prov["notebook"].tolist() == ["01_ok.ipynb", "02_boom.ipynb"]
    assert prov["status"].tolist()[0] == "ok" and prov["status"].tolist()[1].startswith("failed")
    assert set(prov["profile"]) == {"t"} and (prov["wall_s"] >= 0).all()
    # resume from the failed notebook: only 02 and 03 are attempted
    (nbdir / "02_boom.ipynb").unlink()
    _nb(nbdir / "02_boom.ipynb", 'results_dir = "r"', "pass")
    assert runner.main(["--profile", "t", "--quiet", "--from", "02"]) == 0
    assert (tmp_path / "ran_03").exists()


def test_profile_extends_another_key_by_key(tmp_path, monkeypatch):
    nbdir, profdir = tmp_path / "notebooks", tmp_path / "profiles"
    nbdir.mkdir()
    profdir.mkdir()
    _nb(nbdir / "01_a.ipynb", "seed = 0")
    _nb(nbdir / "02_b.ipynb", "seed = 0")
    (profdir / "base.yaml").write_text("description: base\nresults_dir: r\ncommon: {seed: 1, lr: 0.1}\n"
                                       "notebooks: {01_a: {x: 1, y: 2}, 02_b: {z: 3}}\n")
    (profdir / "child.yaml").write_text("description: child\nextends: base\nresults_dir: r2\ncommon: {lr: 0.5}\n"
                                        "notebooks: {01_a: {y: 9}}\n")
    (profdir / "loop.yaml").write_text("extends: loop2\n")
    (profdir / "loop2.yaml").write_text("extends: loop\n")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(runner, "PROFILE_DIR", profdir)
    prof = runner.load_profile("child")
    assert prof == {"description": "child", "results_dir": "r2", "common": {"seed": 1, "lr": 0.5},
                    "notebooks": {"01_a": {"x": 1, "y": 9}, "02_b": {"z": 3}}}
    with pytest.raises(SystemExit, match="cycle: loop -> loop2 -> loop"):
        runner.load_profile("loop")


def test_gpu_profile_is_the_default_run_plus_the_cuda_efficiency_study():
    default, gpu = runner.load_profile("default"), runner.load_profile("gpu")
    assert gpu["common"] == default["common"] and gpu["results_dir"] == "results/gpu"
    assert {k: v for k, v in gpu["notebooks"].items() if k != "08_efficiency_report"} == \
        {k: v for k, v in default["notebooks"].items() if k != "08_efficiency_report"}
    eff = gpu["notebooks"]["08_efficiency_report"]
    assert eff["device"] == "cuda" and max(eff["gallery_sizes"]) == 1_000_000
