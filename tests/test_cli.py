"""The one command line (avg_lib.tools.cli): every command listed and answering --help, and `search` over a run's models
(read from the cache, never trained by it)."""

import pytest

from avg_lib import cache
from avg_lib.runs import search
from avg_lib.tools import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_an_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serach", "x"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_search_lists_avg_and_two_tower_hits_with_vokens(run, monkeypatch):
    """The toy run's models: AVG's hits carry the identifier they decoded, the two-tower's are the nearest images
    by cosine; a query for an image's own embedding finds that image first."""
    target = 7
    monkeypatch.setattr(type(run.js), "embed_queries", lambda self, texts: self.image[[target] * len(texts)])
    text = run.ds.items[target].captions[0]
    (table,) = search.search_run(run, [text], top=3, pseudo=False)
    avg, tt = table[table["method"] == "AVG"], table[table["method"] == "two-tower"]
    assert len(avg) == 3 and len(tt) == 3 and list(tt["rank"]) == [1, 2, 3]
    assert tt["id"].iloc[0] == run.ds.items[target].id
    codes = {"-".join(map(str, c)) for c in run.vt.ids.codes.tolist()}
    assert set(avg["vokens"]) <= codes and avg["vokens"].is_unique


def test_search_never_trains_a_missing_model(run, monkeypatch, capsys):
    """Under reading_only a model not yet in the cache is an error naming it; the command says to run the profile."""
    with cache.reading_only(), pytest.raises(cache.NotCached, match="not built yet"):
        search.search_run(run, ["a red circle"], top=2, pseudo=False)

    def missing(*a, **k):
        raise cache.NotCached("data/x: not built yet (voken generator)")

    monkeypatch.setattr(search, "search_models", missing)
    assert cli.main(["search", "a red circle", "--profile", "smoke"]) == 2
    assert "run ./run_all.sh --profile smoke first" in capsys.readouterr().err
    assert not cache._READ_ONLY[0]  # the switch is reset however the block ends


def test_reading_only_reads_what_is_there(tmp_path):
    built = cache.cached(tmp_path / "a", lambda d: (d / "x").write_text("1"), {"stage": "t"})
    with cache.reading_only():
        assert cache.cached(tmp_path / "a", lambda d: None, {"stage": "t"}) == built
        with pytest.raises(cache.NotCached):
            cache.cached(tmp_path / "b", lambda d: None, {"stage": "t"})
