import dataclasses

import numpy as np
import pytest
import torch
from helpers import save_tiny_llama, save_tiny_t5
from torch import nn

from avg_lib.models import generator
from avg_lib.models.generator import GeneratorConfig, build_generator, listwise_loss, project_codebook
from avg_lib.retrieval.trie import VokenTrie

K, D = 8, 3
CODES = np.array([[1, 2, 0], [1, 2, 3], [1, 0, 0], [4, 4, 4], [0, 2, 1], [7, 6, 5]])
TEXTS = ["a red heart", "a green heart", "a cat", "a dog", "rain cloud", "sun"]
SMALL = GeneratorConfig(backend="minilm", layers=1, heads=4, epochs=2, batch_size=4, eval_every=1, num_beams=4)


def test_listwise_loss_matches_hand_computation():
    pos = torch.tensor([-1.0, -2.0])
    neg = torch.tensor([[-2.0, -3.0], [-1.0, -4.0]])
    # softmax once over [pos, negs], cross-entropy with the positive as target
    want = np.mean(
        [
            1.0 + np.log(np.exp(-1.0) + np.exp(-2.0) + np.exp(-3.0)),
            2.0 + np.log(np.exp(-2.0) + np.exp(-1.0) + np.exp(-4.0)),
        ]
    )
    assert listwise_loss(pos, neg).item() == pytest.approx(want, abs=1e-6)


def test_project_codebook_shapes_and_scale():
    c = np.random.default_rng(0).normal(size=(16, 8))
    wide, narrow = project_codebook(c, 32, 0.02), project_codebook(c, 4, 0.02)
    assert wide.shape == (16, 32) and narrow.shape == (16, 4)
    assert wide.std().item() == pytest.approx(0.02, rel=1e-3)
    # narrower codebook -> isometric embedding: pairwise distances keep their ratios
    d_in = torch.cdist(
        torch.tensor(c - c.mean(0), dtype=torch.float32), torch.tensor(c - c.mean(0), dtype=torch.float32)
    )
    d_out = torch.cdist(wide, wide)
    ratio = d_out[d_in > 0] / d_in[d_in > 0]
    assert ratio.std() / ratio.mean() < 1e-4


@pytest.mark.parametrize("prior", [False, True])
def test_minilm_grouped_cross_attention_equals_repeated_texts(prior):
    head = nn.Linear(384, 16) if prior else None
    gen = build_generator(K, D, dataclasses.replace(SMALL, joint_prior=prior), np.random.randn(1, K, 16), head).eval()
    codes = torch.as_tensor(CODES[:4])
    texts = TEXTS[:2]
    grouped = gen.sequence_logprob(gen.repeat(gen.encode(texts), 2), codes)
    repeated = gen.sequence_logprob(gen.encode([t for t in texts for _ in range(2)]), codes)
    assert torch.allclose(grouped, repeated, atol=1e-5)


def test_codebook_initialises_voken_embeddings_and_can_be_switched_off():
    book = np.random.default_rng(0).normal(size=(1, K, 384))
    on = build_generator(K, D, SMALL, book)
    off = build_generator(K, D, dataclasses.replace(SMALL, init_from_codebook=False), book)
    expect = project_codebook(book.mean(0), SMALL.decoder_width, 0.02, SMALL.seed)
    assert torch.allclose(on.embed.weight[:K], expect)
    assert not torch.allclose(off.embed.weight[:K], expect)


def test_training_returned_ids_are_in_the_gallery_and_save_load_round_trips(tmp_path):
    gen = build_generator(K, D, SMALL, np.random.randn(1, K, 16))
    train = (TEXTS * 3, np.concatenate([CODES] * 3))
    val = (TEXTS, np.arange(len(CODES)), CODES)
    gen, hist = generator.train_generator(gen, train, val, progress=False)
    assert len(hist) == 2 and all("val_R@1" in h for h in hist)
    trie = VokenTrie(CODES)
    res = gen.retrieve(TEXTS, trie, num_beams=4)
    assert ((res.items >= 0) & (res.items < len(CODES))).all()
    for q in range(len(TEXTS)):
        for b in range(4):
            assert res.codes[q, b].tolist() == CODES[res.items[q, b]].tolist()
    generator.save(gen, tmp_path)
    again = generator.load(tmp_path)
    assert torch.equal(again.retrieve(TEXTS, trie, num_beams=4).items, res.items)


def test_discriminative_stage_runs_and_records_listwise_loss():
    gen = build_generator(
        K, D, dataclasses.replace(SMALL, epochs=1, disc_epochs=1, disc_negatives=2), np.random.randn(1, K, 16)
    )
    train = (TEXTS * 2, np.concatenate([CODES] * 2))
    gen, hist = generator.train_generator(
        gen, train, (TEXTS, np.arange(6), CODES), train_codes_all=CODES, progress=False
    )
    assert [h["stage"] for h in hist] == ["generative", "discriminative"]
    assert hist[0]["train_listwise_loss"] == 0 and hist[1]["train_listwise_loss"] > 0


def test_mined_negatives_never_contain_the_positive():
    gen = build_generator(K, D, SMALL, np.random.randn(1, K, 16)).eval()
    negs = generator.mine_negatives(gen, TEXTS, np.arange(6), VokenTrie(CODES), CODES, n=3, num_beams=5)
    assert negs.shape == (6, 3, D)
    for i, row in enumerate(negs.tolist()):
        assert CODES[i].tolist() not in row


def test_t5_backend_loads_a_local_directory_and_round_trips(tmp_path):
    path = save_tiny_t5(tmp_path / "t5")
    cfg = GeneratorConfig(backend="t5", t5_path=str(path), epochs=1, batch_size=4, num_beams=3)
    gen = build_generator(K, D, cfg, np.random.randn(1, K, 16))
    assert gen.voken_offset == gen.model.config.vocab_size - K
    emb = gen.model.get_input_embeddings().weight
    assert emb.shape[0] == gen.voken_offset + K
    gen, _ = generator.train_generator(gen, (TEXTS, CODES), (TEXTS, np.arange(6), CODES), progress=False)
    trie = VokenTrie(CODES)
    before = gen.retrieve(TEXTS, trie, num_beams=3).items
    generator.save(gen, tmp_path / "saved")
    assert torch.equal(generator.load(tmp_path / "saved").retrieve(TEXTS, trie, num_beams=3).items, before)


def test_bad_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        GeneratorConfig(backend="gpt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_generator(K, D, GeneratorConfig(backend="t5", t5_path="/nonexistent"))


@pytest.mark.parametrize("prior", [False, True])
def test_minilm_cached_decoding_equals_full_recomputation(prior):
    head = nn.Linear(384, 16) if prior else None
    gen = build_generator(
        K, D, dataclasses.replace(SMALL, layers=2, joint_prior=prior), np.random.randn(1, K, 16), head
    ).eval()
    with torch.no_grad():  # give the decoder non-trivial weights so positions and beams differ
        for p in gen.blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx = gen.repeat(gen.encode(TEXTS[:2]), 3)
    step = gen.decode_step(ctx)
    prefix = torch.zeros(6, 0, dtype=torch.long)
    src = None
    for t in range(D + 1):
        full = gen.log_probs(ctx, prefix)[:, -1]
        assert torch.allclose(step(prefix, src), full, atol=1e-5), t
        # reorder rows inside each text's group, as beam search does, then extend
        src = torch.tensor([1, 0, 2, 5, 5, 3])
        prefix = torch.cat([prefix[src], torch.tensor([[1], [2], [0], [4], [3], [1]])], dim=1)[:, :D]
        if t == D - 1:
            break


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("llama")))


@pytest.mark.parametrize("backend", ["minilm", "t5", "decoder"])
def test_exhaustive_beam_search_ranks_like_scoring_every_identifier(backend, tiny_llama):
    """With as many beams as gallery items, constrained beam search (its first step on one row per
    text, then cached steps; the decoder backend's prompt once) must rank the whole gallery by the
    sequence log-probability of each item that training optimises."""
    cfg = dataclasses.replace(SMALL, backend=backend, layers=2, d_model=32, lm_path=tiny_llama)
    gen = build_generator(K, D, cfg, np.random.randn(1, K, 16)).eval()
    with torch.no_grad():  # non-trivial weights so that items get distinct scores
        for p in gen.parameters():
            p.add_(0.05 * torch.randn_like(p))
    texts = TEXTS[:3]
    res = gen.retrieve(texts, VokenTrie(CODES), num_beams=len(CODES), batch_size=2)
    with torch.no_grad():
        scores = torch.stack(
            [gen.sequence_logprob(gen.encode([t] * len(CODES)), torch.as_tensor(CODES)) for t in texts]
        )
    assert res.items.tolist() == torch.argsort(scores, dim=1, descending=True).tolist()
    assert torch.allclose(res.scores, scores.sort(dim=1, descending=True).values, atol=1e-4)


def test_generative_state_equals_a_run_without_discriminative_stage():
    book = np.random.randn(1, K, 16)
    train = (TEXTS * 2, np.concatenate([CODES] * 2))
    val = (TEXTS, np.arange(6), CODES)
    both = dataclasses.replace(SMALL, epochs=2, disc_epochs=1, disc_negatives=2)
    gen, _ = generator.train_generator(
        build_generator(K, D, both, book), train, val, train_codes_all=CODES, progress=False
    )
    alone, _ = generator.train_generator(
        build_generator(K, D, dataclasses.replace(both, disc_epochs=0), book),
        train,
        val,
        train_codes_all=CODES,
        progress=False,
    )
    want = alone.state_dict()
    assert all(torch.equal(gen.generative_state[k], want[k]) for k in want)


def test_padding_does_not_change_scores():
    gen = build_generator(K, D, SMALL, np.random.randn(1, K, 16)).eval()
    long = "a very long caption with many many words to force a lot of padding on the short one"
    codes = torch.as_tensor(CODES[:2])
    together = gen.sequence_logprob(gen.encode(["sun", long]), codes)
    alone = torch.cat(
        [gen.sequence_logprob(gen.encode(["sun"]), codes[:1]), gen.sequence_logprob(gen.encode([long]), codes[1:])]
    )
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("width, expect", [(None, 384), (128, 128)])
def test_minilm_decoder_width_is_independent_of_the_encoder(width, expect):
    gen = build_generator(K, D, dataclasses.replace(SMALL, decoder_width=width), np.random.randn(1, K, 16)).eval()
    assert gen.embed.weight.shape[1] == expect and gen.blocks[0].kv.in_features == 384
    codes = torch.as_tensor(CODES[:2])
    assert gen.sequence_logprob(gen.encode(TEXTS[:2]), codes).shape == (2,)


@pytest.mark.parametrize("backend", ["minilm", "t5"])
def test_bf16_training_keeps_float32_weights_and_tracks_float32_losses(backend, tmp_path):
    """bfloat16 autocast covers the training forward passes only: parameters stay float32, decoding returns
    float32 scores, and the first epoch's losses (same seed, same batches) agree with float32 to bf16 precision."""
    extra = {"t5_path": str(save_tiny_t5(tmp_path / "t5"))} if backend == "t5" else {}
    cfg = dataclasses.replace(SMALL, backend=backend, epochs=1, disc_epochs=1, disc_negatives=2, **extra)
    train, val, book = (TEXTS * 2, np.concatenate([CODES] * 2)), (TEXTS, np.arange(6), CODES), np.random.randn(1, K, 16)
    hist = {}
    for precision in ("fp32", "bf16"):
        c = dataclasses.replace(cfg, precision=precision)
        gen, hist[precision] = generator.train_generator(
            build_generator(K, D, c, book), train, val, train_codes_all=CODES, progress=False
        )
        assert all(p.dtype == torch.float32 for p in gen.parameters())
        assert gen.retrieve(TEXTS, VokenTrie(CODES), num_beams=3).scores.dtype == torch.float32
    for a, b in zip(hist["fp32"], hist["bf16"]):
        assert b["train_gen_loss"] == pytest.approx(a["train_gen_loss"], rel=0.05)
    assert hist["bf16"][1]["train_listwise_loss"] > 0


def test_bad_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        GeneratorConfig(precision="fp16")


def test_patience_stops_the_generative_stage_and_the_discriminative_stage_follows():
    """A model that cannot improve (learning rate 0) stops after ``patience`` validations without a better
    R@1; the discriminative stage then runs, numbered right after the last epoch run."""
    cfg = dataclasses.replace(SMALL, epochs=6, patience=2, lr=0.0, disc_epochs=1, disc_lr=0.0)
    gen = build_generator(K, D, cfg, np.random.randn(1, K, 16))
    _, history = generator.train_generator(
        gen, (TEXTS, CODES), (TEXTS, np.arange(6), CODES), train_codes_all=CODES, progress=False
    )
    assert [h["stage"] for h in history] == ["generative"] * 3 + ["discriminative"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_patience_keys_the_cache_only_when_set():
    assert "patience" not in generator.cache_fields(SMALL)
    assert generator.cache_fields(dataclasses.replace(SMALL, patience=3))["patience"] == 3


@pytest.mark.parametrize(("backend", "done"), [("minilm", 1), ("minilm", 4), ("decoder", 2)])
def test_an_interrupted_training_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(
    backend, done, tiny_llama, tmp_path, monkeypatch
):
    """Stopped after ``done`` epochs (in the generative stage, or in the discriminative one), a second call with
    the same checkpoint continues there: same weights, generative state and history, bit for bit, as one
    uninterrupted call (dropout draws included); the checkpoint is gone afterwards. Other settings are refused.
    The MiniLM generators share one text-state cache: states encoded in other batches differ by float rounding."""
    settings = {"decoder": {"lm_path": tiny_llama, "lm_train_layers": 1, "lm_cache_frozen": True}}.get(backend, {})
    cfg = dataclasses.replace(SMALL, backend=backend, epochs=3, disc_epochs=2, disc_negatives=2, **settings)
    book = np.random.default_rng(0).normal(size=(1, K, 16))
    train, val = (TEXTS * 2, np.concatenate([CODES] * 2)), (TEXTS, np.arange(6), CODES)
    states = generator.TextStateCache()

    def run(c=cfg, checkpoint=None):
        gen = build_generator(K, D, c, book, text_states=states)
        return generator.train_generator(gen, train, val, CODES, progress=False, checkpoint=checkpoint)

    ckpt = tmp_path / "ckpt.pt"
    want, want_history = run()
    evaluate, calls = generator.training.evaluate, []

    def stop_after(*args, **kw):
        calls.append(1)
        if len(calls) > done:
            raise KeyboardInterrupt
        return evaluate(*args, **kw)

    monkeypatch.setattr(generator.training, "evaluate", stop_after)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=ckpt)
    monkeypatch.setattr(generator.training, "evaluate", evaluate)
    where = generator.training.checkpoint_progress(ckpt)  # how far it got, read without loading it
    assert (where["epoch"], where["epochs"], where["pieces"]) == (done, 5, 1) and where["seconds"] > 0
    saved = torch.load(ckpt, weights_only=False)["model"]  # the trained parameters only: the frozen ones stay out
    trained = {n for n, p in want.named_parameters() if p.requires_grad}
    assert trained <= set(saved) and len(trained) < len(dict(want.named_parameters()))
    assert not {n for n, p in want.named_parameters() if not p.requires_grad} & set(saved)
    with pytest.raises(ValueError, match=f"{ckpt.name}: a checkpoint of other generator settings \\(lr\\)"):
        run(dataclasses.replace(cfg, lr=0.5), ckpt)
    once = []  # the frozen layers run once per call that has generative epochs left
    monkeypatch.setattr(
        type(want), "frozen_positives", lambda g, *a, f=type(want).frozen_positives: once.append(1) or f(g, *a)
    )
    got, history = run(checkpoint=ckpt)
    assert len(once) == (done < cfg.epochs)
    untimed = [[{k: v for k, v in row.items() if k != "val_latency_ms"} for row in h] for h in (history, want_history)]
    assert untimed[0] == untimed[1] and not ckpt.exists() and got.train_seconds > 0
    assert (want.train_pieces, got.train_pieces) == (1, 2)
    for (name, a), b in zip(want.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(torch.equal(want.generative_state[k], got.generative_state[k]) for k in want.generative_state)


def test_text_states_kept_on_disk_are_what_the_next_process_reads_instead_of_encoding_again(tmp_path, monkeypatch):
    """A run's state cache writes each batch it encodes as a shard under its directory; a new cache (the next
    notebook) reads them and encodes nothing, and the generator sees the same tensors, bit for bit."""
    book = np.random.default_rng(0).normal(size=(1, K, 16))
    first = build_generator(K, D, SMALL, book, text_states=generator.TextStateCache(directory=tmp_path))
    memory, mask = first.encoder_states(TEXTS[:4])
    first.encoder_states(TEXTS)  # a second batch: only the two new texts are encoded (and kept)
    assert len(list(tmp_path.rglob("*.pt"))) == 2 and not list(tmp_path.rglob("*.partial"))
    second = build_generator(K, D, SMALL, book, text_states=generator.TextStateCache(directory=tmp_path))
    monkeypatch.setattr(second.encoder, "forward", lambda *a, **k: pytest.fail("encoded again"))
    again, again_mask = second.encoder_states(TEXTS[:4])
    assert torch.equal(again, memory) and torch.equal(again_mask, mask)
    assert second.text_states.size == sum(len(second.tokenizer(t)["input_ids"]) for t in TEXTS) * 384
