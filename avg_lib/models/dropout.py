"""Dropout with a faster mask on the CPU; the same distribution as ``torch.nn.Dropout``.

On the 2-core CPU, ``torch.nn.functional.dropout`` (Bernoulli sampling with torch's Mersenne
Twister) was the most expensive single operation of generator training: ``avg bench
dropout`` measured 3.6 ms for a (1400, 256) activation against 0.61 ms here (x5.9), and a forward +
backward of the voken decoder 1.32x faster, an RQ-VAE training step 1.14x. Here the mask comes from 16 random
bits per element drawn with numpy's PCG64: an element is kept when its bits are at least
``round(p * 65536)``, i.e. with probability ``1 - p`` up to 1/65536, and kept values are scaled by
``1 / (1 - p)`` as in torch. Each call seeds PCG64 from torch's global generator, so
``torch.manual_seed`` governs the masks and a seeded run repeats exactly. Tensors on an accelerator
use torch's own dropout (generated on the device, no host copy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_BITS = 65536


def _check(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    return p


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by ``1 / (1 - p)``."""
    _check(p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    seed = int(torch.randint(0, 2**62, (1,)))
    bits = np.random.Generator(np.random.PCG64(seed)).bytes(2 * x.numel())
    keep = np.frombuffer(bits, dtype=np.uint16).reshape(x.shape) >= round(p * _BITS)
    return x * torch.from_numpy(keep).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Drop-in for ``torch.nn.Dropout`` using :func:`dropout` (no parameters: state dicts are unchanged)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = _check(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
