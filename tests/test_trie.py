import numpy as np
import pytest
import torch
from helpers import save_tiny_t5

from avg_lib.benchmark import hf_reference_retrieve
from avg_lib.generator import GeneratorConfig, T5Generator
from avg_lib.trie import VokenTrie, beam_search

CODES = np.array([[1, 2, 0], [1, 2, 3], [1, 0, 0], [4, 4, 4], [0, 2, 1]])


def test_trie_tables_and_lookups():
    trie = VokenTrie(CODES)
    assert trie.depth == 3 and trie.size == 5
    assert trie.next_tokens([]) == [0, 1, 4]  # start: the first tokens in use, sorted
    assert trie.next_tokens([1]) == [0, 2]
    assert trie.next_tokens([1, 2]) == [0, 3]
    assert trie.next_tokens([1, 2, 3]) == []  # complete: only end-of-sequence may follow
    assert trie.next_tokens([2]) == [] and trie.next_tokens([1, 1]) == []  # off-trie prefixes
    assert [trie.lookup(c) for c in CODES.tolist()] == [0, 1, 2, 3, 4]
    assert trie.lookup([1, 2, 2]) == -1 and trie.lookup([1, 2]) == -1


def test_trie_rejects_collisions():
    with pytest.raises(ValueError, match="not unique"):
        VokenTrie(np.array([[1, 2], [1, 2]]))


def _random_step(vocab, offset, eos, seed):
    g = torch.Generator().manual_seed(seed)
    table = {}

    def step(prefix, src=None):  # deterministic random log-probs per distinct (row-group, prefix)
        out = []
        for row in prefix.tolist():
            key = tuple(row)
            if key not in table:
                table[key] = torch.log_softmax(torch.randn(vocab, generator=g) * 3, 0)
            out.append(table[key])
        return torch.stack(out)

    return step


def test_beam_search_only_returns_gallery_items_and_exact_scores():
    trie = VokenTrie(CODES)
    step = _random_step(vocab=12, offset=5, eos=2, seed=0)
    res = beam_search(step, n_queries=1, trie=trie, num_beams=5, voken_offset=5, eos_id=2)
    items = res.items[0].tolist()
    assert sorted(items) == [0, 1, 2, 3, 4]  # 5 beams over a 5-item gallery: every item, once
    for item, code, score in zip(items, res.codes[0].tolist(), res.scores[0].tolist()):
        assert code == CODES[item].tolist()
        expect = sum(step(torch.tensor([code[:t]]))[0, 5 + code[t]].item() for t in range(3))
        expect += step(torch.tensor([code]))[0, 2].item()
        assert score == pytest.approx(expect, abs=1e-5)
    assert res.scores[0].tolist() == sorted(res.scores[0].tolist(), reverse=True)


def test_exhaustive_search_equals_brute_force_ranking():
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 6, size=(40, 3)), axis=0)
    trie = VokenTrie(codes)
    step = _random_step(vocab=10, offset=3, eos=0, seed=1)
    res = beam_search(step, 1, trie, num_beams=len(codes), voken_offset=3, eos_id=0)

    def score(c):
        return (
            sum(step(torch.tensor([c[:t]]))[0, 3 + c[t]].item() for t in range(3))
            + step(torch.tensor([c]))[0, 0].item()
        )

    brute = np.argsort([-score(c) for c in codes.tolist()], kind="stable")
    assert res.items[0].tolist() == brute.tolist()


def test_fewer_items_than_beams_pads_with_minus_one():
    trie = VokenTrie(CODES[:2])
    res = beam_search(_random_step(12, 5, 2, 0), 2, trie, num_beams=4, voken_offset=5, eos_id=2)
    for row in res.items.tolist():
        assert sorted(row[:2]) == [0, 1] and row[2:] == [-1, -1]
    assert torch.isinf(res.scores[:, 2:]).all()


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("t5"))


def test_batched_decoding_equals_transformers_prefix_allowed_tokens_fn(tiny_t5):
    """Same model, same inputs: our batched trie search and transformers' generate() with
    prefix_allowed_tokens_fn return the same ranked identifiers."""
    torch.manual_seed(0)
    K, D, beams = 16, 3, 5
    gen = T5Generator(K, D, GeneratorConfig(backend="t5", t5_path=str(tiny_t5), temperature=1.0, num_beams=beams))
    gen.eval()
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, K, size=(60, D)), axis=0)
    trie = VokenTrie(codes)
    texts = ["a red heart", "two cats on a sofa", "the flag of a country", "rain"]
    ours = gen.retrieve(texts, trie, num_beams=beams, batch_size=3)

    ref_items = hf_reference_retrieve(gen, texts, trie, beams, batch_size=4)
    assert ours.items.tolist() == ref_items.tolist()
    assert (ref_items >= 0).all()  # never off the trie
    # scores too: rerun transformers with output scores
    enc = gen.tokenizer(texts, return_tensors="pt", padding=True)
    off, eos = gen.voken_offset, gen.eos_id

    def allowed(batch_id, sent):
        prefix = [t - off for t in sent.tolist()[1:]]
        return [eos] if len(prefix) >= D else [t + off for t in trie.next_tokens(prefix)]

    out = gen.model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=D + 1,
        prefix_allowed_tokens_fn=allowed,
        length_penalty=0.0,
        early_stopping=True,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert torch.allclose(ours.scores, out.sequences_scores.reshape(len(texts), beams), atol=1e-4)
