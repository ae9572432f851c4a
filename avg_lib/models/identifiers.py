"""Unique voken identifiers: collision detection, one explicit resolution rule, and quality statistics.

Two images collide when the tokenizer gives them the same ``L`` vokens. The authors' code neither
detects nor resolves this, and counts a generated string as a hit when it equals the target's, so
a collided neighbour inflates recall. Here:

**Rule.** If any two images collide, every identifier gets ``m`` extra positions (depth ``L + m``).
Within a group of images sharing the same ``L`` vokens, the members are ordered by their
quantisation error ``||z - z_q||`` (best represented first; ties by item id), and the extra
positions spell that rank ``0, 1, 2, ...`` in base ``K`` (most significant first). Images without a
collision get all zeros. The extra positions reuse the voken vocabulary; ``m`` is the smallest
number with ``K**m >= `` the largest group, so ``m = 1`` unless a group is larger than ``K``. The
result depends only on the set of (id, vokens, error) triples, not on their order, and every
identifier is unique.

Evaluation uses the resolved identifiers: a generated identifier names exactly one image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


@dataclass
class Identifiers:
    ids: list[str]  # item ids, dataset order
    raw: np.ndarray  # (n, L) vokens from the tokenizer
    codes: np.ndarray  # (n, L) or (n, L + 1): unique identifiers after resolution
    codebook_size: int  # distinct token values per position (the generator's voken vocabulary)
    scheme: str = "rq"  # how the identifiers were made: rq | atomic | random | hkmeans (avg_lib.models.baselines)

    @property
    def depth(self) -> int:
        return self.codes.shape[1]

    @property
    def disambiguated(self) -> bool:
        return self.codes.shape[1] > self.raw.shape[1]

    def subset(self, index) -> Identifiers:
        index = np.asarray(index)
        return Identifiers(
            [self.ids[i] for i in index], self.raw[index], self.codes[index], self.codebook_size, self.scheme
        )


def collision_groups(codes: np.ndarray) -> list[np.ndarray]:
    """Row-index groups (size > 1) of identical rows."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    return [np.nonzero(inverse == g)[0] for g in np.nonzero(counts > 1)[0]]


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of items whose identifier is shared with at least one other item."""
    groups = collision_groups(codes)
    return float(sum(len(g) for g in groups)) / max(len(codes), 1)


def resolve_collisions(
    ids: list[str], raw: np.ndarray, error: np.ndarray, codebook_size: int, scheme: str = "rq"
) -> Identifiers:
    """Apply the module's rule; see the module docstring."""
    raw = np.asarray(raw, dtype=np.int64)
    if len(ids) != len(raw) or len(error) != len(raw):
        raise ValueError("ids, raw codes and errors must have the same length")
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    groups = collision_groups(raw)
    if not groups:
        return Identifiers(list(ids), raw, raw.copy(), codebook_size, scheme)
    if codebook_size < 2:
        raise ValueError("codebook_size must be at least 2")
    largest = max(len(g) for g in groups)
    m = 1
    while codebook_size**m < largest:
        m += 1
    rank = np.zeros(len(raw), dtype=np.int64)
    for g in groups:
        order = sorted(g, key=lambda i: (float(error[i]), ids[i]))
        rank[order] = np.arange(len(g))
    digits = [(rank // codebook_size**p) % codebook_size for p in range(m - 1, -1, -1)]
    codes = np.concatenate([raw, np.stack(digits, axis=1)], axis=1)
    assert not collision_groups(codes)
    return Identifiers(list(ids), raw, codes, codebook_size, scheme)


def entropy_bits(codes: np.ndarray) -> float:
    """Shannon entropy (bits) of the identifier distribution; log2(n) when all are unique."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def level_stats(codes: np.ndarray, codebook_size: int) -> list[dict]:
    """Per level: codebook entries used, fraction used, and perplexity (effective number of codes)."""
    out = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / counts.sum()
        out.append(
            {
                "level": level + 1,
                "used": int((counts > 0).sum()),
                "usage": float((counts > 0).mean()),
                "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            }
        )
    return out


def prefix_groups(codes: np.ndarray, depth: int) -> Counter:
    """How many items share each prefix of length ``depth`` (for the visualisation notebook)."""
    return Counter(map(tuple, np.asarray(codes)[:, :depth].tolist()))
