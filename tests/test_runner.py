import nbformat
import pandas as pd
import pytest

from avg_lib import results
from avg_lib.runs import config, runner


def _nb(path, params_src, body="x = 1"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nbformat.write(nb, path)
    return path


def test_declared_parameters_reads_literals(tmp_path):
    p = _nb(tmp_path / "01_a.ipynb", 'a = 1\nb = "x"  # comment (with parens)\nc = {"k": [1, 2]}\nd = None')
    assert runner.declared_parameters(p) == {"a": 1, "b": "x", "c": {"k": [1, 2]}, "d": None}


def test_non_literal_parameter_is_rejected(tmp_path):
    with pytest.raises(SystemExit, match="not a literal"):
        runner.declared_parameters(_nb(tmp_path / "01_a.ipynb", "a = 1 + len('x')"))


def test_a_notebook_without_a_profile_parameter_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="must declare `profile`"):
        runner.parameters_for(_nb(tmp_path / "01_a.ipynb", "seed = 0"), "smoke")


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    nbdir, profdir = tmp_path / "notebooks", tmp_path / "profiles"
    nbdir.mkdir()
    profdir.mkdir()
    (profdir / "t.yaml").write_text(f"results_dir: {tmp_path / 'res'}\nseed: 3\n")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(config, "PROFILE_DIR", profdir)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    return tmp_path


def test_failing_notebook_stops_the_run_and_is_named(sandbox, capsys):
    nbdir = sandbox / "notebooks"
    _nb(nbdir / "01_ok.ipynb", 'profile = "smoke"', "open(f'ran_01_{profile}', 'w').write('x')")
    _nb(nbdir / "02_boom.ipynb", 'profile = "smoke"', "raise RuntimeError('boom')")
    _nb(nbdir / "03_never.ipynb", 'profile = "smoke"', "open('ran_03', 'w').write('x')")
    rc = runner.main(["--profile", "t", "--quiet"])
    assert rc == 1
    assert "FAILED: notebooks/02_boom.ipynb" in capsys.readouterr().err
    assert (sandbox / "ran_01_t").exists() and not (sandbox / "ran_03").exists()  # the profile's name was injected
    prov = pd.read_csv(sandbox / "res" / "provenance.csv")
    assert prov["notebook"].tolist() == ["01_ok.ipynb", "02_boom.ipynb"]
    assert prov["status"].tolist()[0] == "ok" and prov["status"].tolist()[1].startswith("failed")
    assert set(prov["profile"]) == {"t"} and set(prov["seed"]) == {3} and (prov["wall_s"] >= 0).all()
    env = pd.read_csv(sandbox / "res" / "environment.csv", dtype=str)  # the packages the run used, named by a hash
    assert {"python", "torch", "pandas"} <= set(env["package"]) and env["package"].is_unique
    assert set(prov["environment"]) == {results.environment_hash(env)}
    assert prov["hardware"].str.fullmatch(r".+ CPU \(\w+\), \d+ cores, torch \d+ threads").all()
    # resume from the failed notebook: only 02 and 03 are attempted
    (nbdir / "02_boom.ipynb").unlink()
    _nb(nbdir / "02_boom.ipynb", 'profile = "smoke"', "pass")
    assert runner.main(["--profile", "t", "--quiet", "--from", "02"]) == 0
    assert (sandbox / "ran_03").exists()


def test_the_runner_rewrites_the_results_readme_after_the_notebooks_it_ran(sandbox):
    res = sandbox / "res"
    _nb(
        sandbox / "notebooks" / "01_writes.ipynb",
        'profile = "smoke"',
        f"import pandas as pd\npd.DataFrame({{'a': [1]}}).to_csv('{res}/x.csv')",
    )
    (res).mkdir()
    (res / "README.md").write_text("stale")
    assert runner.main(["--profile", "t", "--quiet", "--only", "01"]) == 0
    text = (res / "README.md").read_text()
    assert text.startswith("# Results: profile `t`") and "01_writes.ipynb" in text


def test_an_invalid_profile_stops_before_any_notebook_runs(sandbox, capsys):
    _nb(sandbox / "notebooks" / "01_a.ipynb", 'profile = "smoke"', "open('ran', 'w').write('x')")
    (sandbox / "profiles" / "bad.yaml").write_text("generator: {layer: 2}\n")
    assert runner.main(["--profile", "bad", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "'layer'" in err and "did you mean 'layers'" in err
    assert not (sandbox / "ran").exists()


def test_unknown_profile_names_the_known_ones(sandbox, capsys):
    assert runner.main(["--profile", "nope", "--quiet"]) == 2
    assert "known profiles: t" in capsys.readouterr().err


def test_list_and_help(capsys):
    assert runner.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "profile default:" in out and "profile smoke:" in out and "notebook 01_data_preparation.ipynb" in out
    with pytest.raises(SystemExit):
        runner.main(["--help"])
    assert "--profile" in capsys.readouterr().out


def test_the_environment_hash_names_the_listing():
    env = pd.DataFrame({"package": ["numpy", "python", "torch"], "version": ["2.4.6", "3.12.1", "2.13.0"]})
    same = env.copy()
    moved = env.assign(version=["2.4.7", "3.12.1", "2.13.0"])
    assert results.environment_hash(env) == results.environment_hash(same)
    assert results.environment_hash(env) != results.environment_hash(moved)
    assert len(results.environment_hash(env)) == 12


def test_executed_notebooks_keep_their_figures_at_screen_resolution(tmp_path):
    """The committed executed notebooks: each PNG output at most SCREEN_WIDTH wide and re-encoded, text untouched."""
    import base64
    import io

    import nbformat
    import numpy as np
    from PIL import Image

    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (500, 2000, 3), dtype=np.uint8))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    png = base64.b64encode(buf.getvalue()).decode()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot()")
    cell.outputs = [
        nbformat.v4.new_output("stream", text="R@1 25.41\n"),
        nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
    ]
    nb.cells = [cell]
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, str(path))
    runner.screen_resolution(path)
    out = nbformat.read(path, as_version=4).cells[0].outputs
    assert out[0]["text"] == "R@1 25.41\n" and out[1]["data"]["text/plain"] == "<Figure>"
    small = Image.open(io.BytesIO(base64.b64decode(out[1]["data"]["image/png"])))
    assert small.size == (runner.SCREEN_WIDTH, round(500 * runner.SCREEN_WIDTH / 2000))
    assert len(out[1]["data"]["image/png"]) < len(png)


def test_executed_notebooks_name_no_path_of_the_machine_that_ran_them(tmp_path):
    root, data = tmp_path / "checkout", tmp_path / "cache"
    nb = tmp_path / "01_x.ipynb"
    nb.write_text(
        f'{{"metadata": {{"papermill": {{"input_path": "{root}/notebooks/01_x.ipynb"}}}}, '
        f'"text": "loaded {data}/features/emoji-1/x.npy and {root}/results/figures/a.png"}}'
    )
    runner.portable(nb, root, data)
    text = nb.read_text()
    assert str(tmp_path) not in text
    assert '"input_path": "notebooks/01_x.ipynb"' in text and "loaded data/features/emoji-1/x.npy" in text
    assert "results/figures/a.png" in text
