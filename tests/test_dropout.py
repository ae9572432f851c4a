import pytest
import torch
from torch import nn

from avg_lib.models.dropout import Dropout, dropout
from avg_lib.tools.bench import main as benchmark_main


def test_keeps_about_one_minus_p_and_scales_the_kept_values():
    x = torch.ones(1000, 1000)
    for p in (0.1, 0.3, 0.5):
        y = dropout(x, p)
        kept = y != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 0.005
        assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))


def test_identity_when_off_and_zero_at_p_one():
    x = torch.randn(7, 5)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="probability"):
            dropout(x, bad)
        with pytest.raises(ValueError, match="probability"):
            Dropout(bad)


def test_masks_follow_torch_manual_seed():
    x = torch.ones(64, 32)
    torch.manual_seed(3)
    a, b = dropout(x, 0.3), dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), a) and torch.equal(dropout(x, 0.3), b)
    assert not torch.equal(a, b)  # successive calls draw new masks


def test_gradient_is_the_mask_and_shapes_are_kept():
    x = torch.randn(8, 6, 4, requires_grad=True)
    xt = x.transpose(0, 2)  # non-contiguous input
    y = dropout(xt, 0.4)
    y.sum().backward()
    assert y.shape == xt.shape
    assert torch.allclose(x.grad.transpose(0, 2), (y != 0).float() / 0.6)


def test_module_is_a_drop_in_for_nn_dropout():
    m = nn.Sequential(nn.Linear(4, 4), Dropout(0.2))
    assert list(m.state_dict()) == list(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2)).state_dict())
    assert "p=0.2" in repr(m)
    x = torch.randn(3, 4)
    m.eval()
    assert torch.equal(m(x), m[0](x))


def test_benchmark_cli_prints_a_ratio_table(capsys):
    benchmark_main(["dropout", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "speedup" in out and "RQ-VAE training step" in out and "voken decoder" in out
    with pytest.raises(SystemExit):
        benchmark_main(["--help"])
