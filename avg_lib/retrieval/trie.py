"""Trie-constrained beam search over fixed-depth voken identifiers, batched over queries and beams.

:class:`VokenTrie` stores the gallery's identifiers ``(n, D)`` as one CSR table per depth: for
every node (a distinct prefix) the sorted next tokens and the child node each leads to. Because
all identifiers have the same depth, the tables are built once with ``np.unique`` and a decoding
step is a handful of tensor ops for all beams of all queries at once; nothing runs in Python per
beam or per step. (transformers' ``generate(prefix_allowed_tokens_fn=...)`` calls Python once per
beam per step; ``tests/test_trie.py`` checks that both return the same ranking.)

Scores follow transformers' beam search exactly: each step takes ``log_softmax`` over the model's
full output vocabulary, then keeps only the tokens the trie allows (no renormalisation), and a
hypothesis' score is the sum of its token log-probabilities, end-of-sequence included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


class VokenTrie:
    def __init__(self, codes: np.ndarray):
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) == 0:
            raise ValueError(f"codes must be a non-empty (n, depth) array, got shape {codes.shape}")
        self.depth = codes.shape[1]
        if codes.min() < 0:
            raise ValueError("codes must be non-negative voken values")
        node = np.zeros(len(codes), dtype=np.int64)  # node of each item at the current depth
        self.offsets, self.tokens, self.children = [], [], []
        radix = int(codes.max()) + 1
        packed = radix**self.depth < 2**63  # prefixes as one int64 each: a 1-D unique, ~50x faster at 10M items
        key = np.zeros(len(codes), dtype=np.int64)
        for t in range(self.depth):
            if packed:
                key = key * radix + codes[:, t]
                _, first, child = np.unique(key, return_index=True, return_inverse=True)
                tokens = codes[first, t]
            else:
                keys, first, child = np.unique(codes[:, : t + 1], axis=0, return_index=True, return_inverse=True)
                tokens = keys[:, t].copy()
            child = child.reshape(-1)
            parent = node[first]  # parent node of each new node (sorted by parent, token)
            n_parents = int(node.max()) + 1
            self.offsets.append(
                torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(parent, minlength=n_parents))]))
            )
            self.tokens.append(torch.from_numpy(np.ascontiguousarray(tokens)))
            self.children.append(torch.arange(len(first)))
            node = child
        if len(np.unique(node)) != len(codes):
            raise ValueError("identifiers are not unique; resolve collisions first (avg_lib.models.identifiers)")
        # most children any node has at each depth: the candidate table's width in beam search, known here
        # so a decoding step never waits for the device to say how wide this step's table must be
        self.max_children = [int((o[1:] - o[:-1]).max()) for o in self.offsets]
        self.leaf_item = torch.full((int(node.max()) + 1,), -1, dtype=torch.long)
        self.leaf_item[torch.from_numpy(node)] = torch.arange(len(codes))
        self.size = len(codes)

    def next_tokens(self, prefix) -> list[int]:
        """Tokens allowed after ``prefix`` (a sequence of voken values); [] when off the trie or complete."""
        node = 0
        for t, tok in enumerate(prefix):
            if t >= self.depth:
                return []
            lo, hi = int(self.offsets[t][node]), int(self.offsets[t][node + 1])
            j = lo + int(np.searchsorted(self.tokens[t][lo:hi].numpy(), tok))
            if j >= hi or int(self.tokens[t][j]) != tok:
                return []
            node = int(self.children[t][j])
        if len(prefix) >= self.depth:
            return []
        return self.tokens[len(prefix)][self.offsets[len(prefix)][node] : self.offsets[len(prefix)][node + 1]].tolist()

    def lookup(self, code) -> int:
        """Item index of a complete identifier, -1 if it is not in the trie."""
        code = list(code)
        if len(code) != self.depth:
            return -1
        node = 0
        for t, tok in enumerate(code):
            lo, hi = int(self.offsets[t][node]), int(self.offsets[t][node + 1])
            j = lo + int(np.searchsorted(self.tokens[t][lo:hi].numpy(), tok))
            if j >= hi or int(self.tokens[t][j]) != tok:
                return -1
            node = int(self.children[t][j])
        return int(self.leaf_item[node])

    def to(self, device) -> VokenTrie:
        for lst in (self.offsets, self.tokens, self.children):
            lst[:] = [x.to(device) for x in lst]
        self.leaf_item = self.leaf_item.to(device)
        return self


@dataclass
class BeamResult:
    items: torch.Tensor  # (n_queries, num_beams) item indices, best first; -1 where fewer hypotheses exist
    scores: torch.Tensor  # (n_queries, num_beams) sequence log-probabilities (-inf where items is -1)
    codes: torch.Tensor  # (n_queries, num_beams, depth) the generated voken values


StepFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@torch.no_grad()
def beam_search(
    step: StepFn,
    n_queries: int,
    trie: VokenTrie,
    num_beams: int,
    voken_offset: int,
    eos_id: int,
    device: str | torch.device = "cpu",
) -> BeamResult:
    """Constrained beam search for ``n_queries`` queries at once.

    ``step(prefix, src)`` gets the voken values generated so far, ``(rows, t)`` with rows grouped by
    query: one row per query at the first step (every beam starts from the same empty prefix, so it is
    computed once, not ``num_beams`` times), ``num_beams`` rows per query afterwards. From the second
    step on, ``src`` gives for each row the row of the previous step it extends (to reorder a key/value
    cache; ``None`` at the first step). It returns log-probabilities ``(rows, vocab)`` over the model's
    output vocabulary; voken value ``v`` is column ``voken_offset + v`` and end-of-sequence is ``eos_id``.
    """
    scores = torch.zeros(n_queries, 1, device=device)  # one live hypothesis per query at the start
    node = torch.zeros(n_queries, dtype=torch.long, device=device)
    prefix = torch.zeros(n_queries, 0, dtype=torch.long, device=device)
    queries = torch.arange(n_queries, device=device).unsqueeze(1)
    q_base = queries * num_beams
    src = None
    for t in range(trie.depth):
        beams = scores.shape[1]
        rows = n_queries * beams
        logp = step(prefix, src)
        lo, hi = trie.offsets[t][node], trie.offsets[t][node + 1]
        n_child = hi - lo
        width = trie.max_children[t]  # static: no host synchronisation per step
        j = lo.unsqueeze(1) + torch.arange(width, device=device)
        valid = torch.arange(width, device=device) < n_child.unsqueeze(1)
        j = torch.where(valid, j, lo.unsqueeze(1))
        tok, child = trie.tokens[t][j], trie.children[t][j]
        cand = scores.reshape(rows, 1) + logp.gather(1, tok + voken_offset)
        cand = cand.masked_fill(~valid, float("-inf")).reshape(n_queries, beams * width)
        k = min(num_beams, cand.shape[1])
        top, pos = cand.topk(k, dim=1)
        if k < num_beams:
            pad = torch.full((n_queries, num_beams - k), float("-inf"), device=device)
            top, pos = torch.cat([top, pad], 1), torch.cat([pos, pos[:, :1].expand(-1, num_beams - k)], 1)
        src = (queries * beams + pos // width).reshape(-1)
        pick = (pos % width).reshape(-1)
        node = child[src, pick]
        prefix = torch.cat([prefix[src], tok[src, pick].unsqueeze(1)], dim=1)
        scores = top
    scores = scores + step(prefix, src)[:, eos_id].reshape(n_queries, num_beams)
    scores, order = scores.sort(dim=1, descending=True)
    flat = (q_base + order).reshape(-1)
    items = trie.leaf_item[node[flat]].reshape(n_queries, num_beams)
    items = items.masked_fill(~torch.isfinite(scores), -1)
    return BeamResult(items, scores, prefix[flat].reshape(n_queries, num_beams, trie.depth))
