"""avg_lib.models.kernels: oneDNN products for nn.Linear on the CPU give what F.linear gives (up to float rounding),
forward and backward, with the same parameters; the mode resolves as documented."""

import pytest
import torch
import torch.nn.functional as F

from avg_lib.models import kernels
from avg_lib.models.generator.config import GeneratorConfig

needs_onednn = pytest.mark.skipif(not kernels.available(), reason="this torch build has no oneDNN linear operator")


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 16), (3, 5, 16), (2, 3, 4, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_f_linear_forward_and_backward(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = torch.randn(24, 16, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], 24, generator=g)
    got = kernels.linear(x, w, b, onednn=True)
    got.backward(grad)
    mine = [t.grad.clone() for t in (x, w, b) if t is not None]
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    want = F.linear(x, w, b)
    want.backward(grad)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for m, t in zip(mine, [t for t in (x, w, b) if t is not None]):
        torch.testing.assert_close(m, t.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_only_the_inputs_that_need_a_gradient_get_one_and_no_grad_takes_the_plain_product():
    x, w = torch.randn(5, 8), torch.randn(3, 8, requires_grad=True)
    kernels.linear(x, w, None, onednn=True).sum().backward()  # x is data: only w gets a gradient
    assert x.grad is None and w.grad is not None
    with torch.no_grad():
        out = kernels.linear(x, w, None, onednn=True)
    assert not out.requires_grad
    torch.testing.assert_close(out, x @ w.detach().T, rtol=1e-5, atol=1e-5)


def test_linear_layer_keeps_nn_linears_state_dict_and_falls_back_where_onednn_does_not_apply():
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 4)
    ours = kernels.Linear(8, 4, onednn=kernels.available())
    ours.load_state_dict(plain.state_dict())  # same names and shapes
    assert set(ours.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 8)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: torch's own product, in bfloat16
        assert ours(x).dtype == torch.bfloat16
    assert torch.equal(ours.double()(x.double()), plain.double()(x.double()))  # float64: F.linear itself


def test_modes_resolve_as_documented(monkeypatch):
    assert kernels.resolve("mkl") is False
    with pytest.raises(ValueError, match="cpu_matmul must be one of"):
        kernels.resolve("blas")
    monkeypatch.setattr(kernels, "available", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert kernels.resolve("auto") is False and kernels.resolve("onednn") is True
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert kernels.resolve("auto") is True
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert kernels.resolve("auto") is False
    with pytest.raises(RuntimeError, match="no oneDNN linear operator"):
        kernels.resolve("onednn")
    with pytest.raises(ValueError, match="cpu_matmul must be"):
        GeneratorConfig(cpu_matmul="fast")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 3))


def _train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_flat_adamw_updates_exactly_like_adamw_with_groups_and_a_frozen_parameter():
    def groups(m):
        return [{"params": list(m[0].parameters()), "lr": 1e-2}, {"params": list(m[3].parameters()), "lr": 3e-3}]

    ref, flat = _model(), _model()
    for m in (ref, flat):
        m[1].weight.requires_grad_(False)  # frozen: left out of the flat buffer, never updated
    want = _train(ref, torch.optim.AdamW(groups(ref), weight_decay=0.01, foreach=True), 25)
    opt = kernels.FlatAdamW(groups(flat), weight_decay=0.01)
    got = _train(flat, opt, 25)
    assert torch.equal(got, want)
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 3e-3] and len(opt.param_groups[0]["params"]) == 1
    assert flat[1].weight.grad is None and torch.equal(flat[1].weight, ref[1].weight)
    # the parameters stay views of the buffer: a state dict loaded into the model is what the optimizer updates
    flat.load_state_dict(ref.state_dict())
    assert flat[0].weight.data_ptr() == opt.param_groups[0]["params"][0].data_ptr()


def test_flat_adamw_resumes_from_its_state_dict_like_an_uninterrupted_run():
    whole = _model()
    want = _train(whole, kernels.FlatAdamW(whole.parameters(), lr=1e-2), 20)
    first = _model()
    opt = kernels.FlatAdamW(first.parameters(), lr=1e-2)
    _train(first, opt, 10)
    second = _model()
    second.load_state_dict(first.state_dict())
    opt2 = kernels.FlatAdamW(second.parameters(), lr=1e-2)
    opt2.load_state_dict(opt.state_dict())
    g = torch.Generator().manual_seed(1)
    for _ in range(10):  # the first ten batches were the first run's
        torch.randn(8, 6, generator=g)
    for _ in range(10):
        x = torch.randn(8, 6, generator=g)
        loss = second(x).square().mean()
        opt2.zero_grad()
        loss.backward()
        opt2.step()
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in second.parameters()]), want)
