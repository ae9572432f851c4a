"""A generative re-ranker: a causal language model reads the query and a candidate image's vokens, and a head on
the last token scores the pair (the paper's Table 1 re-ranker role, SEED-LLaMA-8B + LoRA there).

The input is ``prompt(query) + the candidate's voken tokens``; the voken tokens are added to the LM's vocabulary
with embeddings initialised from the tokenizer's codebook, as in the decoder generator backend
(:class:`avg_lib.generator.DecoderGenerator`, whose prompt handling this reuses: the query's prompt runs once
and its key/value cache is shared by all K candidates). A small MLP on the last position's hidden state gives
the score. :meth:`LMReranker.fit` trains the LM and the head on groups of one positive and ``negatives``
candidates from AVG's beams, with a softmax cross-entropy over each group (the positive first), on the split it
is given: a re-ranker here learns on validation, so AVG's beams on its own training captions (which it has
memorised) never teach it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .generator import GeneratorConfig, build_generator
from .progress import tqdm


@dataclasses.dataclass(frozen=True)
class LMRerankConfig:
    lm_path: str | None = None  # a local causal LM directory; None = the offline SmolLM2-135M-Instruct
    prompt: str = "Caption: {text}\nImage:"  # the candidate's vokens follow it
    negatives: int = 7  # per positive in a training group (the paper: 7, from the retriever's top 100)
    epochs: int = 1
    batch_size: int = 8  # queries per step (each with 1 + negatives candidates)
    lr: float = 1e-4  # the LM's learning rate
    head_lr: float = 1e-3
    seed: int = 0


class LMReranker:
    """Scores each (query, candidate) pair with a causal LM and a head on its last token (see the module)."""

    name = "lm"

    def __init__(self, codebook_size: int, depth: int, codebooks: np.ndarray | None, cfg: LMRerankConfig):
        self.cfg = cfg
        gen_cfg = GeneratorConfig(backend="decoder", lm_path=cfg.lm_path, prompt=cfg.prompt, seed=cfg.seed)
        self.gen = build_generator(codebook_size, depth, gen_cfg, codebooks)  # the LM with voken tokens, its prompts
        d = self.gen.lm.config.hidden_size
        torch.manual_seed(cfg.seed)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.history: list[dict] = []

    def _scores(self, texts: list[str], codes: torch.Tensor) -> torch.Tensor:
        """``(len(texts), G)`` scores of the ``G`` identifiers ``codes`` (len(texts), G, D) of each query."""
        gen = self.gen
        n, group, depth = codes.shape
        ctx = gen.repeat(gen.encode(texts), group)
        out = gen.after_prompts(ctx, codes.reshape(n * group, depth).to(ctx[2].device), model=gen.lm.base_model)
        return self.head(out.last_hidden_state[:, -1]).reshape(n, group)

    def fit(self, inputs, cand, targets: np.ndarray | None = None, progress: bool = False) -> LMReranker:
        """Train on ``inputs``' queries: each group is the query's image, then the first ``negatives`` other
        images among its candidates (repeating the last when the beams hold fewer)."""
        targets = np.asarray(inputs.targets if targets is None else targets)
        cfg, codes = self.cfg, np.asarray(inputs.gallery_codes)
        groups = np.empty((len(targets), 1 + cfg.negatives), dtype=np.int64)
        for i, (items, t) in enumerate(zip(cand.items, targets)):
            negs = [int(x) for x in items if x >= 0 and x != t][: cfg.negatives] or [int((t + 1) % len(codes))]
            groups[i] = [t, *negs, *[negs[-1]] * (cfg.negatives - len(negs))]
        params = [
            {"params": self.gen.parameters(), "lr": cfg.lr},
            {"params": self.head.parameters(), "lr": cfg.head_lr},
        ]
        opt = torch.optim.AdamW(params, foreach=True)
        rng = np.random.default_rng(cfg.seed)
        self.gen.train()
        self.head.train()
        for epoch in tqdm(range(cfg.epochs), desc="LM re-ranker", disable=not progress):
            order, total = rng.permutation(len(targets)), 0.0
            for s in range(0, len(order), cfg.batch_size):
                b = order[s : s + cfg.batch_size]
                scores = self._scores([inputs.texts[i] for i in b], torch.from_numpy(codes[groups[b]]))
                loss = F.cross_entropy(scores, torch.zeros(len(b), dtype=torch.long, device=scores.device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            self.history.append({"epoch": epoch + 1, "train_loss": total / len(order)})
        self.gen.eval()
        self.head.eval()
        return self

    @torch.no_grad()
    def score(self, inputs, cand, batch_size: int = 16) -> np.ndarray:
        codes = torch.from_numpy(np.asarray(inputs.gallery_codes)[np.maximum(cand.items, 0)])  # (n, K, D)
        out = [
            self._scores(inputs.texts[s : s + batch_size], codes[s : s + batch_size]).float().cpu()
            for s in range(0, len(cand.items), batch_size)
        ]
        return torch.cat(out).numpy()
