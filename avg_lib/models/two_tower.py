"""The two-tower "CLIP-lite" baseline and the joint embedding space the voken tokenizer reads.

Frozen features in, two small projection heads out: a linear map or an MLP on the image features
(standardised with training statistics) and a linear map on the caption features, both to ``dim``
and L2-normalised, trained with the symmetric InfoNCE loss of CLIP (learnable temperature).
Each step takes a batch of distinct training images and one caption of each, drawn at random,
so no in-batch negative is a positive in disguise. The epoch with the best validation R@1
(ties: rSum) is kept; the test split is never looked at during training.

A ridge regression from image features into caption space (:func:`ridge_scores`) is kept as the
reference the two-tower model should beat.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from avg_lib import cache
from avg_lib.models import kernels
from avg_lib.models.dropout import Dropout
from avg_lib.models.selection import BestState
from avg_lib.progress import tqdm
from avg_lib.retrieval.metrics import evaluate_scores

# Part of the cache key: bump when a change here changes what training produces.
CACHE_VERSION = 2


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 256
    hidden: int = 0  # 0 = linear image head (best on emoji validation); >0 = one hidden layer MLP
    dropout: float = 0.5
    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1.0
    init_temperature: float = 0.07
    patience: int = 60  # epochs without a better validation R@1 before stopping
    sampling: str = "image"  # "image": one random caption per image per step; "caption": every caption, every epoch
    search: str = "auto"  # on: pick the regularisation on validation (SEARCH); auto: on except for built-in data
    seed: int = 0

    def __post_init__(self):
        if self.search not in ("auto", "on", "off"):
            raise ValueError(f"search must be 'auto', 'on' or 'off', not {self.search!r}")
        if self.sampling not in ("image", "caption"):
            raise ValueError(f"sampling must be 'image' or 'caption', not {self.sampling!r}")


# The regularisation search (``search: on``): each candidate changes the profile's settings; the one with the
# best validation R@1 (ties: rSum, then the earlier candidate) is kept. The profile's own settings come first;
# the second is the plain linear InfoNCE head (no dropout, weight decay 0.01) that other real captioned-image
# sets prefer; the rest vary one knob each: regularisation strength, caption sampling, head width.
SEARCH = (
    {},
    {"dropout": 0.0, "weight_decay": 0.01},
    {"dropout": 0.2, "weight_decay": 0.1},
    {"sampling": "swap"},
    {"dim": 512},
)
BUILT_IN = ("emoji", "synthetic")  # data whose profile settings were already chosen on its own validation split


class TwoTower(nn.Module):
    def __init__(self, d_img: int, d_txt: int, cfg: TwoTowerConfig, img_mean=None, img_std=None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("img_mean", torch.zeros(d_img) if img_mean is None else torch.as_tensor(img_mean).float())
        self.register_buffer("img_std", torch.ones(d_img) if img_std is None else torch.as_tensor(img_std).float())
        if cfg.hidden > 0:
            self.image_head = nn.Sequential(
                Dropout(cfg.dropout),
                nn.Linear(d_img, cfg.hidden),
                nn.GELU(),
                Dropout(cfg.dropout),
                nn.Linear(cfg.hidden, cfg.dim),
            )
        else:  # hidden=0: a linear head
            self.image_head = nn.Sequential(Dropout(cfg.dropout), nn.Linear(d_img, cfg.dim))
        self.text_head = nn.Linear(d_txt, cfg.dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head((x - self.img_mean) / self.img_std), dim=-1)

    def embed_texts(self, t: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(t), dim=-1)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    logits = log_scale.clamp(max=math.log(100.0)).exp() * txt @ img.T
    labels = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor, log_scale: torch.Tensor):
    """InfoNCE for a batch of captions and their (distinct) images: ``owner[j]`` = row of caption j's image.
    Text->image: cross-entropy over the batch's images; image->text: every caption of the image is a positive."""
    logits = log_scale.clamp(max=math.log(100.0)).exp() * txt @ img.T  # (captions, images)
    t2i = F.cross_entropy(logits, owner)
    pos = F.one_hot(owner, len(img)).T.bool()  # (images, captions)
    li = logits.T
    i2t = (torch.logsumexp(li, 1) - torch.logsumexp(li.masked_fill(~pos, float("-inf")), 1)).mean()
    return 0.5 * (t2i + i2t)


@torch.no_grad()
def embed(model: TwoTower, image_feats=None, text_feats=None):
    """Joint-space embeddings (numpy) of whichever inputs are given."""
    model.eval()
    out = []
    if image_feats is not None:
        out.append(model.embed_images(torch.tensor(np.asarray(image_feats), dtype=torch.float32)).numpy())
    if text_feats is not None:
        out.append(model.embed_texts(torch.tensor(np.asarray(text_feats), dtype=torch.float32)).numpy())
    return out[0] if len(out) == 1 else tuple(out)


def evaluate(model: TwoTower, image_feats, text_feats, owner) -> dict[str, float]:
    """Exact dense retrieval over the given gallery; ``owner[q]`` = gallery position of query q's image."""
    g, q = embed(model, image_feats, text_feats)
    return evaluate_scores(q @ g.T, owner)


def train_two_tower(train, val, cfg: TwoTowerConfig = TwoTowerConfig(), progress: bool = True):
    """Train on ``train`` and select on ``val``; each is ``(image_feats, caption_feats, caption_owner)``.

    Returns ``(model, history)``; history has one row per epoch (loss, temperature, val metrics).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    img, txt, owner = (np.asarray(a) for a in train)
    mean, std = img.mean(0), img.std(0) + 1e-6
    model = TwoTower(img.shape[1], txt.shape[1], cfg, mean, std)
    opt = kernels.FlatAdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)  # = AdamW, faster
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    caps_of = [np.nonzero(owner == i)[0] for i in range(len(img))]
    has_caps = np.array([len(c) > 0 for c in caps_of])
    img_t, txt_t = torch.from_numpy(img).float(), torch.from_numpy(txt).float()
    best, history = BestState(), []
    bar = tqdm(range(cfg.epochs), desc="two-tower", disable=not progress)
    for epoch in bar:
        model.train()
        order = rng.permutation(np.nonzero(has_caps)[0] if cfg.sampling == "image" else len(owner))
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            if len(b) < 2:
                continue
            if cfg.sampling == "image":
                c = np.array([rng.choice(caps_of[i]) for i in b])
                loss = clip_loss(model.embed_images(img_t[b]), model.embed_texts(txt_t[c]), model.log_scale)
            else:
                imgs, inv = np.unique(owner[b], return_inverse=True)
                loss = multi_positive_loss(
                    model.embed_images(img_t[imgs]),
                    model.embed_texts(txt_t[b]),
                    torch.from_numpy(inv.reshape(-1)),
                    model.log_scale,
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        m = evaluate(model, *val)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "temperature": float(1.0 / model.log_scale.detach().exp()),
                **{f"val_{k}": v for k, v in m.items()},
            }
        )
        best.update(model, (m["R@1"], m["rSum"]))
        bar.set_postfix(
            loss=f"{history[-1]['train_loss']:.3f}", val_R1=f"{m['R@1']:.1f}", best=f"{best.key[0]:.1f}", refresh=False
        )
        if best.since >= cfg.patience:
            break
    model.load_state_dict(best.state)
    model.eval()
    return model, history


def ridge_scores(train, query_text, gallery_images, alpha: float = 10.0) -> np.ndarray:
    """Reference baseline: ridge map from (standardised) image features to caption space, cosine scores."""
    from sklearn.linear_model import Ridge

    img, txt, owner = (np.asarray(a) for a in train)
    mean, std = img.mean(0), img.std(0) + 1e-6
    reg = Ridge(alpha=alpha).fit((img[owner] - mean) / std, txt)
    g = reg.predict((np.asarray(gallery_images) - mean) / std)
    g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-12
    q = np.asarray(query_text) / (np.linalg.norm(query_text, axis=1, keepdims=True) + 1e-12)
    return q @ g.T


RIDGE_ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def ridge_baseline(train, val, test, alphas=RIDGE_ALPHAS) -> tuple[dict, float, dict]:
    """The ridge reference with its regularisation chosen on validation R@1 (first best on ties), scored on
    ``test``; each split is ``(image_feats, caption_feats, caption_owner)``. Returns ``(test metrics, alpha,
    {alpha: validation R@1})``."""
    by_alpha = {a: evaluate_scores(ridge_scores(train, val[1], val[0], alpha=a), val[2])["R@1"] for a in alphas}
    alpha = max(by_alpha, key=by_alpha.get)
    return evaluate_scores(ridge_scores(train, test[1], test[0], alpha=alpha), test[2]), alpha, by_alpha


# ------------------------------------------------------------------------------ cache-or-compute


def search_settings(train, val, cfg: TwoTowerConfig, grid=SEARCH, progress: bool = True):
    """Train one model per candidate of ``grid`` (changes to ``cfg``; ``{"sampling": "swap"}`` tries the other
    caption sampling) on ``train`` and keep the best by validation R@1, then rSum (earlier candidate on ties).
    Only ``train`` and ``val`` are seen. Returns ``(model, history, chosen config, table of candidates)``."""
    best, rows = None, []
    for i, change in enumerate(grid):
        change = dict(change)
        if change.get("sampling") == "swap":
            change["sampling"] = "caption" if cfg.sampling == "image" else "image"
        c = replace(cfg, **change)
        model, history = train_two_tower(train, val, c, progress=progress)
        top = max(history, key=lambda h: (h["val_R@1"], h["val_rSum"]))
        rows.append(
            {"candidate": i, "change": json.dumps(change), "val_R@1": top["val_R@1"], "val_rSum": top["val_rSum"]}
        )
        if best is None or (top["val_R@1"], top["val_rSum"]) > best[0]:
            best = ((top["val_R@1"], top["val_rSum"]), model, history, c, i)
    table = pd.DataFrame(rows)
    table["chosen"] = table["candidate"] == best[4]
    return best[1], best[2], best[3], table


def fit_or_load(
    ds, feats, cfg: TwoTowerConfig = TwoTowerConfig(), force: bool = False, progress: bool = True, search=None
):
    """Train (or load the cached) two-tower model on ``ds``'s train split, selected on val.

    ``search`` (default: ``cfg.search``, with ``auto`` = on unless ``ds`` is built-in data, :data:`BUILT_IN`):
    choose the regularisation among :data:`SEARCH` on validation (:func:`search_settings`); the table of
    candidates is kept as ``search.csv`` and the chosen settings in ``config.json``.

    The cache lives next to the features (``<features dir>/two_tower-<config key>/``, see
    :func:`avg_lib.cache.cached`): ``model.pt`` (a plain state dict, loads with ``weights_only=True``),
    ``config.json``, ``history.csv`` and the joint-space embeddings of every image and caption
    (``image.npy``, ``text.npy``), which are the voken tokenizer's input.
    Returns ``(model, history DataFrame, directory)``.
    """

    search = cfg.search if search is None else search
    on = search == "on" or (search == "auto" and not ds.name.startswith(BUILT_IN))
    key = {k: v for k, v in asdict(cfg).items() if k != "search"}  # off: the keys of before the search existed
    if on:
        key["search"] = list(SEARCH)

    def build(tmp: Path) -> None:
        train, val = feats.split(ds, "train")[1:], feats.split(ds, "val")[1:]
        chosen = cfg
        if on:
            model, history, chosen, table = search_settings(train, val, cfg, progress=progress)
            table.to_csv(tmp / "search.csv", index=False)
        else:
            model, history = train_two_tower(train, val, cfg, progress=progress)
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "config.json").write_text(
            json.dumps(
                {"two_tower": asdict(chosen), "d_img": feats.image.shape[1], "d_txt": feats.text.shape[1]}, indent=1
            )
        )
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
        g, q = embed(model, feats.image, feats.text)
        np.save(tmp / "image.npy", g.astype(np.float32))
        np.save(tmp / "text.npy", q.astype(np.float32))

    out = cache.trained(feats.directory, "two_tower", "two-tower joint space", CACHE_VERSION, key, build, force=force)
    return load(out), pd.read_csv(out / "history.csv"), out


def load(directory) -> TwoTower:
    directory = Path(directory)
    meta = json.loads((directory / "config.json").read_text())
    model = TwoTower(meta["d_img"], meta["d_txt"], TwoTowerConfig(**meta["two_tower"]))
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    return model.eval()
