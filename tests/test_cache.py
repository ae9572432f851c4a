"""The one cache-or-compute helper every stage uses."""

import json

import pytest

from avg_lib import cache


def test_builds_once_then_reads_back(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp.name)
        (tmp / "a.txt").write_text("x")

    out = cache.cached(tmp_path / "stage-1", build, {"stage": "t", "k": 1})
    assert calls == ["stage-1.partial"] and (out / "a.txt").read_text() == "x"
    assert cache.stage_config(out)["k"] == 1 and "created_utc" in cache.stage_config(out)
    cache.cached(tmp_path / "stage-1", build, {"stage": "t", "k": 1})
    assert len(calls) == 1
    cache.cached(tmp_path / "stage-1", build, {"stage": "t", "k": 1}, force=True)
    assert len(calls) == 2


def test_a_failed_build_publishes_nothing(tmp_path):
    def build(tmp):
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.cached(tmp_path / "s", build, {})
    assert not (tmp_path / "s").exists() and not cache.is_done(tmp_path / "s")
    # a later run starts from a clean partial folder
    cache.cached(tmp_path / "s", lambda tmp: (tmp / "ok").write_text(str(sorted(p.name for p in tmp.iterdir()))), {})
    assert (tmp_path / "s" / "ok").read_text() == "[]"


def test_an_unfinished_directory_is_rebuilt(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "stale.txt").write_text("old")
    cache.cached(tmp_path / "s", lambda tmp: (tmp / "new.txt").write_text("new"), {})
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["new.txt", "stage.json"]


def test_key_is_stable_and_order_free():
    assert cache.key({"a": 1, "b": [1, 2]}) == cache.key({"b": [1, 2], "a": 1})
    assert cache.key({"a": 1}) != cache.key({"a": 2})
    assert len(cache.key([3, {"x": None}])) == 10
    assert json.loads(json.dumps({"k": cache.key(1)}))


def test_two_processes_needing_one_artefact_build_it_once(tmp_path):
    """Two runs or notebooks at once: the second process waits on the first's
    lock and then reads its artefact instead of building it again into the same partial folder."""
    import subprocess
    import sys

    code = (
        "import sys, time; from pathlib import Path; from avg_lib import cache\n"
        "def build(tmp):\n"
        "    with open(sys.argv[2], 'a') as f: f.write('built\\n')\n"
        "    time.sleep(1.0); (tmp / 'a.txt').write_text('x')\n"
        "out = cache.cached(Path(sys.argv[1]), build, {'stage': 't'})\n"
        "print((out / 'a.txt').read_text())\n"
    )
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "stage-1"), str(log)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["x", "x"]
    assert log.read_text() == "built\n"
