"""The paper's baselines: other identifier schemes for the same generator, a one-tower matcher, and
the recall an evaluation that ignores identifier collisions would report.

Identifier schemes of earlier generative retrieval (GRACE, IRGen), each an
:class:`avg_lib.models.identifiers.Identifiers` that the generator trains on exactly like the vokens:

``atomic``   one new token per image (depth 1, vocabulary = number of images).
``random``   a random numeric string per image: ``m`` base-``base`` digits with ``base**m >= n``,
             distinct numbers drawn without replacement (no semantics at all).
``hkmeans``  semantic structured ids: hierarchical k-means over the joint-space image embeddings,
             ``branching`` clusters per node for ``levels`` levels (fixed depth, so the same trie
             works), collisions resolved with the tokenizer's rule (rank by distance to the centroid).

The one-tower model (:class:`CrossEncoder`) reads a (caption, image) pair together and outputs a
score, so retrieval scores every pair of the gallery: accurate in principle, linear in the gallery.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from avg_lib import cache
from avg_lib.models import identifiers, kernels
from avg_lib.models.dropout import Dropout
from avg_lib.models.selection import BestState
from avg_lib.models.tokenizer import kmeans
from avg_lib.progress import tqdm
from avg_lib.retrieval.metrics import recall_at_k

# ------------------------------------------------------------------------------ identifier schemes


def atomic_ids(ids: list[str]) -> identifiers.Identifiers:
    codes = np.arange(len(ids), dtype=np.int64)[:, None]
    return identifiers.Identifiers(list(ids), codes, codes.copy(), len(ids), "atomic")


def random_ids(ids: list[str], base: int = 10, seed: int = 0) -> identifiers.Identifiers:
    if base < 2:
        raise ValueError("base must be at least 2")
    m = max(1, math.ceil(math.log(max(len(ids), 2)) / math.log(base) - 1e-9))
    rng = np.random.default_rng(seed)
    numbers = rng.choice(base**m, size=len(ids), replace=False)
    codes = np.stack([(numbers // base**p) % base for p in range(m - 1, -1, -1)], axis=1).astype(np.int64)
    return identifiers.Identifiers(list(ids), codes, codes.copy(), base, "random")


def hkmeans_ids(
    ids: list[str], emb: np.ndarray, branching: int = 16, levels: int = 3, seed: int = 0
) -> identifiers.Identifiers:
    """Hierarchical k-means: level 1 clusters all images into ``branching`` groups, each group is
    clustered again, and so on; an image's identifier is its cluster index at every level."""
    x = torch.as_tensor(np.asarray(emb), dtype=torch.float32)
    codes = np.zeros((len(x), levels), dtype=np.int64)
    err = np.zeros(len(x))

    def split(rows: np.ndarray, level: int, salt: int):
        if level == levels or len(rows) == 0:
            return
        k = min(branching, len(rows))
        c = kmeans(x[rows], k, seed=seed + salt, iters=20)
        d = torch.cdist(x[rows], c)
        assign = d.argmin(1).numpy()
        codes[rows, level] = assign
        err[rows] = d.min(1).values.numpy()
        for j in range(k):
            split(rows[assign == j], level + 1, salt * branching + j + 1)

    split(np.arange(len(x)), 0, 0)
    return identifiers.resolve_collisions(list(ids), codes, err, branching, scheme="hkmeans")


def unresolved_collision_recall(ranked: np.ndarray, target: np.ndarray, raw_codes: np.ndarray) -> dict:
    """What an evaluation that compares raw (unresolved) identifier strings would report: a returned
    image counts as a hit when its raw vokens equal the target's, so a collided neighbour counts.
    ``ranked`` (n, k) gallery positions, ``target`` (n,), ``raw_codes`` (gallery, L)."""
    _, canon = np.unique(np.asarray(raw_codes), axis=0, return_inverse=True)
    canon = canon.reshape(-1)
    ranked = np.asarray(ranked)
    mapped = np.where(ranked >= 0, canon[np.clip(ranked, 0, None)], -1)
    out = np.full_like(mapped, -1)
    for q, row in enumerate(mapped):  # keep the first occurrence of each raw string
        seen = list(dict.fromkeys(int(v) for v in row if v >= 0))
        out[q, : len(seen)] = seen
    return recall_at_k(out, canon[np.asarray(target)])


def unresolved_ranked(ranked: np.ndarray, target: np.ndarray, raw_codes: np.ndarray) -> np.ndarray:
    """The string-match evaluation of :func:`unresolved_collision_recall` as ranked gallery positions, so it can
    be paired with the resolved evaluation (:mod:`avg_lib.evaluation.claims`): each returned raw string, first
    occurrence only, becomes the query's own image when it equals the target's raw string, else one image carrying it.
    ``recall_at_k`` of the result equals :func:`unresolved_collision_recall` at every k (tested)."""
    _, canon = np.unique(np.asarray(raw_codes), axis=0, return_inverse=True)
    canon = canon.reshape(-1)
    first = {int(c): i for i, c in reversed(list(enumerate(canon)))}  # one image per raw string
    ranked, target = np.asarray(ranked), np.asarray(target)
    out = np.full_like(ranked, -1)
    for q, row in enumerate(ranked):
        strings = list(dict.fromkeys(int(canon[i]) for i in row if i >= 0))
        own = int(canon[target[q]])
        out[q, : len(strings)] = [int(target[q]) if c == own else first[c] for c in strings]
    return out


# ------------------------------------------------------------------------------ one-tower matcher


@dataclass(frozen=True)
class OneTowerConfig:
    """The cross-encoder matcher and its training (a profile's ``one_tower`` section)."""

    dim: int = 256  # width of the projected text and image
    hidden: int = 512  # the scoring MLP's hidden layer
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0


class CrossEncoder(nn.Module):
    """Early-fusion matcher on frozen features: both inputs are projected, and an MLP reads
    ``[text, image, text * image, |text - image|]`` to a single score."""

    def __init__(
        self,
        d_img: int,
        d_txt: int,
        dim: int = 256,
        hidden: int = 512,
        dropout: float = 0.2,
        img_mean=None,
        img_std=None,
    ):
        super().__init__()
        self.register_buffer("img_mean", torch.zeros(d_img) if img_mean is None else torch.as_tensor(img_mean).float())
        self.register_buffer("img_std", torch.ones(d_img) if img_std is None else torch.as_tensor(img_std).float())
        self.img, self.txt = nn.Linear(d_img, dim), nn.Linear(d_txt, dim)
        self.mlp = nn.Sequential(
            Dropout(dropout), nn.Linear(4 * dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, 1)
        )

    def project(self, image_feats=None, text_feats=None):
        i = None if image_feats is None else F.normalize(self.img((image_feats - self.img_mean) / self.img_std), dim=-1)
        t = None if text_feats is None else F.normalize(self.txt(text_feats), dim=-1)
        return i, t

    def pair_scores(self, t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Scores of every (text row, image row) pair from projected inputs: (n_text, n_image)."""
        tt = t.unsqueeze(1).expand(-1, len(i), -1)
        ii = i.unsqueeze(0).expand(len(t), -1, -1)
        return self.score_pairs(tt, ii)

    def score_pairs(self, t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Scores of aligned (text, image) pairs from projected inputs of the same shape ``(..., dim)``."""
        return self.mlp(torch.cat([t, i, t * i, (t - i).abs()], dim=-1)).squeeze(-1)

    @torch.no_grad()
    def score(self, image_feats, text_feats, chunk: int = 8) -> np.ndarray:
        """The full (queries, gallery) score matrix: every pair goes through the MLP, ``chunk`` queries at a time
        (8 keeps the pairs' activations in cache: 1.5x faster than 64 on a 2-core CPU, the same scores)."""
        self.eval()
        i, t = self.project(
            torch.as_tensor(np.asarray(image_feats), dtype=torch.float32),
            torch.as_tensor(np.asarray(text_feats), dtype=torch.float32),
        )
        return torch.cat([self.pair_scores(t[s : s + chunk], i) for s in range(0, len(t), chunk)]).numpy()


def train_cross_encoder(train, val, cfg: OneTowerConfig = OneTowerConfig(), progress: bool = True):
    """Train on ``train`` = (image_feats, caption_feats, caption_owner) with a listwise loss over the
    batch's images (every caption against every image of the batch), select on ``val`` R@1.
    Returns ``(model, history)``."""
    from avg_lib.retrieval.metrics import evaluate_scores

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    epochs, batch_size = cfg.epochs, cfg.batch_size
    img, txt, owner = (np.asarray(a) for a in train)
    model = CrossEncoder(img.shape[1], txt.shape[1], cfg.dim, cfg.hidden, cfg.dropout, img.mean(0), img.std(0) + 1e-6)
    opt = kernels.FlatAdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)  # = AdamW, faster
    img_t, txt_t = torch.from_numpy(img).float(), torch.from_numpy(txt).float()
    caps_of = [np.nonzero(owner == i)[0] for i in range(len(img))]
    with_caps = np.array([i for i, c in enumerate(caps_of) if len(c)])
    best, history = BestState(), []
    for epoch in tqdm(range(epochs), desc="one-tower", disable=not progress):
        model.train()
        losses = []
        for b in np.array_split(rng.permutation(with_caps), max(1, len(with_caps) // batch_size)):
            c = np.array([rng.choice(caps_of[i]) for i in b])
            i, t = model.project(img_t[b], txt_t[c])
            logits = model.pair_scores(t, i)
            labels = torch.arange(len(b))
            loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        m = evaluate_scores(model.score(val[0], val[1]), val[2])
        history.append(
            {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in m.items()}}
        )
        best.update(model, (m["R@1"], m["rSum"]))
    model.load_state_dict(best.state)
    return model.eval(), history


ONE_TOWER_CACHE_VERSION = 1  # part of the cross-encoder's cache key: bump when training changes what it produces


def cross_encoder_fit_or_load(ds, feats, cfg: OneTowerConfig = OneTowerConfig(), force: bool = False, progress=True):
    """Train (or load the cached) cross-encoder on ``ds``'s frozen features (train split, selected on val).
    Cached like the two-tower model, next to the features (``<features dir>/one_tower-<key>/``: ``model.pt``,
    ``config.json`` with the training time, ``history.csv``). Returns ``(model, history rows, train_seconds)``."""

    def build(tmp) -> None:
        t0 = time.time()
        model, history = train_cross_encoder(feats.split(ds, "train")[1:], feats.split(ds, "val")[1:], cfg, progress)
        torch.save(model.state_dict(), tmp / "model.pt")
        meta = {"one_tower": asdict(cfg), "d_img": feats.image.shape[1], "d_txt": feats.text.shape[1]}
        (tmp / "config.json").write_text(json.dumps({**meta, "train_seconds": time.time() - t0}, indent=1))
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)

    label, version = "one-tower cross-encoder", ONE_TOWER_CACHE_VERSION
    out = cache.trained(feats.directory, "one_tower", label, version, asdict(cfg), build, force=force)
    meta = json.loads((out / "config.json").read_text())
    model = CrossEncoder(meta["d_img"], meta["d_txt"], cfg.dim, cfg.hidden, cfg.dropout)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    return model.eval(), pd.read_csv(out / "history.csv").to_dict("records"), float(meta["train_seconds"])
