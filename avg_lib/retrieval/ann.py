"""Nearest-neighbour search for the two-tower model: exact inner-product top-k, and the FAISS indexes it is
served with at scale (HNSW, IVF-PQ), each tuned to a target recall of exact search."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

TOP = 10  # every method returns the top 10


def exact_top(queries: torch.Tensor, gallery: torch.Tensor, k: int = TOP, chunk: int = 1 << 21) -> torch.Tensor:
    """Exact inner-product top-``k`` item indices; the gallery is scanned in chunks so the score matrix
    stays bounded (``len(queries) x chunk``)."""
    best_s = best_i = None
    for s in range(0, len(gallery), chunk):
        sc, ix = (queries @ gallery[s : s + chunk].T).topk(min(k, len(gallery) - s), dim=1)
        ix = ix + s
        if best_s is None:
            best_s, best_i = sc, ix
        else:
            cs, ci = torch.cat([best_s, sc], 1), torch.cat([best_i, ix], 1)
            best_s, pos = cs.topk(k, dim=1)
            best_i = ci.gather(1, pos)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k) that ``found`` (approximate top-k) contains."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def faiss_index(kind: str, gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, target: float = 0.95):
    """Build a FAISS ``kind`` index ("hnsw" | "ivfpq", inner product) over ``gallery`` and tune its search
    breadth until recall@10 of ``truth`` (exact top-10 of ``queries``) reaches ``target``.

    Returns ``(index, setting, recall, build_s)``: the cheapest setting that reaches the target, or the
    most accurate one tried when none does (its recall says so).

    * HNSW: 32 links per node, efConstruction 80; efSearch doubles from 16 to 1024.
    * IVF-PQ: 4 sqrt(n) lists (k-means on at most max(20 per list, 10,000) points), product codes of
      ``dim / 4`` bytes, then ``dim / 2`` if those cannot reach the target; nprobe doubles from 1 to the
      number of lists. (Product codes cap the recall: on the power-law stand-in, 128-byte codes of
      256-d vectors reach about 0.89, whatever nprobe.)
    """
    import faiss

    n, dim = gallery.shape
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if kind == "hnsw":
        t0 = time.perf_counter()
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(gallery)
        build = time.perf_counter() - t0
        best = None
        for ef in (16, 32, 64, 128, 256, 512, 1024):
            index.hnsw.efSearch = ef
            r = recall_at(index.search(queries, TOP)[1], truth)
            if best is None or r > best[1]:
                best = (f"efSearch={ef}", r)
            if r >= target:
                return index, f"efSearch={ef}", r, build
        index.hnsw.efSearch = int(best[0].split("=")[1])
        return index, best[0], best[1], build
    if kind != "ivfpq":
        raise ValueError(f"unknown approximate index {kind!r}; expected 'hnsw' or 'ivfpq'")
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    rng = np.random.default_rng(0)
    train = gallery[rng.choice(n, size=min(n, max(20 * nlist, 10_000)), replace=False)]
    best = None
    for m in (dim // 4, dim // 2):
        t0 = time.perf_counter()
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1  # small galleries: no warnings
        index.train(train)
        index.add(gallery)
        build = time.perf_counter() - t0
        nprobe = 1
        while True:
            index.nprobe = nprobe
            r = recall_at(index.search(queries, TOP)[1], truth)
            setting = f"nlist={nlist}, {m} bytes, nprobe={nprobe}"
            if best is None or r > best[2]:
                best = (index, setting, r, build)
            if r >= target:
                return index, setting, r, build
            if nprobe >= nlist:
                break
            nprobe = min(2 * nprobe, nlist)
    index, setting, r, build = best
    index.nprobe = int(setting.rsplit("=", 1)[1])
    return best


def faiss_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).size)
