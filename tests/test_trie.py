import numpy as np
import pytest
import torch
from helpers import save_tiny_t5

from avg_lib.evaluation.benchmark import hf_reference_retrieve
from avg_lib.models.generator import GeneratorConfig, T5Generator
from avg_lib.retrieval.trie import VokenTrie, beam_search

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

    ref_items, ref_scores = hf_reference_retrieve(gen, texts, trie, beams, batch_size=4, return_scores=True)
    assert ours.items.tolist() == ref_items.tolist()
    assert (ref_items >= 0).all()  # never off the trie
    assert torch.allclose(ours.scores, torch.as_tensor(ref_scores), atol=1e-4)  # scores too


def test_packed_and_row_wise_trie_construction_agree():
    """Identifiers whose prefixes fit one int64 are built by a 1-D unique; others row-wise. Same tables."""
    rng = np.random.default_rng(3)
    codes = np.unique(rng.integers(0, 9, size=(300, 3)), axis=0)
    packed = VokenTrie(codes)
    wide = VokenTrie(codes * 2**21)  # (2**21 * 8 + 1) ** 3 > 2**63: the row-wise path, same ordering
    for a, b in zip(packed.tokens, wide.tokens):
        assert (a * 2**21).tolist() == b.tolist()
    for lst in ("offsets", "children"):
        assert all(x.tolist() == y.tolist() for x, y in zip(getattr(packed, lst), getattr(wide, lst)))
    assert packed.leaf_item.tolist() == wide.leaf_item.tolist()
    assert packed.max_children == [len(packed.next_tokens([]))] + packed.max_children[1:]
    assert packed.max_children[1] == max(len(packed.next_tokens([t])) for t in packed.next_tokens([]))


@pytest.fixture(scope="module", params=[False, True], ids=["text states", "with joint-space prior"])
def minilm_generator(request):
    from avg_lib.models.generator import build_generator

    torch.manual_seed(0)
    cfg = GeneratorConfig(
        backend="minilm", layers=2, decoder_width=64, heads=4, temperature=0.5, num_beams=6, joint_prior=request.param
    )
    head = torch.nn.Linear(384, 8) if request.param else None
    return build_generator(16, 3, cfg, np.random.default_rng(0).normal(size=(1, 16, 8)), head).eval()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_minilm_generator_decodes_like_transformers_generate_at_temperature_half(minilm_generator, batch_size):
    """The default backend's network driven by transformers' generate() (a thin GenerationMixin wrapper with its
    own key/value cache) and a temperature processor before the trie constraint: the same ranking as our
    batched trie search, at temperature 0.5 (where scaling after the constraint would differ)."""
    gen = minilm_generator
    rng = np.random.default_rng(1)
    trie = VokenTrie(np.unique(rng.integers(0, 16, size=(200, 3)), axis=0))
    texts = ["a red heart", "two cats on a sofa", "the flag of a country", "rain", "a smiling sun"]
    ours = gen.retrieve(texts, trie, num_beams=6, batch_size=batch_size).items.numpy()
    ref = hf_reference_retrieve(gen, texts, trie, 6, batch_size=batch_size)
    assert ours.tolist() == ref.tolist()
    assert (ref >= 0).all()


def test_fewer_reachable_items_than_beams_return_fewer_unique_items_in_both_decoders(minilm_generator):
    gen = minilm_generator
    trie = VokenTrie(np.array([[1, 2, 3], [1, 2, 4], [5, 0, 0]]))  # 3 items, 6 beams
    texts = ["a red heart", "rain"]
    ours = gen.retrieve(texts, trie, num_beams=6, batch_size=2).items.numpy()
    ref = hf_reference_retrieve(gen, texts, trie, 6, batch_size=2)
    assert ours.tolist() == ref.tolist()
    for row in ours:
        assert sorted(row[:3].tolist()) == [0, 1, 2] and row[3:].tolist() == [-1, -1, -1]


@pytest.mark.parametrize("prior", [False, True])
def test_graphed_retriever_padded_search_ranks_like_retrieve(prior):
    """What a CUDA graph captures (text states padded to max_text_len, every position projected, a static batch)
    ranks and scores exactly like retrieve(); on the CPU it runs without a graph."""
    import dataclasses

    from avg_lib.models.generator import build_generator
    from avg_lib.models.generator.graphed import GraphedRetriever

    torch.manual_seed(0)
    cfg = GeneratorConfig(backend="minilm", layers=2, decoder_width=64, heads=4, temperature=0.5, max_text_len=24)
    head = torch.nn.Linear(384, 8) if prior else None
    gen = build_generator(16, 3, dataclasses.replace(cfg, joint_prior=prior), None, head).eval()
    rng = np.random.default_rng(1)
    trie = VokenTrie(np.unique(rng.integers(0, 16, size=(200, 3)), axis=0))
    texts = ["a red heart", "two cats on a sofa with a very long caption about them", "rain"]
    ref = gen.retrieve(texts, trie, num_beams=5, batch_size=3)
    graphed = GraphedRetriever(gen, trie, num_beams=5, batch_size=4)  # 3 texts in a batch of 4: one idle row
    assert graphed.graph is None
    got = graphed(texts)
    assert got.items.tolist() == ref.items.tolist()
    assert torch.allclose(got.scores, ref.scores, atol=1e-5)
    one = GraphedRetriever(gen, trie, num_beams=5, batch_size=1)
    assert [one([t]).items[0].tolist() for t in texts] == ref.items.tolist()
    with pytest.raises(ValueError, match="batch size 1"):
        one(texts)
