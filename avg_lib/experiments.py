"""One row of a results table per call: the measurements behind notebooks 06-08.

Every function trains through the cached stages of :mod:`avg_lib.pipeline` (so a model trained by
an earlier notebook is loaded, not retrained), scores the **test** split once, and returns a flat
dict ready for a DataFrame row. Model selection already happened on validation inside training.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from . import baselines, generator, pipeline, two_tower
from .metrics import evaluate_scores, recall_at_k
from .trie import VokenTrie

METRICS = ("R@1", "R@5", "R@10", "rSum")


def avg_result(js, vt, gen_cfg, pseudo: int = 0, *, stage: str = "final", ids=None, codebooks=None,
               num_beams: int | None = None, split: str = "test", unresolved: bool = False,
               progress: bool = True) -> dict:
    """Train-or-load a generator and score ``split`` by constrained decoding.

    ``ids``: identifiers other than the tokenizer's (baselines). ``unresolved``: also report
    ``unresolved_R@k``, what a string-match evaluation on the raw, collided vokens would say."""
    gen, hist, d = pipeline.voken_generator(js, vt, gen_cfg, pseudo=pseudo, stage=stage, ids=ids,
                                            codebooks=codebooks, progress=progress)
    ident = ids if ids is not None else vt.ids
    sp = pipeline.retrieval_split(js, ident, split)
    trie = VokenTrie(sp.gallery_codes)
    beams = num_beams or gen_cfg.num_beams
    res, latency = generator.timed_retrieve(gen, sp.texts, trie, num_beams=beams, batch_size=64)
    items = res.items.cpu().numpy()
    best = hist.loc[hist["val_R@1"].idxmax()]
    row = {**recall_at_k(items, sp.targets), "latency_ms": latency, "val_R@1": float(best["val_R@1"]),
           "selected_epoch": int(best["epoch"]), "identifier_scheme": ident.scheme, "identifier_depth": trie.depth,
           "vocabulary": ident.codebook_size, "num_beams": beams, "gallery_size": trie.size,
           "queries": len(sp.texts), "cache": d.name}
    if unresolved:
        u = baselines.unresolved_collision_recall(items, sp.targets, ident.raw[sp.image_index])
        row.update({f"unresolved_{k}": v for k, v in u.items()})
    return row


def two_tower_result(js, split: str = "test") -> dict:
    """Exact dense search of the joint space over ``split``'s images."""
    _, g_img, q_txt, owner = js.feats.split(js.ds, split)
    t0 = time.perf_counter()
    m = two_tower.evaluate(js.model, g_img, q_txt, owner)
    latency = 1000.0 * (time.perf_counter() - t0) / len(q_txt)
    best = js.history.loc[js.history["val_R@1"].idxmax()]
    return {**m, "latency_ms": latency, "val_R@1": float(best["val_R@1"]), "selected_epoch": int(best["epoch"]),
            "gallery_size": len(g_img), "queries": len(q_txt)}


def one_tower_result(js, epochs: int = 30, seed: int = 0, split: str = "test", progress: bool = True):
    """Train the cross-encoder matcher on the frozen features (train split, selected on val) and score
    every (query, image) pair of ``split``. Returns ``(row, model)``."""
    tr, va, te = (js.feats.split(js.ds, s)[1:] for s in ("train", "val", split))
    t0 = time.time()
    model, hist = baselines.train_cross_encoder(tr, va, epochs=epochs, seed=seed, progress=progress)
    train_s = time.time() - t0
    t0 = time.perf_counter()
    scores = model.score(te[0], te[1])
    latency = 1000.0 * (time.perf_counter() - t0) / len(te[1])
    best = max(hist, key=lambda h: (h["val_R@1"], h["val_rSum"]))
    return {**evaluate_scores(scores, te[2]), "latency_ms": latency, "val_R@1": best["val_R@1"],
            "selected_epoch": best["epoch"], "train_seconds": train_s, "gallery_size": len(te[0]),
            "queries": len(te[1])}, model


def mean_std(df: pd.DataFrame, by: list[str], metrics=METRICS + ("latency_ms",)) -> pd.DataFrame:
    """Mean and standard deviation (ddof=1; 0 with one seed) of ``metrics`` per group, with ``n_seeds``."""
    g = df.groupby(by, sort=False)
    out = g[list(metrics)].mean()
    std = g[list(metrics)].std(ddof=1).fillna(0.0)
    for m in metrics:
        out[f"{m}_std"] = std[m]
    out["n_seeds"] = g.size()
    return out.reset_index()


def markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table (no extra dependency); floats rounded to ``digits``."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def with_std(df: pd.DataFrame, metrics=METRICS, digits: int = 1) -> pd.DataFrame:
    """``mean ± std`` strings for a compact markdown view of :func:`mean_std` output."""
    out = df.copy()
    for m in metrics:
        out[m] = [f"{a:.{digits}f} ± {b:.{digits}f}" if n > 1 else f"{a:.{digits}f}"
                  for a, b, n in zip(df[m], df[f"{m}_std"], df["n_seeds"])]
    return out.drop(columns=[c for c in out.columns if c.endswith("_std")])
