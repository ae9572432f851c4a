"""Matrix products of ``nn.Linear`` layers on the CPU through oneDNN instead of torch's default BLAS.

torch's CPU build runs float32 matrix products through MKL, which on AMD processors dispatches its AVX2
kernels even where the CPU has AVX-512. oneDNN (also inside torch, ``torch.ops.mkldnn._linear_pointwise``)
dispatches on the instruction set alone. On a 2-core AMD EPYC with AVX-512, one (3200 x 256) by (256 x 1024)
layer ran forward and backward in 17.6 ms against 27.7 ms (forward alone 4.0 against 9.4 ms), and one AVG
generator trained in 57 s against 80 s (docs/run_time.md). With AVX2 only, oneDNN was about 10% slower than MKL
per forward + backward, so :func:`resolve` picks it only where torch reports AVX-512.

The arithmetic is the same (float32 products and sums); the order in which a product's terms are added differs,
so results move by float rounding, as they do between CPUs. :class:`Linear` is an ``nn.Linear`` (same
parameters and state dict) whose forward uses oneDNN when built with ``onednn=True``; everything else (autocast,
other devices, other dtypes) takes ``torch.nn.functional.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("auto", "mkl", "onednn")


def available() -> bool:
    """Whether this torch build has oneDNN's linear operator."""
    return hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


def resolve(mode: str) -> bool:
    """Whether ``mode`` (``"auto"``, ``"mkl"`` or ``"onednn"``) means oneDNN on the CPU running it: ``auto`` where torch
    reports AVX-512 (``torch.backends.cpu.get_cpu_capability()``) and the operator exists."""
    if mode not in MODES:
        raise ValueError(f"cpu_matmul must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "mkl":
        return False
    if mode == "onednn":
        if not available():
            raise RuntimeError("cpu_matmul is 'onednn' but this torch build has no oneDNN linear operator")
        return True
    return available() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _onednn(x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``x @ w.T + b`` with every product (forward, and both gradients) through oneDNN."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _onednn(x.reshape(-1, x.shape[-1]).contiguous(), w, b).reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1]).contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # grad @ w
            gx = _onednn(g2, w.t().contiguous(), None).reshape(x.shape)
        if ctx.needs_input_grad[1]:  # grad.T @ x
            gw = _onednn(g2.t().contiguous(), x.reshape(-1, x.shape[-1]).t().contiguous(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, onednn: bool = False) -> torch.Tensor:
    """``F.linear(x, w, b)``; with ``onednn``, a float32 CPU product outside autocast goes through oneDNN."""
    if not (
        onednn
        and x.device.type == "cpu"
        and x.dtype == w.dtype == torch.float32
        and x.dim() >= 2
        and not torch.is_autocast_enabled("cpu")
    ):
        return F.linear(x, w, b)
    if not torch.is_grad_enabled() or not (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        return _onednn(x.reshape(-1, x.shape[-1]).contiguous(), w.contiguous(), b).reshape(*x.shape[:-1], w.shape[0])
    return _OneDNNLinear.apply(x, w.contiguous(), b)


class Linear(nn.Linear):
    """``nn.Linear`` whose product goes through oneDNN when ``onednn`` (see :func:`linear`); same state dict."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, onednn: bool = False):
        super().__init__(in_features, out_features, bias)
        self.onednn = onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.onednn)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", onednn=True" if self.onednn else "")


class FlatAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW(foreach=True)`` over one flat buffer per parameter group: the parameters (and their
    gradients) become views into it, so each update is a dozen operations on one tensor instead of a dozen per
    parameter (on a CPU the ``foreach`` kernels loop over the tensors one by one). Every element gets the same
    operations as with separate tensors, so the updates are identical, bit for bit (tests/test_kernels.py).
    :meth:`zero_grad` zeroes the gradient buffers in place (they must stay the parameters' views)."""

    def __init__(self, params, **kwargs):
        groups = list(params)
        if not groups or not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        flat = []
        for group in groups:
            ps = [p for p in group["params"] if p.requires_grad]
            with torch.no_grad():
                data = torch.cat([p.detach().reshape(-1) for p in ps]) if ps else torch.zeros(0)
            grad = torch.zeros_like(data)
            offset = 0
            for p in ps:
                n = p.numel()
                p.data = data[offset : offset + n].view_as(p)
                p.grad = grad[offset : offset + n].view_as(p)
                offset += n
            buf = nn.Parameter(data)
            buf.grad = grad
            flat.append({**{k: v for k, v in group.items() if k != "params"}, "params": [buf]})
        super().__init__(flat, foreach=True, **kwargs)

    def zero_grad(self, set_to_none: bool = False) -> None:
        for group in self.param_groups:
            for buf in group["params"]:
                buf.grad.zero_()
