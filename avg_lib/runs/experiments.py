"""One row of a results table per call: the measurements behind notebooks 05-08.

Every function trains through the cached stages of a :class:`avg_lib.runs.pipeline.Run` (so a model
trained by an earlier notebook is loaded, not retrained), scores the **test** split once, and returns
a flat dict ready for a DataFrame row. Model selection already happened on validation inside training.
"""

from __future__ import annotations

import time

from avg_lib.evaluation import stats
from avg_lib.evaluation.tables import METRICS
from avg_lib.models import baselines, generator, identifiers, rerank, two_tower
from avg_lib.retrieval.metrics import KS, evaluate_scores, recall_at_k, top_k
from avg_lib.retrieval.trie import VokenTrie
from avg_lib.runs.studies import ABLATIONS

__all__ = [
    "METRICS",
    "avg_result",
    "baseline_names",
    "identifier_baselines",
    "one_tower_result",
    "rerank_results",
    "sweep_changes",
    "sweep_result",
    "two_tower_result",
]


def avg_result(
    run,
    pseudo: int = 0,
    *,
    vt=None,
    stage: str = "final",
    ids=None,
    codebooks=None,
    num_beams: int | None = None,
    split: str = "test",
    unresolved: bool = False,
    return_ranked: bool = False,
    intervals: bool = False,
    **changes,
):
    """Train-or-load a generator of ``run`` (a :class:`avg_lib.runs.pipeline.Run`; ``pseudo``, ``vt``, ``stage``,
    ``ids``, ``codebooks`` and generator-setting ``changes`` as in :meth:`~avg_lib.runs.pipeline.Run.generator`)
    and score ``split`` by constrained decoding with ``num_beams`` (default: the generator's).

    ``unresolved``: also report ``unresolved_R@k``, what a string-match evaluation on the raw, collided
    vokens would say. ``intervals``: also ``R@k_low``/``R@k_high``, the 95% bootstrap interval over the split's
    images (:func:`avg_lib.evaluation.stats.recall_interval`; one model, so no seed spread in it)."""
    tg = run.generator(pseudo, vt=vt, stage=stage, ids=ids, codebooks=codebooks, **changes)
    ident = ids if ids is not None else (vt or run.vt).ids
    sp = run.split(split, ident)
    trie = VokenTrie(sp.gallery_codes)
    beams = num_beams or tg.model.cfg.num_beams
    res, latency = generator.timed_retrieve(
        tg.model, sp.texts, trie, num_beams=beams, batch_size=run.cfg.retrieval.batch_size
    )
    items = res.items.cpu().numpy()
    best = tg.selected
    row = {
        **recall_at_k(items, sp.targets),
        "latency_ms": latency,
        "val_R@1": float(best["val_R@1"]),
        "selected_epoch": int(best["epoch"]),
        "identifier_scheme": ident.scheme,
        "identifier_depth": trie.depth,
        "vocabulary": ident.codebook_size,
        "num_beams": beams,
        "gallery_size": trie.size,
        "queries": len(sp.texts),
        "cache": tg.directory.name,
    }
    if intervals:
        row.update(stats.interval_columns(stats.hits(items, sp.targets), sp.targets))
    if unresolved:
        u = baselines.unresolved_collision_recall(items, sp.targets, ident.raw[sp.image_index])
        row.update({f"unresolved_{k}": v for k, v in u.items()})
    return (row, items) if return_ranked else row


UNALIGNED = "RQ ids without semantic alignment"  # the identifier baseline that is also an ablation


def baseline_names(mt) -> list[str]:
    """The names of :func:`identifier_baselines`' schemes for the ``main_table`` settings ``mt``."""
    return [
        "atomic ids (one token per image)",
        f"random numeric ids (base {mt.random_id_base})",
        f"hierarchical k-means ids (branching {mt.hkmeans_branching})",
        UNALIGNED,
    ]


def identifier_baselines(run) -> dict:
    """The generative baselines for ``run`` (its seed), each as the changes :func:`avg_result` takes:
    atomic, random numeric (``main_table.random_id_base``) and hierarchical k-means ids over the joint-space
    images (``main_table.hkmeans_branching``, the tokenizer's depth), and the tokenizer trained without
    semantic alignment (the same model as notebook 07's "without semantic alignment" ablation: one cache entry)."""
    mt, js = run.cfg.main_table, run.js
    hk = baselines.hkmeans_ids(
        js.ds.ids, js.image, branching=mt.hkmeans_branching, levels=run.cfg.tokenizer.levels, seed=run.cfg.seed
    )
    changes = [
        {"ids": baselines.atomic_ids(js.ds.ids)},
        {"ids": baselines.random_ids(js.ds.ids, base=mt.random_id_base, seed=run.cfg.seed)},
        {"ids": hk},
        {"vt": run.tokenizer(align_weight=0.0)},
    ]
    return dict(zip(baseline_names(mt), changes))


def ablation_variants(run) -> dict:
    """The ablations of AVG the profile lists (``ablations.variants``) for ``run`` (its seed), each as the changes
    :func:`avg_result` takes: one component off at a time, everything else identical (notebook 07). A variant's
    tokenizer is trained (or loaded) only when the profile lists it."""
    changes = {
        "semantic_alignment": lambda: {"vt": run.tokenizer(align_weight=0.0)},
        "discriminative": lambda: {"stage": "generative"},
        "codebook_init": lambda: {"init_from_codebook": False},
        "kmeans_init": lambda: {"vt": run.tokenizer(kmeans_init=False)},
    }
    return {ABLATIONS[key]: make() for key, make in changes.items() if key in run.cfg.ablations.variants}


def sweep_changes(run, codebook_size: int, levels: int) -> dict:
    """The generator changes of one point of the codebook-size / voken-length analyses (:func:`sweep_result`):
    a tokenizer with ``codebook_size`` and ``levels``, generative stage only; at the profile's own (K, L),
    the generative-stage checkpoint of AVG itself."""
    tok = run.cfg.tokenizer
    if (codebook_size, levels) == (tok.codebook_size, tok.levels):
        return {"stage": "generative"}
    return {"vt": run.tokenizer(codebook_size=codebook_size, levels=levels), "disc_epochs": 0}


def sweep_result(run, codebook_size: int, levels: int) -> dict:
    """One point of the codebook-size / voken-length analyses: a tokenizer with ``codebook_size`` and ``levels``
    and a generator trained on its identifiers, **generative stage only** (the CPU budget). The profile's own
    (K, L) point is the generative-stage checkpoint of AVG itself, so every point had the same training. One seed:
    recall comes with its bootstrap interval over test images."""
    changes = sweep_changes(run, codebook_size, levels)
    row = avg_result(run, 0, intervals=True, **changes)
    if "vt" in changes:
        row["collision_rate_raw"] = float(identifiers.collision_rate(changes["vt"].ids.raw))
    return row


def two_tower_result(js, split: str = "test", return_ranked: bool = False):
    """Exact dense search of the joint space over ``split``'s images (``return_ranked``: also the top 10)."""
    _, g_img, q_txt, owner = js.feats.split(js.ds, split)
    t0 = time.perf_counter()
    g, q = two_tower.embed(js.model, g_img, q_txt)
    ranked = top_k(q @ g.T, max(KS))
    latency = 1000.0 * (time.perf_counter() - t0) / len(q_txt)
    m = recall_at_k(ranked, owner)
    best = js.history.loc[js.history["val_R@1"].idxmax()]
    row = {
        **m,
        "latency_ms": latency,
        "val_R@1": float(best["val_R@1"]),
        "selected_epoch": int(best["epoch"]),
        "gallery_size": len(g_img),
        "queries": len(q_txt),
    }
    return (row, ranked) if return_ranked else row


def one_tower_result(js, cfg: baselines.OneTowerConfig, split: str = "test", progress: bool = True):
    """Train (or load the cached) cross-encoder matcher (``cfg``) on the frozen features (train split, selected
    on val) and score every (query, image) pair of ``split``. Returns ``(row, model)``."""
    te = js.feats.split(js.ds, split)[1:]
    model, hist, train_s = baselines.cross_encoder_fit_or_load(js.ds, js.feats, cfg, progress=progress)
    t0 = time.perf_counter()
    scores = model.score(te[0], te[1])
    latency = 1000.0 * (time.perf_counter() - t0) / len(te[1])
    best = max(hist, key=lambda h: (h["val_R@1"], h["val_rSum"]))
    return {
        **evaluate_scores(scores, te[2]),
        "latency_ms": latency,
        "val_R@1": best["val_R@1"],
        "selected_epoch": best["epoch"],
        "train_seconds": train_s,
        "gallery_size": len(te[0]),
        "queries": len(te[1]),
    }, model


def rerank_results(run, pseudo: int = 0, cross_encoder=None, ks=None, rerankers=None) -> tuple[list[dict], dict]:
    """AVG (``run``'s generator with ``pseudo``) followed by each re-ranker of ``run.cfg.rerank``, for each
    beam-list size ``K`` in ``ks`` (default: the profile's): one row per (K, re-ranker) with recall on test,
    the candidate ceiling (recall@K of the beams) and the latency of decoding plus re-ranking. Fusion weights
    are chosen on the validation split's own K beams. ``cross_encoder``: the one-tower model (a
    :class:`~avg_lib.models.baselines.CrossEncoder`) the cross-encoder re-ranker uses; without it that re-ranker is
    skipped. ``rerankers``: instead of the profile's list, names or re-ranker objects (anything with a ``name``
    and ``score``, such as notebook 09's trained LM re-ranker; a ``rerank_ms`` attribute stands for its measured
    time per query). Returns ``(rows, ranked)`` with ``ranked[(K, re-ranker name)]`` the test ranked lists."""
    cfg = run.cfg.rerank
    tg = run.generator(pseudo)
    val, test = (rerank.inputs(run.js, run.split(s)) for s in ("val", "test"))
    base = []
    for name in cfg.rerankers if rerankers is None else rerankers:
        if not isinstance(name, str):
            base.append(name)
        elif name == "embedding":
            base.append(rerank.EmbeddingReranker(run.js.model))
        elif name == "cross-encoder":
            base += [rerank.CrossEncoderReranker(cross_encoder)] if cross_encoder is not None else []
        else:
            raise ValueError(f"unknown re-ranker {name!r}; expected 'embedding' or 'cross-encoder'")
    grid = [i / cfg.fusion_steps for i in range(cfg.fusion_steps + 1)]
    rows, ranked = [], {}
    for k in ks or cfg.ks:
        vc, tc = (rerank.candidates(tg.model, s, k, run.cfg.retrieval.batch_size) for s in (val, test))
        common = {"k": k, "ceiling": rerank.ceiling(tc, test.targets), "decode_ms": tc.latency_ms}
        rows.append({**common, "reranker": "none (AVG order)", **recall_at_k(tc.items, test.targets)})
        rows[-1].update(rerank_ms=0.0, latency_ms=tc.latency_ms, fusion_weight=float("nan"))
        ranked[(k, "none (AVG order)")] = tc.items
        for r in base:
            for variant in (r, rerank.FusionReranker(r, grid=grid).fit(val, vc)):
                items, ms = rerank.rerank(variant, test, tc)
                ms = getattr(r, "rerank_ms", ms)  # a re-ranker whose scores were computed (and timed) elsewhere
                ranked[(k, variant.name)] = items
                rows.append({**common, "reranker": variant.name, **recall_at_k(items, test.targets)})
                w = getattr(variant, "weight", float("nan"))
                rows[-1].update(rerank_ms=ms, latency_ms=tc.latency_ms + ms, fusion_weight=w)
    for row in rows:
        row.update(
            selected_epoch=int(tg.selected["epoch"]), gallery_size=len(test.gallery_codes), cache=tg.directory.name
        )
    return rows, ranked
