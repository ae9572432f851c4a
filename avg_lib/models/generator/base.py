"""The interface every generator backend implements, and the codebook initialisation they share."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avg_lib.models.generator.config import GeneratorConfig
from avg_lib.progress import tqdm
from avg_lib.retrieval.trie import BeamResult, VokenTrie, beam_search


def project_codebook(codebook: np.ndarray, width: int, target_std: float, seed: int = 0) -> torch.Tensor:
    """Map codebook vectors ``(K, e)`` to ``(K, width)`` (random orthonormal columns: an isometry when the
    codebook is narrower than the model, a random projection when wider), centred and rescaled to
    ``target_std`` per coordinate so the new tokens look like the model's other embeddings."""
    c = torch.as_tensor(np.asarray(codebook), dtype=torch.float32)
    e = c.shape[1]
    if e != width:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(max(width, e), min(width, e), generator=g))  # orthonormal columns
        c = c @ (q.T if e < width else q)
    c = c - c.mean(0, keepdim=True)
    return c / (c.std() + 1e-8) * target_std


class VokenGenerator(nn.Module):
    """Shared logic. Subclasses provide ``encode(texts) -> ctx`` (whatever the decoder needs about the
    texts), ``repeat(ctx, n)`` (each row ``n`` times, for beams and negatives) and
    ``decoder_logits(ctx, prefix)``."""

    voken_offset: int
    eos_id: int

    def __init__(self, codebook_size: int, depth: int, cfg: GeneratorConfig):
        super().__init__()
        self.codebook_size, self.depth, self.cfg = codebook_size, depth, cfg

    # --- to implement -------------------------------------------------------------------------
    def encode(self, texts: list[str]):
        raise NotImplementedError

    def repeat(self, ctx, n: int):
        raise NotImplementedError

    def decoder_logits(self, ctx, prefix: torch.Tensor) -> torch.Tensor:
        """Logits ``(rows, t + 1, vocab)`` at every position for input = start token + ``prefix`` (voken values)."""
        raise NotImplementedError

    def decode_step(self, ctx):
        """A ``step(prefix, src)`` function for :func:`avg_lib.retrieval.trie.beam_search` (last-position log-probs;
        ``ctx`` = :meth:`repeat` of :meth:`encode` over the beams). Its first call has one row per text."""
        raise NotImplementedError

    def precompute(self, texts: list[str]) -> None:
        """Work a deployment does once per text collection, outside query latency (nothing by default;
        the MiniLM backend with a frozen encoder caches the text states, like the two-tower features)."""

    def frozen_positives(self, texts: list[str], codes, progress: bool = False):
        """What the generative stage computes once for its training pairs: ``None`` (every step runs the whole
        model; the default), or an object whose ``sequence_logprob(rows)`` scores the pairs ``rows`` from it
        (the decoder backend with ``lm_cache_frozen``, :class:`avg_lib.models.generator.frozen.FrozenBottom`)."""
        return None

    def parameter_groups(self) -> list[dict]:
        """The optimizer's groups: a fine-tuned pretrained encoder (``encoder.*``) at ``encoder_lr``, the rest at
        ``lr``."""
        trained = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        enc = [p for n, p in trained if n.startswith("encoder.")]
        other = [p for n, p in trained if not n.startswith("encoder.")]
        return [{"params": other, "lr": self.cfg.lr}] + ([{"params": enc, "lr": self.cfg.encoder_lr}] if enc else [])

    # --- shared -------------------------------------------------------------------------------
    def log_probs(self, ctx, prefix: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.decoder_logits(ctx, prefix) / self.cfg.temperature, dim=-1)

    def sequence_logprob(self, ctx, codes: torch.Tensor) -> torch.Tensor:
        """Sum of token log-probabilities of ``codes`` (rows, D) followed by end-of-sequence."""
        lp = self.log_probs(ctx, codes)  # (rows, D + 1, vocab)
        target = torch.cat([codes + self.voken_offset, torch.full_like(codes[:, :1], self.eos_id)], dim=1)
        return lp.gather(2, target.unsqueeze(2)).squeeze(2).sum(1)

    def loss(self, texts: list[str], codes: torch.Tensor) -> torch.Tensor:
        """Token-level cross-entropy (mean over the D + 1 target tokens and the batch)."""
        return -self.sequence_logprob(self.encode(texts), codes).mean() / (self.depth + 1)

    @torch.no_grad()
    def retrieve(
        self,
        texts: list[str],
        trie: VokenTrie,
        num_beams: int | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> BeamResult:
        """Ranked gallery items for each text: constrained beam search, batched over texts and beams."""
        if trie.depth != self.depth:
            raise ValueError(f"trie depth {trie.depth} != generator depth {self.depth}")
        was = self.training
        if was:  # a model already in eval mode is left as it is: switching every module costs about 1 ms
            self.eval()
        parts = []
        for s in tqdm(range(0, len(texts), batch_size), desc="decode", disable=not progress):
            chunk = texts[s : s + batch_size]
            parts.append(self.search(self.encode(chunk), len(chunk), trie, num_beams))
        if was:
            self.train()
        return BeamResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("items", "scores", "codes")))

    @torch.no_grad()
    def search(self, ctx, n: int, trie: VokenTrie, num_beams: int | None = None) -> BeamResult:
        """Constrained beam search for ``n`` texts already encoded (``ctx``: :meth:`encode` of them)."""
        if trie.depth != self.depth:
            raise ValueError(f"trie depth {trie.depth} != generator depth {self.depth}")
        num_beams = num_beams or self.cfg.num_beams
        step = self.decode_step(self.repeat(ctx, num_beams))
        device = next(self.parameters()).device
        return beam_search(step, n, trie, num_beams, self.voken_offset, self.eos_id, device=device)

    def mining_shares_prompts(self) -> bool:
        """Whether the discriminative stage may mine a batch's negatives from the training pass's own encoding
        of its texts (:meth:`detach`) instead of encoding them again: only where that encoding is exactly what
        decoding would compute (no dropout, no autocast). False by default."""
        return False

    def detach(self, ctx):
        """``ctx`` cut from the autograd graph (for :meth:`search`); backends that share prompts implement it."""
        raise NotImplementedError
