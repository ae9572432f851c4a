"""The efficiency study: query cost, index build time and index memory against gallery size.

Every method is timed in one run on one machine, on synthetic galleries of growing size (cost does not
depend on what an identifier or a vector means):

* **generative**: trie-constrained beam search (``gen.retrieve``) over random distinct identifiers;
* on a GPU, **generative (CUDA graph)**: the same search captured once per (gallery, batch size) and
  replayed per call (:mod:`avg_lib.models.generator.graphed`): one launch instead of a few hundred;
* **generative + embedding re-rank (top K)**: K beams, reordered by the joint-space cosine;
* **two-tower, exact**: inner-product top-10 over every gallery vector (a matrix product);
* **two-tower, FAISS HNSW** and **FAISS IVF-PQ**: the approximate indexes a two-tower model is served
  with at scale, each tuned to recall@10 >= ``target_recall`` of exact search on the study's queries
  (the recall reached is reported; a setting that cannot reach it is reported as missing the target);
* **one-tower**: a cross-encoder scores every (query, image) pair (skipped above ``one_tower_max``).

Gallery vectors follow the joint space's own distribution where one is given (a Gaussian with the
covariance of the real image embeddings, then L2-normalised): approximate indexes are much harder on
isotropic random vectors than on real embeddings, so this matters for their recall and cost. Without
real embeddings (the command-line study), the spectrum decays like ``1 / i`` (typical of learned
embeddings). Queries are the real query embeddings where given, else gallery-like vectors.

Memory is measured, not computed: the trie's tensors (AVG), the vectors (exact search), and FAISS's
serialised index, each divided by the gallery size. Build time is the index construction only (encoding
the images is the same for every method and not counted).

``avg speed --profile efficiency`` runs the study without any trained model (see
:mod:`avg_lib.tools.speed`); ``scripts/gpu_efficiency.sh`` does the same on a GPU.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from avg_lib.retrieval.ann import TOP, exact_top, faiss_bytes, faiss_index
from avg_lib.retrieval.trie import VokenTrie

GENERATIVE = "generative (trie beam search)"
GENERATIVE_GRAPH = "generative (trie beam search, CUDA graph)"
EXACT = "two-tower (exact search)"
HNSW = "two-tower (FAISS HNSW)"
IVFPQ = "two-tower (FAISS IVF-PQ)"
ONE_TOWER = "one-tower (score every pair)"
ANN_KINDS = {"hnsw": HNSW, "ivfpq": IVFPQ}


def random_unique_codes(n: int, depth: int, vocab: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct random identifiers of ``depth`` tokens over ``vocab`` values (a synthetic gallery
    for timing: decoding cost does not depend on what the identifiers mean)."""
    space = vocab**depth
    if space < n:
        raise ValueError(f"{vocab}**{depth} identifiers cannot hold {n} distinct items")
    rng = np.random.default_rng(seed)
    if space < 2**62:  # draw distinct integers and write them in base `vocab`
        flat = rng.choice(space, size=n, replace=False) if space <= 50 * n else _distinct(rng, space, n)
        return np.stack([(flat // vocab**p) % vocab for p in reversed(range(depth))], axis=1).astype(np.int64)
    codes = np.empty((0, depth), dtype=np.int64)
    while len(codes) < n:
        more = rng.integers(0, vocab, size=(2 * (n - len(codes)), depth))
        codes = np.unique(np.concatenate([codes, more]), axis=0)
    return codes[rng.permutation(len(codes))[:n]]


def _distinct(rng, space: int, n: int) -> np.ndarray:
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        out = np.unique(np.concatenate([out, rng.integers(0, space, size=2 * (n - len(out)))]))
    return rng.permutation(out)[:n]


class GalleryDistribution:
    """Unit vectors like a joint space's: ``mean + z @ basis`` (z standard normal), L2-normalised.

    ``from_embeddings`` fits mean and covariance (its principal directions, scaled) to real embeddings;
    ``power_law`` is the stand-in without data (variance of direction ``i`` proportional to ``1 / i``)."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.basis = torch.as_tensor(basis, dtype=torch.float32)
        self.dim = self.basis.shape[1]

    @classmethod
    def from_embeddings(cls, emb: np.ndarray) -> GalleryDistribution:
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2 or len(emb) < 2:
            raise ValueError(f"embeddings must be (n >= 2, dim), got shape {emb.shape}")
        mean = emb.mean(0)
        _, s, vt = np.linalg.svd(emb - mean, full_matrices=False)
        return cls(mean, (s[:, None] / math.sqrt(len(emb) - 1)) * vt)

    @classmethod
    def power_law(cls, dim: int, seed: int = 0) -> GalleryDistribution:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
        scale = (1.0 / torch.arange(1, dim + 1, dtype=torch.float32)).sqrt()
        return cls(np.zeros(dim), (scale[:, None] * q.T).numpy())

    def sample(self, n: int, seed: int = 0, device: str | torch.device = "cpu", chunk: int = 1 << 20) -> torch.Tensor:
        """``n`` unit vectors on ``device``, drawn there in chunks (10M x 512 floats never pass the host)."""
        g = torch.Generator(device=device).manual_seed(seed)
        mean, basis = self.mean.to(device), self.basis.to(device)
        out = torch.empty(n, self.dim, device=device)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            z = torch.randn(m, basis.shape[0], generator=g, device=device)
            out[s : s + m] = torch.nn.functional.normalize(mean + z @ basis, dim=1)
        return out


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` (after waiting for queued GPU work)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():  # kernels run asynchronously: wait for them before stopping the clock
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def trie_bytes(trie: VokenTrie) -> int:
    return sum(x.element_size() * x.numel() for lst in (trie.offsets, trie.tokens, trie.children) for x in lst) + (
        trie.leaf_item.element_size() * trie.leaf_item.numel()
    )


# ------------------------------------------------------------------------------------------- study


def study(
    gen,
    query_texts: list[str],
    query_emb: np.ndarray,
    sizes,
    depth: int,
    vocab: int,
    cross_encoder=None,
    num_beams: int = 10,
    batch_size: int = 64,
    one_tower_queries: int = 4,
    one_tower_max: int | None = None,
    ann: tuple[str, ...] = ("hnsw", "ivfpq"),
    ann_max: int | None = None,
    target_recall: float = 0.95,
    distribution: GalleryDistribution | None = None,
    seed: int = 0,
    device: str = "cpu",
    rerank_k: int | None = None,
    progress: bool = True,
    cuda_graphs: bool | None = None,
) -> pd.DataFrame:
    """One row per (method, gallery size): ``latency_ms_batch1`` (one query per call), ``queries_per_s_batched``
    (``batch_size`` queries per call), ``build_s``, ``bytes_per_image``, and for approximate indexes the
    ``setting`` chosen and its ``recall_at_10`` against exact search (see the module docstring).
    ``cuda_graphs`` (default: on a CUDA device) adds the CUDA-graph line."""
    from avg_lib.progress import tqdm

    graphs = str(device).startswith("cuda") if cuda_graphs is None else cuda_graphs
    q = _Queries(query_texts, query_emb, batch_size, device)
    dist = distribution or GalleryDistribution.power_law(q.emb.shape[1], seed)
    if dist.dim != q.emb.shape[1]:
        raise ValueError(f"gallery distribution is {dist.dim}-d but the query embeddings are {q.emb.shape[1]}-d")
    gen.precompute(q.texts)  # text states of a frozen encoder are query-side features, like `query_emb`
    rows = []
    for n in tqdm(list(sizes), desc="gallery sizes", disable=not progress):
        t0 = time.perf_counter()
        trie = VokenTrie(random_unique_codes(n, depth, vocab, seed))
        build = time.perf_counter() - t0
        trie.to(device)
        gallery = dist.sample(n, seed, device)
        rows += _generative_rows(gen, trie, build, gallery, q, num_beams, graphs, rerank_k)
        rows += _two_tower_rows(gallery, q, ann if ann_max is None or n <= ann_max else (), target_recall)
        if cross_encoder is not None and (one_tower_max is None or n <= one_tower_max):
            t1, tb, queries, per_image = _one_tower_timings(cross_encoder, n, one_tower_queries, seed, device)
            rows.append(_row(ONE_TOWER, n, t1, tb, queries, 0.0, per_image, "projected image features"))
        del trie, gallery
    return pd.DataFrame(rows)


class _Queries:
    """The study's queries: texts and L2-normalised embeddings, one of each (batch 1) and ``batch_size`` of each
    (the real ones repeated as needed)."""

    def __init__(self, texts: list[str], emb: np.ndarray, batch_size: int, device):
        self.one = texts[:1]
        self.texts = (texts * (batch_size // max(len(texts), 1) + 1))[:batch_size]
        emb = torch.as_tensor(np.asarray(emb), dtype=torch.float32)
        self.emb = torch.nn.functional.normalize(emb, dim=1).to(device)
        self.batch = self.emb.repeat(batch_size // len(self.emb) + 1, 1)[:batch_size]


def _row(method, n, t1, t_batch, per_batch, build_s, bytes_per_image, setting, recall_at_10=1.0) -> dict:
    return {
        "method": method,
        "gallery_size": n,
        "latency_ms_batch1": 1000 * t1,
        "queries_per_s_batched": per_batch / t_batch,
        "build_s": build_s,
        "bytes_per_image": bytes_per_image,
        "setting": setting,
        "recall_at_10": recall_at_10,
    }


def _generative_rows(gen, trie, build, gallery, q: _Queries, num_beams, graphs, rerank_k) -> list[dict]:
    """AVG's rows for one gallery: trie beam search, its CUDA-graph replay (``graphs``), and with ``rerank_k`` the
    embedding re-rank of that many beams."""
    from avg_lib.models.generator.graphed import GraphedRetriever

    n, per_image, bs = trie.size, trie_bytes(trie) / trie.size, len(q.texts)
    gen.retrieve(q.one, trie, num_beams=num_beams, batch_size=1)  # warm-up
    t1 = timed(lambda: gen.retrieve(q.one, trie, num_beams=num_beams, batch_size=1), 10)
    tb = timed(lambda: gen.retrieve(q.texts, trie, num_beams, bs), 2)
    rows = [_row(GENERATIVE, n, t1, tb, bs, build, per_image, f"{num_beams} beams")]
    if graphs:
        g1, gb = GraphedRetriever(gen, trie, num_beams, 1), GraphedRetriever(gen, trie, num_beams, bs)
        t1, tb = timed(lambda: g1(q.one), 10), timed(lambda: gb(q.texts), 3)
        rows.append(
            _row(GENERATIVE_GRAPH, n, t1, tb, bs, build, per_image, f"{num_beams} beams, one graph replay per call")
        )
        g1 = gb = None  # frees the graphs' memory pools
    if rerank_k:

        def reranked(texts, emb):
            items = gen.retrieve(texts, trie, num_beams=rerank_k, batch_size=len(texts)).items
            cos = torch.einsum("nkd,nd->nk", gallery[items.clamp(min=0)], emb).masked_fill(items < 0, -2.0)
            return items.gather(1, cos.argsort(dim=1, descending=True))

        t1, tb = timed(lambda: reranked(q.one, q.emb[:1]), 10), timed(lambda: reranked(q.texts, q.batch), 2)
        per = per_image + 4 * gallery.shape[1]
        rows.append(
            _row(f"generative + embedding re-rank (top {rerank_k})", n, t1, tb, bs, build, per, f"{rerank_k} beams")
        )
    return rows


def _two_tower_rows(gallery, q: _Queries, ann: tuple[str, ...], target_recall: float) -> list[dict]:
    """Exact inner-product search over ``gallery``, then each FAISS index of ``ann`` tuned to ``target_recall``."""
    n, bs = len(gallery), len(q.batch)
    t1, tb = timed(lambda: exact_top(q.emb[:1], gallery), 10), timed(lambda: exact_top(q.batch, gallery), 3)
    rows = [_row(EXACT, n, t1, tb, bs, 0.0, float(gallery.element_size() * gallery.shape[1]), "float32 vectors")]
    if not ann:
        return rows
    truth = exact_top(q.emb, gallery).cpu().numpy()
    g_np, q_np = gallery.cpu().numpy(), q.emb.cpu().numpy()
    qb_np = np.ascontiguousarray(q.batch.cpu().numpy())
    for kind in ann:
        index, setting, recall, build = faiss_index(kind, g_np, q_np, truth, target_recall)
        t1, tb = timed(lambda: index.search(q_np[:1], TOP), 10), timed(lambda: index.search(qb_np, TOP), 3)
        setting += "" if recall >= target_recall else f" (misses {target_recall:.2f})"
        rows.append(_row(ANN_KINDS[kind], n, t1, tb, bs, build, faiss_bytes(index) / n, setting, recall))
        index = None  # frees the index before the next is built
    return rows


@torch.no_grad()
def _one_tower_timings(cross_encoder, n: int, n_queries: int, seed: int, device) -> tuple[float, float, int, float]:
    """Seconds for one query and for ``n_queries`` queries scoring all ``n`` pairs, and bytes per image."""
    rng = np.random.default_rng(seed)
    cross_encoder.eval()
    width = cross_encoder.img.out_features
    imgs = torch.nn.functional.normalize(torch.as_tensor(rng.normal(size=(n, width)), dtype=torch.float32), dim=1)
    imgs = imgs.to(device)
    t_in = torch.as_tensor(rng.normal(size=(n_queries, cross_encoder.txt.in_features)), dtype=torch.float32)
    _, t = cross_encoder.project(None, t_in.to(device))

    def score_all(rows_t):
        for r in rows_t:
            torch.cat([cross_encoder.pair_scores(r[None], imgs[s : s + 8192]) for s in range(0, n, 8192)], 1).topk(
                TOP, dim=1
            )

    return timed(lambda: score_all(t[:1]), 1), timed(lambda: score_all(t), 1), len(t), float(4 * width)


METRICS = {"latency_ms_batch1": "batch-1 latency", "queries_per_s_batched": "batched throughput"}


def crossovers(table: pd.DataFrame, methods: tuple[str, ...] = (GENERATIVE, GENERATIVE_GRAPH)) -> pd.DataFrame:
    """For each of ``methods`` present, each comparator (the methods that are not generative) and each metric
    (batch-1 latency: lower is better; batched throughput: higher is better): the gallery size from which
    the generative method is better and stays better up to the largest size measured, interpolated on
    log-log axes between the two measured sizes around the crossing. ``crossover`` is the smallest size
    measured when it is better everywhere, and NaN when it is not better at the largest size (``status``
    says which)."""
    out = []
    others = table[~table["method"].str.startswith("generative")]
    for method in methods:
        mine = table[table["method"] == method].set_index("gallery_size")
        if mine.empty:
            continue
        for column, label in METRICS.items():
            sign = 1.0 if column.startswith("latency") else -1.0
            for other, t in others.groupby("method", sort=False):
                theirs = t.set_index("gallery_size")[column]
                common = sorted(set(mine.index) & set(theirs.index))
                if not common:
                    continue
                # < 0: the generative method is better at that size
                d = sign * (np.log(mine[column][common].to_numpy()) - np.log(theirs[common].to_numpy()))
                row = {"method": method, "metric": label, "against": other, "sizes": f"{common[0]:,}-{common[-1]:,}"}
                if d[-1] >= 0:
                    row.update(crossover=float("nan"), status=f"not better up to {common[-1]:,}")
                elif (d < 0).all():
                    row.update(crossover=float(common[0]), status=f"better from the smallest size ({common[0]:,})")
                else:
                    i = max(j for j in range(len(d)) if d[j] >= 0)  # last size where it is not better
                    x0, x1 = math.log(common[i]), math.log(common[i + 1])
                    row.update(crossover=float(math.exp(x0 + (x1 - x0) * d[i] / (d[i] - d[i + 1]))), status="crossover")
                out.append(row)
    return pd.DataFrame(out, columns=["method", "metric", "against", "sizes", "crossover", "status"])
