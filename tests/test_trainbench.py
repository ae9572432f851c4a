"""The training benchmark on the CPU at a tiny size, and (where CUDA exists) training on the GPU."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import save_tiny_llama

from avg_lib.models.generator import GeneratorConfig, build_generator, train_generator, training_device
from avg_lib.tools import trainbench

TINY = GeneratorConfig(layers=1, decoder_width=32, heads=4, epochs=1, batch_size=16, num_beams=4, disc_negatives=3)


def test_synthetic_training_set_has_the_asked_sizes_and_unique_identifiers():
    data = trainbench.synthetic_training_set(20, 3, 5, 12, depth=3, vocab=16)
    assert len(data.texts) == len(data.codes) == 60 and data.image_codes.shape == (20, 3)
    assert len(np.unique(np.concatenate([data.image_codes, data.val[2]]), axis=0)) == 25
    assert len(data.val[0]) == 12 and data.val[1].max() < 5


def test_epoch_costs_times_both_stages_and_reports_ratios_to_the_first_setting(tmp_path):
    data = trainbench.synthetic_training_set(24, 2, 6, 12, depth=2, vocab=8)
    table = trainbench.epoch_costs(TINY, data, tmp_path, settings=(("cpu", "fp32"), ("cpu", "bf16")), epochs=2)
    assert table[["device", "precision"]].values.tolist() == [["cpu", "fp32"], ["cpu", "bf16"]]
    assert (table["generative_epoch_s"] > 0).all() and table["speedup"].iloc[0] == 1.0
    row = table.iloc[0]
    assert row["generator_s"] == pytest.approx(2 * row["generative_epoch_s"] + 2 * row["discriminative_epoch_s"])


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        training_device(dataclasses.replace(TINY, device="cuda"))
    assert training_device(TINY).type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["minilm", "decoder", "decoder-cached"])
def test_training_on_the_gpu_follows_the_cpu(backend, tmp_path):
    """Same seed, same batches, no dropout: the GPU's losses and validation recall follow the CPU's (float
    rounding differs between the devices, so they are close rather than equal). ``decoder-cached``: the lower
    layer frozen and its states kept on the GPU (``lm_cache_frozen``)."""
    from pathlib import Path

    from avg_lib.models.generator.config import minilm_dir

    weights = ("model.safetensors", "pytorch_model.bin")
    if backend == "minilm" and not any((Path(minilm_dir()) / w).is_file() for w in weights):
        pytest.skip("MiniLM's weights are not installed (a checkout without the pretrained packages)")
    data = trainbench.synthetic_training_set(40, 2, 10, 20, depth=2, vocab=8)
    lm = {"lm_path": str(save_tiny_llama(tmp_path / "lm"))} if backend != "minilm" else {}
    if backend == "decoder-cached":
        lm.update(lm_train_layers=1, lm_cache_frozen=True)
    cfg = dataclasses.replace(TINY, dropout=0.0, epochs=2, disc_epochs=1, backend=backend.split("-")[0], **lm)
    hist = {}
    for device in ("cpu", "cuda"):
        c = dataclasses.replace(cfg, device=device)
        gen = build_generator(8, 2, c, None).to(training_device(c))
        gen, hist[device] = train_generator(
            gen, (data.texts, data.codes), data.val, train_codes_all=data.image_codes, progress=False
        )
        assert next(gen.parameters()).device.type == device
    for a, b in zip(hist["cpu"], hist["cuda"]):
        assert b["train_gen_loss"] == pytest.approx(a["train_gen_loss"], rel=1e-3)
        assert b["train_listwise_loss"] == pytest.approx(a["train_listwise_loss"], rel=1e-2, abs=1e-4)


def test_random_lm_has_smollm2_135m_shape():
    """The decoder backend's stand-in for timing has SmolLM2-135M-Instruct's 134,515,008 parameters (its GGUF
    dequantised by transformers has the same count)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from avg_lib.tools.randomgen import SMOLLM2_SHAPE

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPE))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_epoch_costs_time_each_backend_and_scale_a_fraction_to_the_whole(tmp_path, monkeypatch):
    from avg_lib.tools import randomgen

    tiny_lm = dict(randomgen.SMOLLM2_SHAPE, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    monkeypatch.setattr(randomgen, "SMOLLM2_SHAPE", dict(tiny_lm, num_attention_heads=4, num_key_value_heads=2))
    data = trainbench.synthetic_training_set(8, 2, 4, 6, depth=2, vocab=8)
    backends = ("minilm", "decoder", "decoder:1", "decoder:1:cached", "decoder:1:cached:twice")
    table = trainbench.epoch_costs(
        TINY, data, tmp_path, settings=(("cpu", "fp32"),), epochs=2, backends=backends, full_pairs=64
    )
    assert table["backend"].tolist() == ["minilm"] + ["decoder"] * 4
    assert table["lm_train_layers"].tolist() == [0, 0, 1, 1, 1]
    assert table["lm_cache_frozen"].tolist() == [False, False, False, True, True]
    assert table["mining_shares_prompts"].tolist() == [False, True, True, True, False]  # :twice, the baseline
    assert (table["train_pairs"] == 64).all() and (table["measured_pairs"] == 16).all()
    row = table.iloc[1]
    assert row["generative_epoch_s"] == pytest.approx(4 * row["generative_ms_per_pair"] * 16 / 1000)
    assert (table["once_s"] > 0).tolist() == [False, False, False, True, True]  # only the cached pass works once
    assert all(
        r["generator_s"] == pytest.approx(r["once_s"] + 2 * r["generative_epoch_s"] + 2 * r["discriminative_epoch_s"])
        for _, r in table.iterrows()
    )
    assert row["speedup"] == pytest.approx(table["generator_s"].iloc[0] / row["generator_s"])


@pytest.mark.parametrize(
    "spec", ["decoder:x", "minilm:2", "gpt", "decoder:2:kept", "decoder::cached", "decoder:2:twice:cached", "minilm:"]
)
def test_a_backend_entry_that_is_not_one_is_named(spec):
    with pytest.raises(ValueError, match=spec):
        trainbench.backend_settings(spec)
    expected = {"backend": "decoder", "lm_train_layers": 6, "lm_cache_frozen": False}
    assert trainbench.backend_settings("decoder:6") == expected
    assert trainbench.backend_settings("decoder:6:cached")["lm_cache_frozen"]
    assert trainbench.parse_backend("decoder:6:cached:twice") == ({**expected, "lm_cache_frozen": True}, True)
    assert trainbench.parse_backend("decoder:0:twice") == ({**expected, "lm_train_layers": 0}, True)


def test_the_benchmark_can_draw_its_captions_from_real_ones():
    """``--captions real``: captions drawn with the seed from the data set's, identifiers still random; a pool
    smaller than the training set is drawn from again."""
    from avg_lib.runs import config
    from avg_lib.tools import speed

    pool = speed.real_captions(config.load_config("smoke"))
    assert pool and all(isinstance(c, str) and c for c in pool)
    data = trainbench.synthetic_training_set(10, 3, 4, 6, depth=2, vocab=8, pool=pool)
    assert set(data.texts + data.val[0]) <= set(pool) and len(data.texts) == 30
    again = trainbench.synthetic_training_set(10, 3, 4, 6, depth=2, vocab=8, pool=pool)
    assert again.texts == data.texts  # drawn with the seed
    small = trainbench.synthetic_training_set(10, 3, 4, 6, depth=2, vocab=8, pool=["a b", "c"])
    assert len(small.texts) == 30 and set(small.texts) == {"a b", "c"}
    with pytest.raises(ValueError, match="caption pool is empty"):
        trainbench.synthetic_training_set(10, 3, 4, 6, depth=2, vocab=8, pool=[])


def test_the_training_benchmark_command_records_its_captions(tmp_path):
    import json

    from avg_lib.tools import speed

    args = ["--profile", "smoke", "--what", "training", "--settings", "cpu:fp32", "--fraction", "0.01"]
    speed.main([*args, "--captions", "real", "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "training_speed.csv")
    assert table["backend"].tolist() == ["minilm"] and table["discriminative_epoch_s"].notna().all()
    command = json.loads((tmp_path / "config" / "training_speed.json").read_text())["config"]["speed_command"]
    assert command["captions"] == "real"
    with pytest.raises(SystemExit):
        speed.main([*args, "--captions", "made-up", "--out", str(tmp_path)])
