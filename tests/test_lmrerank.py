"""The generative (causal-LM) re-ranker on a tiny random Llama the tests save themselves."""

import dataclasses

import numpy as np
import pytest
import torch
from helpers import save_tiny_llama

from avg_lib.models import rerank
from avg_lib.models.lmrerank import LMRerankConfig, LMReranker

K, D = 8, 3
CODES = np.array([[1, 2, 0], [1, 2, 3], [1, 0, 0], [4, 4, 4], [0, 2, 1], [7, 6, 5]])
TEXTS = ["a red heart", "a green heart with a much longer caption than the others", "a cat", "a dog"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("llama")))


IMAGES = np.random.default_rng(1).normal(size=(len(CODES), 5)).astype(np.float32)


def toy(n_cand=4):
    rng = np.random.default_rng(0)
    items = np.stack([rng.permutation(len(CODES))[:n_cand] for _ in TEXTS])
    items[0, -1] = -1  # a query whose beam search found fewer candidates
    cand = rerank.Candidates(items, np.zeros(items.shape))
    inp = rerank.RerankInputs(TEXTS, np.zeros((4, 2)), IMAGES, CODES, np.array([0, 1, 2, 3]))
    return inp, cand


def reranker(llama, image_token, codebooks=None, **settings):
    cfg = LMRerankConfig(lm_path=llama, image_token=image_token, **settings)
    return LMReranker(K, D, codebooks, cfg, image_dim=IMAGES.shape[1] if image_token else None)


@pytest.mark.parametrize(("image_token", "image_tokens"), [(False, 1), (True, 1), (True, 2)])
def test_shared_prompt_scores_equal_each_pair_scored_alone(llama, image_token, image_tokens):
    """The query's prompt runs once for its K candidates (left-padded beside longer queries): each score equals
    the head on the last hidden state of that one (prompt + vokens [+ image tokens]) sequence, run whole."""
    codebooks = np.random.default_rng(0).normal(size=(1, K, 16))
    rr = reranker(llama, image_token, codebooks, image_tokens=image_tokens)
    inp, cand = toy()
    got = rr.score(inp, cand, batch_size=3)
    assert got.shape == cand.items.shape and np.isfinite(got).all()
    gen = rr.gen
    with torch.no_grad():
        for q in (0, 1):
            for j in (0, 2):
                ids = gen.tokenizer(gen.cfg.prompt.format(text=TEXTS[q]), return_tensors="pt")["input_ids"]
                item = max(cand.items[q, j], 0)
                vok = torch.as_tensor(CODES[item]).unsqueeze(0) + gen.voken_offset
                x = gen.lm.get_input_embeddings()(torch.cat([ids, vok], 1))
                if image_token:
                    soft = rr.image_proj(torch.from_numpy(IMAGES[item])).reshape(1, image_tokens, -1)
                    x = torch.cat([x, soft], 1)
                h = gen.lm.base_model(inputs_embeds=x).last_hidden_state[:, -1]
                assert float(rr.head(h)) == pytest.approx(got[q, j], abs=1e-4)


def test_the_image_token_makes_a_score_read_the_candidates_image(llama):
    inp, cand = toy()
    other = rerank.RerankInputs(TEXTS, inp.text_feats, IMAGES[::-1].copy(), CODES, inp.targets)
    with_image, vokens_only = reranker(llama, True), reranker(llama, False)
    assert not np.allclose(with_image.score(inp, cand), with_image.score(other, cand))
    assert np.allclose(vokens_only.score(inp, cand), vokens_only.score(other, cand))


def test_settings_it_cannot_honour_are_named(llama):
    with pytest.raises(ValueError, match="image_dim"):
        LMReranker(K, D, None, LMRerankConfig(lm_path=llama))
    with pytest.raises(ValueError, match="device"):
        LMReranker(K, D, None, LMRerankConfig(lm_path=llama, image_token=False, device="tpu"))
    with pytest.raises(ValueError, match="scoring"):
        reranker(llama, True, scoring="dot")
    for bad in ({"scoring": "likelihood"}, {"align_epochs": 1}):
        with pytest.raises(ValueError, match="set image_token"):
            reranker(llama, False, **bad)
    for bad in ({"image_tokens": 0}, {"caption_prompt": "Caption:"}):
        with pytest.raises(ValueError, match="caption_prompt must hold"):
            reranker(llama, True, **bad)


def test_likelihood_scores_are_each_querys_log_probability_given_the_candidates_image(llama):
    """Batched and right-padded beside longer queries, each score equals log P(query + end | prompt with the
    image's soft tokens) of that one sequence run whole, summed over the query's tokens."""
    rr = reranker(llama, True, scoring="likelihood", image_tokens=2)
    inp, cand = toy()
    got = rr.score(inp, cand, batch_size=3)
    assert got.shape == cand.items.shape and (got < 0).all()
    gen, emb = rr.gen, rr.gen.lm.get_input_embeddings()
    pre, post = rr.cfg.caption_prompt.split("{image}")
    with torch.no_grad():
        for q in (0, 1):
            for j in (0, 2):
                item = max(cand.items[q, j], 0)
                first = gen.tokenizer(pre, return_tensors="pt")["input_ids"]
                words = gen.tokenizer(" " + TEXTS[q], add_special_tokens=False)["input_ids"] + [gen.eos_id]
                rest = gen.tokenizer(post, add_special_tokens=False)["input_ids"] + words
                soft = rr.image_proj(torch.from_numpy(IMAGES[item])).reshape(1, 2, -1)
                x = torch.cat([emb(first), soft, emb(torch.tensor([rest]))], 1)
                logp = torch.log_softmax(gen.lm(inputs_embeds=x).logits[0], -1)
                start = x.shape[1] - len(words)
                want = sum(float(logp[start - 1 + i, w]) for i, w in enumerate(words))
                assert want == pytest.approx(got[q, j], abs=1e-3)
        soft = rr._soft(torch.from_numpy(IMAGES))
        whole = rr.log_likelihood([TEXTS[i % 4] for i in range(len(IMAGES))], soft)
        chunked = rr.log_likelihood([TEXTS[i % 4] for i in range(len(IMAGES))], soft, chunk=4)
        assert torch.allclose(whole, chunked, atol=1e-4)  # run in chunks, the same scores


def test_alignment_trains_only_the_image_projection_and_keeps_its_best_validation_epoch(llama):
    inp, cand = toy()
    rr = reranker(llama, True, scoring="likelihood", align_epochs=4, epochs=0, batch_size=2, align_lr=3e-2)
    before = {n: p.detach().clone() for n, p in rr.gen.named_parameters()}
    proj = [p.detach().clone() for p in rr.image_proj.parameters()]
    val = toy()
    rr.fit(inp, cand, val=val)
    rows = rr.history
    assert [r["stage"] for r in rows] == ["align"] * 4 and rows[-1]["train_nll"] < rows[0]["train_nll"]
    assert all(torch.equal(p, before[n]) for n, p in rr.gen.named_parameters())
    assert not all(torch.equal(a, b) for a, b in zip(proj, rr.image_proj.parameters()))
    assert rr.caption_nll(val[0]) == pytest.approx(min(r["val_nll"] for r in rows), rel=1e-5)
    assert all(p.requires_grad for p in rr.gen.parameters())  # the LM is trainable again for the group epochs


@pytest.mark.parametrize(
    ("image_token", "train_layers", "scoring"),
    [(False, 0, "head"), (True, 0, "head"), (True, 1, "head"), (True, 0, "likelihood")],
)
def test_fit_lowers_the_group_loss_and_reranking_permutes_the_beams(llama, image_token, train_layers, scoring):
    """Also with only the top layer trained: the input embeddings and the lower layer keep their values; and
    with likelihood scores, where the softmax over each group's log-likelihoods is the loss."""
    inp, cand = toy()
    rr = reranker(
        llama,
        image_token,
        negatives=2,
        epochs=6,
        batch_size=2,
        lr=3e-3,
        head_lr=3e-3,
        train_layers=train_layers,
        scoring=scoring,
    )
    before = {n: p.detach().clone() for n, p in rr.gen.named_parameters()}
    rr.fit(inp, cand)
    assert rr.history[-1]["train_loss"] < rr.history[0]["train_loss"]
    changed = {n for n, p in rr.gen.named_parameters() if not torch.equal(p, before[n])}
    assert ("lm.model.layers.1.mlp.up_proj.weight" in changed) and (
        "lm.model.layers.0.mlp.up_proj.weight" in changed
    ) != bool(train_layers)
    assert ("lm.model.embed_tokens.weight" in changed) != bool(train_layers)
    order, _ = rerank.rerank(rr, inp, cand)
    for a, b in zip(order, cand.items):
        assert sorted(a.tolist()) == sorted(b.tolist())
    assert order[0, -1] == -1  # an empty slot stays last


def test_fit_with_validation_keeps_the_epoch_with_the_best_validation_recall(llama, monkeypatch):
    """Each epoch's history row has the validation R@1 of the re-ranked beams, and ``fit`` returns the state of
    the best epoch (here the second of three, by validation rankings that the test dictates)."""
    inp, cand = toy()
    right = np.asarray(inp.targets)[:, None].repeat(cand.items.shape[1], 1)
    dictated = iter([np.where(np.arange(4)[:, None] == 0, right, -1), right, np.full_like(right, -1)])
    seen = []

    def fake_rerank(rr, val_inputs, val_cand):
        seen.append(rr.head[0].weight.detach().clone())
        return next(dictated), 0.0

    monkeypatch.setattr(rerank, "rerank", fake_rerank)
    rr = reranker(llama, True, negatives=2, epochs=3, batch_size=2, lr=3e-3, head_lr=3e-3).fit(
        inp, cand, val=(inp, cand)
    )
    assert [h["val_R@1"] for h in rr.history] == [25.0, 100.0, 0.0]
    assert not torch.equal(seen[1], seen[2])
    assert torch.equal(rr.head[0].weight, seen[1])


def test_alignment_then_group_epochs_train_the_lm_with_the_head(llama):
    """The paper's head scoring after an alignment stage: the LM is frozen only while aligning."""
    inp, cand = toy()
    rr = reranker(llama, True, align_epochs=1, negatives=2, epochs=2, batch_size=2, lr=3e-3, head_lr=3e-3)
    before = {n: p.detach().clone() for n, p in rr.gen.named_parameters()}
    rr.fit(inp, cand)
    assert [r.get("stage", "groups") for r in rr.history] == ["align", "groups", "groups"]
    assert not torch.equal(rr.gen.lm.model.layers[0].mlp.up_proj.weight, before["lm.model.layers.0.mlp.up_proj.weight"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scoring", ["head", "likelihood"])
def test_on_cuda_it_scores_as_on_the_cpu_and_trains(llama, scoring):
    """The same seed builds the same re-ranker on either device: its scores agree (to float tolerance across
    devices), and alignment plus a group epoch run on CUDA and give finite scores."""
    inp, cand = toy()
    settings = {"scoring": scoring, "image_tokens": 2}
    on_cpu, on_gpu = reranker(llama, True, **settings), reranker(llama, True, device="cuda", **settings)
    assert np.allclose(on_cpu.score(inp, cand), on_gpu.score(inp, cand), atol=1e-3, rtol=1e-4)
    trained = reranker(llama, True, device="cuda", align_epochs=1, negatives=2, epochs=1, batch_size=2, **settings)
    trained.fit(inp, cand, val=(inp, cand))
    assert [r.get("stage", "groups") for r in trained.history] == ["align", "groups"]
    assert np.isfinite(trained.score(inp, cand)).all()


class Interrupt(Exception):
    """Stands in for a run interrupted mid-training."""


def states(rr) -> dict:
    return {
        f"{m}.{k}": v.clone() for m in ("gen", "head", "image_proj") for k, v in getattr(rr, m).state_dict().items()
    }


ALIGNMENT = {"scoring": "likelihood", "align_epochs": 3, "epochs": 0, "image_tokens": 2}  # the lm profile's recipe
BOTH = {"align_epochs": 2, "epochs": 3, "negatives": 2, "lr": 3e-3, "head_lr": 3e-3}  # both stages, the LM trained


@pytest.mark.parametrize(
    ("settings", "stop_after"),
    [(ALIGNMENT, 1), (ALIGNMENT, 2), (BOTH, 1), (BOTH, 2), (BOTH, 4)],
    ids=[
        "mid-alignment",
        "before the last alignment epoch",
        "mid-alignment, then groups",
        "after alignment",
        "mid-groups",
    ],
)
def test_an_interrupted_fit_resumes_at_its_last_epoch_and_ends_as_one_call_would(
    llama, tmp_path, monkeypatch, settings, stop_after
):
    """Stopped after ``stop_after`` epochs (mid-alignment, at the end of alignment, mid-groups), a fresh re-ranker
    given the same checkpoint finishes with the same history, the same trained state and the same scores as one
    uninterrupted call; the checkpoint counts the calls and sums their training seconds (each epoch takes 10 s of a
    clock the test holds). A checkpoint of other settings is refused by name."""
    import types

    from avg_lib.models import lmcheckpoint
    from avg_lib.models.lmcheckpoint import RerankCheckpoint, progress

    clock = [0.0]
    monkeypatch.setattr(lmcheckpoint, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def build(stop=None):
        rr, epochs = reranker(llama, True, batch_size=2, align_lr=3e-2, **settings), []
        real = rr._epoch

        def ticking(*args):
            if len(epochs) == stop:
                raise Interrupt
            epochs.append(real(*args))
            clock[0] += 10.0
            return epochs[-1]

        rr._epoch = ticking
        return rr

    total = settings["align_epochs"] + settings["epochs"]
    inp, cand = toy()
    whole = build().fit(inp, cand, val=toy())
    assert whole.train_seconds == 10.0 * total and whole.train_pieces == 1
    path = tmp_path / "seed0-checkpoint.pt"
    cfg = dataclasses.asdict(whole.cfg)
    with pytest.raises(Interrupt):
        build(stop_after).fit(inp, cand, val=toy(), checkpoint=RerankCheckpoint(path, cfg))
    stopped = {"epoch": stop_after, "epochs": total, "seconds": 10.0 * stop_after, "pieces": 1, "scored": ""}
    assert progress(path) == stopped
    clock[0] += 1000.0  # time between the calls is no one's training time
    second = build().fit(inp, cand, val=toy(), checkpoint=RerankCheckpoint(path, cfg))
    assert second.history == whole.history and (second.train_seconds, second.train_pieces) == (10.0 * total, 2)
    assert all(torch.equal(v, states(whole)[k]) for k, v in states(second).items())
    assert np.array_equal(second.score(inp, cand), whole.score(inp, cand))
    again = build(0).fit(inp, cand, checkpoint=RerankCheckpoint(path, cfg))  # a finished training: restored only
    assert again.history == whole.history and again.train_seconds == 10.0 * total
    assert np.array_equal(again.score(inp, cand), whole.score(inp, cand))
    with pytest.raises(ValueError, match=rf"{path.name}: a checkpoint of other LM re-ranker settings \(seed\)"):
        RerankCheckpoint(path, cfg | {"seed": 1})


def test_interrupted_scoring_goes_on_after_the_queries_it_kept(llama):
    """``keep`` gets the scores so far (here after every batch); given them as ``done``, a later call scores only
    the queries after them, in the same batches, and returns what one uninterrupted call does."""
    inp, cand = toy()
    rr = reranker(llama, True, scoring="likelihood", image_tokens=2)
    whole = rr.score(inp, cand, batch_size=1)
    rr.keep_seconds, kept = 0.0, []

    def keep(scores):
        kept.append(scores)
        if len(kept) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        rr.score(inp, cand, batch_size=1, keep=keep)
    assert [len(k) for k in kept] == [1, 2] and np.array_equal(kept[-1], whole[:2])
    seen = []
    real = rr._scores
    rr._scores = lambda texts, *a: seen.extend(texts) or real(texts, *a)
    assert np.array_equal(rr.score(inp, cand, batch_size=1, done=kept[-1]), whole)
    assert seen == TEXTS[2:]
