"""Model selection on validation, shared by every training loop (two-tower, tokenizer, generator,
one-tower): keep a copy of the state with the best key so far and count epochs since it improved."""

from __future__ import annotations

import copy


class BestState:
    """``update(model, key)`` after each validation; higher keys are better (tuples compare in order,
    e.g. ``(R@1, rSum)``). With ``min_delta`` (scalar keys only) an improvement must exceed it."""

    def __init__(self, min_delta: float = 0.0):
        self.min_delta = min_delta
        self.key = None
        self.state = None
        self.since = 0  # validations without an improvement (early-stopping patience)

    def update(self, model, key) -> bool:
        better = self.key is None or (key > self.key + self.min_delta if self.min_delta else key > self.key)
        if better:
            self.state, self.key, self.since = copy.deepcopy(model.state_dict()), key, 0
        else:
            self.since += 1
        return better
