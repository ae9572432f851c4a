"""Decoding speed: our batched trie search against transformers' ``prefix_allowed_tokens_fn`` path.

:func:`hf_reference_retrieve` is the baseline: ``T5ForConditionalGeneration.generate`` with beam
search and a ``prefix_allowed_tokens_fn`` that walks the trie in Python, called once per beam per
step (the way the authors' code and most generative-retrieval code decode). ``tests/test_trie.py``
checks that it ranks exactly like :meth:`VokenGenerator.retrieve`; :func:`decoding_benchmark`
times both on the same model, gallery and queries in one run.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .trie import VokenTrie


@torch.no_grad()
def hf_reference_retrieve(gen, texts: list[str], trie: VokenTrie, num_beams: int, batch_size: int = 16) -> np.ndarray:
    """Ranked item indices (n, num_beams) from transformers' generate() with prefix_allowed_tokens_fn."""
    off, eos, depth = gen.voken_offset, gen.eos_id, trie.depth

    def allowed(batch_id, sent):
        prefix = [t - off for t in sent.tolist()[1:]]
        if len(prefix) >= depth:
            return [eos]
        return [t + off for t in trie.next_tokens(prefix)]

    gen.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        enc = gen.tokenizer(
            texts[s : s + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=gen.cfg.max_text_len,
        )
        seqs = gen.model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            num_beams=num_beams,
            num_return_sequences=num_beams,
            max_new_tokens=depth + 1,
            prefix_allowed_tokens_fn=allowed,
            length_penalty=0.0,
            early_stopping=True,
            do_sample=False,
        )
        codes = seqs.reshape(-1, num_beams, seqs.shape[-1])[:, :, 1 : depth + 1] - off
        out += [[trie.lookup(c) for c in q.tolist()] for q in codes]
    return np.asarray(out)


def decoding_benchmark(
    gen,
    texts: list[str],
    trie: VokenTrie,
    num_beams: int = 10,
    batch_sizes: tuple[int, ...] = (1, 16),
    repeats: int = 1,
) -> pd.DataFrame:
    """Queries per second of both decoders at each batch size, on the same model/gallery/queries,
    plus whether their rankings agree. One row per (method, batch size)."""
    rows = []
    for bs in batch_sizes:
        timings = {}
        for method in ("batched trie (avg_lib)", "prefix_allowed_tokens_fn (transformers)"):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                if method.startswith("batched"):
                    items = gen.retrieve(texts, trie, num_beams=num_beams, batch_size=bs).items.numpy()
                else:
                    items = hf_reference_retrieve(gen, texts, trie, num_beams, batch_size=bs)
                best = min(best, time.perf_counter() - t0)
            timings[method] = (best, items)
        (_t_ours, ours), (t_ref, ref) = timings.values()
        agree = float((ours == ref).all(axis=1).mean())
        for method, (t, _) in timings.items():
            rows.append(
                {
                    "method": method,
                    "batch_size": bs,
                    "queries": len(texts),
                    "gallery_size": trie.size,
                    "num_beams": num_beams,
                    "seconds": t,
                    "queries_per_s": len(texts) / t,
                    "speedup_vs_transformers": t_ref / t,
                    "identical_rankings": agree,
                }
            )
    return pd.DataFrame(rows)


def stand_in_t5(
    codebook_size: int,
    depth: int,
    bench_cfg,
    t5_path: str | None = None,
    seed: int = 0,
    codebooks: np.ndarray | None = None,
):
    """The model notebook 05's decoding benchmark times: a T5 generator (``t5_path``, or a small random T5 with
    ``bench_cfg.layers`` layers) at ``bench_cfg.temperature``; speed does not depend on its weights."""
    from . import generator

    cfg = generator.GeneratorConfig(
        backend="t5", t5_path=t5_path, layers=bench_cfg.layers, temperature=bench_cfg.temperature, seed=seed
    )
    return generator.build_generator(codebook_size, depth, cfg, codebooks)


def random_unique_codes(n: int, depth: int, vocab: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct random identifiers of ``depth`` tokens over ``vocab`` values (a synthetic gallery
    for timing: decoding cost does not depend on what the identifiers mean)."""
    if vocab**depth < n:
        raise ValueError(f"{vocab}**{depth} identifiers cannot hold {n} distinct items")
    rng = np.random.default_rng(seed)
    codes = np.empty((0, depth), dtype=np.int64)
    while len(codes) < n:
        more = rng.integers(0, vocab, size=(2 * (n - len(codes)), depth))
        codes = np.unique(np.concatenate([codes, more]), axis=0)
    return codes[rng.permutation(len(codes))[:n]]


def _timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():  # kernels run asynchronously: wait for them before stopping the clock
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def _exact_search_timings(emb: torch.Tensor, eb: torch.Tensor, gallery: torch.Tensor) -> tuple[float, float]:
    """Seconds for exact top-10 search of ``gallery`` at batch 1 and at batch ``len(eb)``."""
    return (
        _timed(lambda: (emb[:1] @ gallery.T).topk(10, dim=1), 5),
        _timed(lambda: (eb @ gallery.T).topk(10, dim=1), 3),
    )


def gallery_scaling(
    gen,
    query_texts: list[str],
    query_emb: np.ndarray,
    cross_encoder,
    sizes,
    depth: int,
    vocab: int,
    num_beams: int = 10,
    batch_size: int = 64,
    one_tower_queries: int = 4,
    one_tower_max: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    rerank_k: int | None = None,
) -> pd.DataFrame:
    """Per-query latency at batch 1 and throughput at ``batch_size`` for each retrieval style, on synthetic
    galleries of each size in ``sizes``, in one run on one machine:

    * generative: ``gen.retrieve`` (trie-constrained beam search) over random identifiers;
    * generative + embedding re-rank (``rerank_k``): ``rerank_k`` beams, then the joint-space cosine of the
      query with those candidates only (the main table's AVG + re-rank rows);
    * two-tower: exact inner-product top-10 over random unit vectors of the joint space's width;
    * one-tower: ``cross_encoder`` scores every (query, image) pair (projected random images);
      timed on ``one_tower_queries`` queries, and skipped above ``one_tower_max`` images.
    Query texts/embeddings are real; only the galleries are synthetic. Trie construction and gallery
    encoding are offline work and not timed."""
    rng = np.random.default_rng(seed)
    q1 = query_texts[:1]
    qb = (query_texts * (batch_size // max(len(query_texts), 1) + 1))[:batch_size]
    emb = torch.as_tensor(np.asarray(query_emb), dtype=torch.float32, device=device)
    eb = emb.repeat(batch_size // len(emb) + 1, 1)[:batch_size]
    rows = []

    def add(method, n, t1, t_batch, per_batch=batch_size):
        rows.append(
            {
                "method": method,
                "gallery_size": n,
                "latency_ms_batch1": 1000 * t1,
                "queries_per_s_batched": per_batch / t_batch,
            }
        )

    for n in sizes:
        trie = VokenTrie(random_unique_codes(n, depth, vocab, seed)).to(device)
        gen.retrieve(q1, trie, num_beams=num_beams, batch_size=1)  # warm-up
        t1 = _timed(lambda: gen.retrieve(q1, trie, num_beams=num_beams, batch_size=1), 3)
        add("generative (trie beam search)", n, t1, _timed(lambda: gen.retrieve(qb, trie, num_beams, batch_size), 2))
        gallery = torch.nn.functional.normalize(
            torch.as_tensor(rng.normal(size=(n, emb.shape[1])), dtype=torch.float32, device=device), dim=1
        )
        if rerank_k:

            def reranked(texts, q, trie=trie, gallery=gallery):
                items = gen.retrieve(texts, trie, num_beams=rerank_k, batch_size=len(texts)).items
                cos = torch.einsum("nkd,nd->nk", gallery[items.clamp(min=0)], q).masked_fill(items < 0, -2.0)
                return items.gather(1, cos.argsort(dim=1, descending=True))

            t1, tb = _timed(lambda: reranked(q1, emb[:1]), 3), _timed(lambda: reranked(qb, eb), 2)
            add(f"generative + embedding re-rank (top {rerank_k})", n, t1, tb)
        add("two-tower (exact search)", n, *_exact_search_timings(emb, eb, gallery))
        del gallery
        if cross_encoder is not None and (one_tower_max is None or n <= one_tower_max):
            cross_encoder.eval()
            width = cross_encoder.img.out_features
            imgs = torch.nn.functional.normalize(
                torch.as_tensor(rng.normal(size=(n, width)), dtype=torch.float32, device=device), dim=1
            )
            t_in = rng.normal(size=(one_tower_queries, cross_encoder.txt.in_features))
            _, t = cross_encoder.project(None, torch.as_tensor(t_in, dtype=torch.float32, device=device))

            def score_all(rows_t):
                for r in rows_t:
                    torch.cat(
                        [cross_encoder.pair_scores(r[None], imgs[s : s + 8192]) for s in range(0, n, 8192)], dim=1
                    ).topk(10, dim=1)

            add(
                "one-tower (score every pair)",
                n,
                _timed(lambda: score_all(t[:1]), 1),
                _timed(lambda: score_all(t), 1),
                len(t),
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- dropout


def _swap_dropout(model: torch.nn.Module, make) -> torch.nn.Module:
    """Replace every :class:`avg_lib.dropout.Dropout` of ``model`` by ``make(p)`` (in place)."""
    from .dropout import Dropout

    for name, child in model.named_children():
        if isinstance(child, Dropout):
            setattr(model, name, make(child.p))
        else:
            _swap_dropout(child, make)
    return model


def dropout_benchmark(repeats: int = 20, seed: int = 0) -> pd.DataFrame:
    """Milliseconds of ``torch.nn.functional.dropout`` against :func:`avg_lib.dropout.dropout`, alone
    (activation shapes of the tokenizer and of the voken decoder's discriminative batches) and inside
    training steps: an RQ-VAE step (batch 256, the default tokenizer) and a forward + backward of a
    2-block, 256-wide voken decoder on 640 rows (64 captions x 10 sequences). Same seed, same inputs,
    best of ``repeats``; only the dropout differs."""
    from . import generator, tokenizer
    from .dropout import dropout

    torch.manual_seed(seed)
    rows = []

    def record(what, shape, fn_torch, fn_ours):
        t_torch, t_ours = _timed(fn_torch, repeats), _timed(fn_ours, repeats)
        rows.append(
            {
                "what": what,
                "shape": shape,
                "torch_ms": 1000 * t_torch,
                "avg_lib_ms": 1000 * t_ours,
                "speedup": t_torch / t_ours,
            }
        )

    for shape, p in (((256, 512), 0.1), ((1400, 256), 0.3), ((1400, 1024), 0.3)):
        x = torch.randn(shape)
        record(f"dropout p={p}", "x".join(map(str, shape)), lambda: F.dropout(x, p, True), lambda: dropout(x, p, True))

    cfg = tokenizer.TokenizerConfig()
    x, t = F.normalize(torch.randn(256, 256), dim=1), F.normalize(torch.randn(256, 256), dim=1)

    def rq_step(model, opt):
        def run():
            loss = model.losses(x, t)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    models = {}
    for kind in ("torch", "ours"):
        torch.manual_seed(seed)
        m = tokenizer.RQVAE(256, cfg).train()
        if kind == "torch":
            _swap_dropout(m, torch.nn.Dropout)
        models[kind] = rq_step(m, torch.optim.AdamW(m.parameters(), lr=cfg.lr))
    record("RQ-VAE training step", "256 rows", models["torch"], models["ours"])

    texts, beams, depth, d = 64, 10, 3, 256
    memory, mask = torch.randn(texts, 16, 384), torch.ones(texts, 16, dtype=torch.bool)
    prefix = torch.randn(texts * beams, depth + 1, d)
    for kind in ("torch", "ours"):
        torch.manual_seed(seed)
        blocks = torch.nn.ModuleList(generator.DecoderBlock(d, 4, 0.3, 384) for _ in range(2)).train()
        if kind == "torch":
            _swap_dropout(blocks, torch.nn.Dropout)

        def step(blocks=blocks):
            h = prefix
            for blk in blocks:
                h = blk(h, blk.memory_kv(memory, mask), mask, beams)
            h.square().mean().backward()

        models[kind] = step
    record("voken decoder forward + backward", f"{texts * beams}x{depth + 1}x{d}", models["torch"], models["ours"])
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m avg_lib.benchmark",
        description="Micro-benchmarks that back speed claims in the code (the decoding "
        "and gallery-size benchmarks run in notebooks 05 and 08).",
    )
    ap.add_argument(
        "what",
        choices=["dropout"],
        help="dropout: torch's dropout against avg_lib.dropout, alone and inside training steps",
    )
    ap.add_argument("--repeats", type=int, default=20, help="best of this many timings (default 20)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(dropout_benchmark(args.repeats).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
