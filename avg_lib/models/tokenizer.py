"""The voken tokenizer: an RQ-VAE over joint-space image embeddings, with semantic alignment.

Paper §2 (``docs/paper.md``, "Voken tokenizer"): an MLP encoder maps an image embedding to a latent ``z``;
residual quantisation replaces ``z`` by a sum of ``L`` codebook vectors, chosen greedily level by
level (``r_0 = z``, ``c_l = argmin_k ||r_{l-1} - e_k||``, ``r_l = r_{l-1} - e_{c_l}``); a mirror MLP
decoder maps the quantised latent back. The ``L`` indices are the image's **vokens**. Losses:

* reconstruction ``||dec(z_q) - x||^2`` of the image embedding (squared distances summed over
  dimensions, averaged over rows: :func:`sq_err`);
* VQ: ``||sg(r) - e||^2 + beta * ||r - sg(e)||^2`` summed over levels (codebook + commitment);
* **semantic alignment** (the paper's addition): ``||dec(z_q) - t||^2`` with ``t`` the embedding of a
  caption paired with the image, so that images whose captions mean the same get the same vokens.
  ``align_on="latent"`` aligns ``z_q`` with the encoder applied to ``t`` instead. ``align_weight=0``
  switches it off (the ablation).

Differences from the authors' code, on purpose: k-means initialises the codebook(s) on **all**
training rows (not the first batch), level by level on the residuals; ``shared_codebook=False``
gives one codebook per level; the checkpoint is a plain state dict plus a JSON config.

Inputs are rows ``(image embedding, caption embedding)``: one row per training caption, as in the
paper. Selection is on the validation reconstruction + alignment loss; the test split is never used.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avg_lib.models import kernels
from avg_lib.models.dropout import Dropout
from avg_lib.models.selection import BestState
from avg_lib.progress import tqdm

# Part of every cache key of trained tokenizers: bump it when a change to this module changes what
# training produces, so that stale cached runs are never read back.
CACHE_VERSION = 3


@dataclass(frozen=True)
class TokenizerConfig:
    codebook_size: int = 256  # K
    levels: int = 3  # L, the voken length
    shared_codebook: bool = True  # one codebook applied L times (paper) or one per level
    e_dim: int = 64  # latent / codebook vector size
    hidden: tuple[int, ...] = (512, 256)
    dropout: float = 0.1
    beta: float = 0.25  # commitment weight
    align_weight: float = 1.0  # semantic alignment weight; 0 = off (ablation)
    align_on: str = "reconstruction"  # "reconstruction" (paper) or "latent"
    kmeans_init: bool = True  # False = random init from training latents (ablation)
    restart_dead_codes: bool = True  # move entries unused for an epoch onto live residuals (not in the paper)
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 40
    seed: int = 0

    def __post_init__(self):
        if self.align_on not in ("reconstruction", "latent"):
            raise ValueError(f"align_on must be 'reconstruction' or 'latent', not {self.align_on!r}")
        object.__setattr__(self, "hidden", tuple(self.hidden))


def sq_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance per row, averaged over rows. Unlike a per-element MSE it does not
    shrink with the embedding size, so the loss terms keep their balance for 256-d unit vectors
    and 768-d unnormalised CLIP features alike."""
    return ((a - b) ** 2).sum(-1).mean()


def _mlp(dims: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU(), Dropout(dropout)]
    return nn.Sequential(*layers)


class ResidualQuantizer(nn.Module):
    """``L`` levels of nearest-neighbour quantisation of residuals; one shared codebook or one per level."""

    def __init__(self, levels: int, codebook_size: int, dim: int, shared: bool = True, beta: float = 0.25):
        super().__init__()
        self.levels, self.codebook_size, self.dim, self.shared, self.beta = levels, codebook_size, dim, shared, beta
        n_books = 1 if shared else levels
        self.codebooks = nn.Parameter(torch.randn(n_books, codebook_size, dim) / math.sqrt(dim))

    def codebook(self, level: int) -> torch.Tensor:
        return self.codebooks[0 if self.shared else level]

    def forward(self, z: torch.Tensor):
        """Return ``(z_q with straight-through gradient, indices (n, L), vq_loss)``."""
        residual, quantised, idx, loss = z, torch.zeros_like(z), [], z.new_zeros(())
        self.last_residuals = []
        for level in range(self.levels):
            book = self.codebook(level)
            self.last_residuals.append(residual.detach())
            i = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            e = book[i]
            loss = loss + sq_err(e, residual.detach()) + self.beta * sq_err(residual, e.detach())
            quantised = quantised + e
            residual = residual - e.detach()
            idx.append(i)
        z_q = z + (quantised - z).detach()  # straight-through: the decoder's gradient flows to the encoder
        return z_q, torch.stack(idx, dim=1), loss

    @torch.no_grad()
    def restart_dead(self, counts: torch.Tensor, generator: torch.Generator) -> int:
        """Move codebook entries no training row chose this epoch onto random recent residuals of
        their level (``counts``: (n_books, K)); returns how many were moved."""
        moved = 0
        for b in range(counts.shape[0]):
            dead = torch.nonzero(counts[b] == 0).flatten()
            if len(dead) == 0:
                continue
            pool = torch.cat(self.last_residuals) if self.shared else self.last_residuals[b]
            pick = torch.randint(len(pool), (len(dead),), generator=generator)
            self.codebooks.data[b, dead] = pool[pick]
            moved += len(dead)
        return moved

    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """The quantised latent for given indices: the sum of the chosen codebook vectors."""
        return sum(self.codebook(level)[idx[:, level]] for level in range(self.levels))

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, seed: int = 0, iters: int = 25) -> None:
        """Initialise every codebook by k-means on ALL rows of ``z``, level by level on the residuals."""
        residual = z.detach().clone()
        for level in range(1 if self.shared else self.levels):
            centers = kmeans(residual, self.codebook_size, seed=seed + level, iters=iters)
            self.codebooks.data[level] = centers
            i = torch.cdist(residual, centers).argmin(1)
            residual = residual - centers[i]


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 25) -> torch.Tensor:
    """Plain k-means with k-means++ seeding over all rows of ``x`` (deterministic under ``seed``).

    With fewer distinct rows than ``k``, the remaining centres are copies of random rows plus a
    little noise (they become dead codes that training can still claim).
    """
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    first = torch.randint(n, (1,), generator=g).item()
    centers = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, min(k, n)):
        if d2.sum() <= 0:
            break
        nxt = torch.multinomial(d2 / d2.sum(), 1, generator=g).item()
        centers.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    c = torch.stack(centers)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=len(c)).unsqueeze(1)
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c)
    if len(c) < k:
        extra = x[torch.randint(n, (k - len(c),), generator=g)]
        c = torch.cat([c, extra + 1e-3 * x.std() * torch.randn(extra.shape, generator=g)])
    return c


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, cfg: TokenizerConfig):
        super().__init__()
        self.cfg, self.in_dim = cfg, in_dim
        self.encoder = _mlp([in_dim, *cfg.hidden, cfg.e_dim], cfg.dropout)
        self.decoder = _mlp([cfg.e_dim, *reversed(cfg.hidden), in_dim], cfg.dropout)
        self.quantizer = ResidualQuantizer(cfg.levels, cfg.codebook_size, cfg.e_dim, cfg.shared_codebook, cfg.beta)

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        z_q, idx, vq = self.quantizer(z)
        return self.decoder(z_q), z_q, idx, vq

    def losses(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        recon, z_q, idx, vq = self(x)
        self.last_indices = idx
        out = {"recon": sq_err(recon, x), "vq": vq}
        if self.cfg.align_on == "reconstruction":
            out["align"] = sq_err(recon, t)
        else:
            out["align"] = sq_err(z_q, self.encoder(t))
        out["total"] = out["recon"] + out["vq"] + self.cfg.align_weight * out["align"]
        return out

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """Voken indices ``(n, L)`` of image embeddings (eval mode, deterministic)."""
        was = self.training
        self.eval()
        out = torch.cat([self.quantizer(self.encoder(x[s : s + batch_size]))[1] for s in range(0, len(x), batch_size)])
        self.train(was)
        return out

    @torch.no_grad()
    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        out = self.decoder(self.quantizer.decode_indices(idx))
        self.train(was)
        return out


def _init_codebooks(model: RQVAE, x: torch.Tensor, cfg: TokenizerConfig) -> None:
    """Codebooks from the encoded training rows: k-means per level (``kmeans_init``) or rows drawn at random."""
    model.eval()
    with torch.no_grad():
        z = model.encoder(x)
        if cfg.kmeans_init:
            model.quantizer.kmeans_init(z, seed=cfg.seed)
            return
        g = torch.Generator().manual_seed(cfg.seed)
        for b in range(model.quantizer.codebooks.shape[0]):
            model.quantizer.codebooks.data[b] = z[torch.randint(len(z), (cfg.codebook_size,), generator=g)]


@torch.no_grad()
def _validate(model: RQVAE, x: torch.Tensor, t: torch.Tensor, cfg: TokenizerConfig) -> dict:
    """Validation loss terms, codebook entries in use per level (``used_l1``...), and ``select``: the decoder-side
    terms only (the VQ term is measured in latent units whose scale drifts while the encoder trains, so it is not
    comparable across epochs)."""
    model.eval()
    val = {k: v.item() for k, v in model.losses(x, t).items()}
    val |= {f"used_l{lvl + 1}": len(torch.unique(c)) for lvl, c in enumerate(model.encode(x).T)}
    return val | {"select": val["recon"] + cfg.align_weight * val["align"]}


def train_tokenizer(
    train_rows: tuple[np.ndarray, np.ndarray],
    val_rows: tuple[np.ndarray, np.ndarray],
    cfg: TokenizerConfig = TokenizerConfig(),
    progress: bool = True,
):
    """Train on ``(image_emb, caption_emb)`` row pairs; keep the epoch with the lowest validation
    reconstruction + alignment loss (``val_select``).

    Returns ``(model, history)``: history has one dict per epoch with the train/val loss terms and
    the number of codebook entries in use per level on the validation rows.
    """
    torch.manual_seed(cfg.seed)
    x_tr, t_tr = (torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in train_rows)
    x_va, t_va = (torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in val_rows)
    model = RQVAE(x_tr.shape[1], cfg)
    _init_codebooks(model, x_tr, cfg)
    # one flat buffer for all parameters: the same updates as AdamW(foreach=True), in far fewer operations
    opt = kernels.FlatAdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    best, history = BestState(min_delta=1e-6), []
    bar = tqdm(range(cfg.epochs), desc="rq-vae", disable=not progress)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x_tr), generator=g)
        sums: dict[str, float] = {}
        counts = torch.zeros(model.quantizer.codebooks.shape[:2], dtype=torch.long)
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            if len(b) < 2:
                continue
            loss = model.losses(x_tr[b], t_tr[b])
            opt.zero_grad()
            loss["total"].backward()
            opt.step()
            for k, v in loss.items():
                sums[k] = sums.get(k, 0.0) + v.item() * len(b)
            for level, i in enumerate(model.last_indices.T):
                counts[0 if cfg.shared_codebook else level] += torch.bincount(i, minlength=cfg.codebook_size)
        moved = model.quantizer.restart_dead(counts, g) if cfg.restart_dead_codes and epoch < cfg.epochs - 1 else 0
        row = {"epoch": epoch + 1, "restarted_codes": moved, **{f"train_{k}": v / len(perm) for k, v in sums.items()}}
        val = _validate(model, x_va, t_va, cfg)
        row |= {f"val_{k}": v for k, v in val.items()}
        history.append(row)
        best.update(model, -val["select"])  # lower is better; the selection term is in _validate
        bar.set_postfix(
            val=f"{val['select']:.4f}", recon=f"{val['recon']:.4f}", align=f"{val['align']:.4f}", refresh=False
        )
        if best.since >= cfg.patience:
            break
    model.load_state_dict(best.state)
    return model.eval(), history


def save(model: RQVAE, directory: str | Path, extra: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "rqvae.pt")
    (directory / "rqvae_config.json").write_text(
        json.dumps({"in_dim": model.in_dim, "tokenizer": asdict(model.cfg), **(extra or {})}, indent=1)
    )
    return directory


def load(directory: str | Path) -> RQVAE:
    directory = Path(directory)
    meta = json.loads((directory / "rqvae_config.json").read_text())
    model = RQVAE(meta["in_dim"], TokenizerConfig(**meta["tokenizer"]))
    model.load_state_dict(torch.load(directory / "rqvae.pt", weights_only=True))
    return model.eval()
