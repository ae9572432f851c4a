"""Features streamed to disk: equal to computing them at once, resumable after an interruption, split across
ranks, and a mismatched partial array is an error naming the file."""

import numpy as np
import pytest
from helpers import CountingEncoder

from avg_lib.data import features, streaming
from avg_lib.data.synthetic import load_synthetic


def test_stream_rows_resumes_and_splits_across_ranks(tmp_path):
    data = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32)
    seen = []

    def compute(a, b):
        seen.append((a, b))
        return data[a:b]

    p = tmp_path / "a.npy"
    assert not streaming.stream_rows(p, 23, compute, 5, rank=1, world=2, progress=False)  # chunks 1, 3
    assert seen == [(5, 10), (15, 20)] and streaming.done_chunks(p) == {1, 3}
    assert streaming.stream_rows(p, 23, compute, 5, rank=0, world=2, progress=False)  # chunks 0, 2, 4
    assert seen[2:] == [(0, 5), (10, 15), (20, 23)]
    assert np.array_equal(np.load(p), data)
    assert streaming.stream_rows(p, 23, compute, 5, progress=False) and len(seen) == 5  # nothing left to do
    with pytest.raises(ValueError, match=r"a\.npy: a partial array of 23 rows in chunks of 5"):
        streaming.stream_rows(p, 23, compute, 4, progress=False)
    streaming.finish(p, tmp_path / "b.npy")
    assert np.array_equal(np.load(tmp_path / "b.npy"), data) and sorted(x.name for x in tmp_path.iterdir()) == ["b.npy"]


def test_extract_features_resumes_after_an_interruption(tmp_path):
    ds = load_synthetic(n_images=20)
    whole = features.extract_features(ds, CountingEncoder(), CountingEncoder(), batch_size=4, root=tmp_path / "a")
    broken = CountingEncoder(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        features.extract_features(ds, broken, CountingEncoder(), batch_size=4, root=tmp_path / "b", progress=False)
    again = CountingEncoder()
    f = features.extract_features(ds, again, again, batch_size=4, root=tmp_path / "b", progress=False)
    image_chunks, text_chunks = 5, -(-ds.n_captions() // 16)
    assert again.calls == (image_chunks - 3) + text_chunks  # the 3 image chunks done before are not redone
    assert np.array_equal(f.image, whole.image) and np.array_equal(f.text, whole.text)
    assert np.array_equal(f.text_owner, whole.text_owner)
    assert not list((tmp_path / "b").rglob("*.stream")) and not list((tmp_path / "b").rglob("*.done.*"))


def test_extract_features_split_across_two_ranks_equals_one_process(tmp_path):
    ds = load_synthetic(n_images=18)
    one = features.extract_features(ds, CountingEncoder(), CountingEncoder(), batch_size=4, root=tmp_path / "one")
    r1 = features.extract_features(ds, CountingEncoder(), CountingEncoder(), 4, tmp_path / "two", rank=1, world=2)
    assert r1 is None  # its share is done; rank 0 publishes
    r0 = features.extract_features(ds, CountingEncoder(), CountingEncoder(), 4, tmp_path / "two", rank=0, world=2)
    assert np.array_equal(r0.image, one.image) and np.array_equal(r0.text, one.text)
    again = features.extract_features(ds, CountingEncoder(), CountingEncoder(), 4, tmp_path / "two", rank=1, world=2)
    assert again is not None and np.array_equal(again.image, one.image)  # published: every rank loads it


def test_two_processes_extracting_the_same_features_at_once_both_get_one_published_copy(tmp_path):
    """Two runs sharing one empty data/ ask for the same features together: the second waits on the first's lock
    and loads what it published (no chunk computed twice, no ledger read after the first removed it)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, time; import numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from helpers import CountingEncoder\n"
        "from avg_lib.data import features\n"
        "from avg_lib.data.synthetic import load_synthetic\n"
        "class Slow(CountingEncoder):\n"
        "    def _step(self):\n"
        "        super()._step(); open(sys.argv[2], 'a').write('chunk\\n'); time.sleep(0.05)\n"
        "f = features.extract_features(load_synthetic(n_images=24), Slow(), Slow(), 4, root=sys.argv[1],"
        " progress=False)\n"
        "np.save(sys.argv[3], f.text)\n"
    )
    log = tmp_path / "chunks.log"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "data"), str(log), str(tmp_path / f"{i}.npy")])
        for i in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    n_captions = load_synthetic(n_images=24).n_captions()
    assert len(log.read_text().split()) == 24 // 4 + -(-n_captions // 16)  # one extraction's chunks, not two
    assert np.array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))
    assert not list((tmp_path / "data").rglob("*.stream")) and not list((tmp_path / "data").rglob("*.done.*"))
