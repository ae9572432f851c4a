import torch

from avg_lib.models.selection import BestState


def test_best_state_keeps_a_copy_of_the_best_and_counts_patience():
    model = torch.nn.Linear(1, 1)
    best = BestState()
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert best.update(model, (10.0, 30.0))
    with torch.no_grad():
        model.weight.fill_(2.0)  # the kept state is a copy, not the live weights
    assert not best.update(model, (10.0, 29.0)) and best.since == 1
    assert not best.update(model, (9.0, 99.0)) and best.since == 2
    assert best.state["weight"].item() == 1.0
    assert best.update(model, (10.0, 31.0)) and best.since == 0 and best.state["weight"].item() == 2.0


def test_min_delta_requires_a_real_improvement():
    model = torch.nn.Linear(1, 1)
    best = BestState(min_delta=1e-3)
    assert best.update(model, -1.0)
    assert not best.update(model, -1.0 + 5e-4)
    assert best.update(model, -1.0 + 2e-3)
