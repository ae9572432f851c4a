"""The frozen lower layers of a decoder generator, run once for the generative stage (``lm_cache_frozen``).

With ``lm_train_layers = k``, a causal LM's input embeddings and lower blocks never change, and a Llama-family LM
has no dropout in them, so every generative epoch would feed them the same training sequences (prompt + the
image's vokens) and get the same states. :class:`FrozenBottom` runs the lower blocks over every training pair once,
keeps the states entering the top ``k`` blocks, and afterwards a training step runs only the top blocks and the
head on them. The positive's log-probability is the same function as
:meth:`~avg_lib.models.generator.base.VokenGenerator.sequence_logprob` after
:meth:`~avg_lib.models.generator.decoder.DecoderGenerator.encode` (one pass over prompt + vokens instead of a prompt
pass and a voken pass), equal up to float rounding; the tests check it and its gradients on a tiny Llama.

Only the generative stage uses it: the discriminative stage scores new negatives every step and mines them with
the whole model. The states take ``pairs × tokens × width × 4`` bytes (about 0.2 GB for the emoji training set on
SmolLM2-135M).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from avg_lib.progress import tqdm

LLAMA_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")  # what the layer swap below relies on


def check_cacheable(lm, k: int) -> None:
    """Refuse an LM whose lower layers cannot be cached: not Llama-shaped (rotary positions, a list of blocks, a
    final norm), no frozen lower layers (``k`` = 0), or dropout anywhere (frozen layers would not repeat)."""
    base = lm.base_model
    missing = [p for p in LLAMA_PARTS if not hasattr(base, p)]
    if missing or not isinstance(base.layers, torch.nn.ModuleList):
        raise ValueError(
            f"lm_cache_frozen: {type(lm).__name__} is not a Llama-family LM (no {', '.join(missing) or 'layers list'}"
            "); set lm_cache_frozen to false"
        )
    if not 0 < k < len(base.layers):
        raise ValueError(f"lm_cache_frozen needs frozen lower layers: lm_train_layers 1 to {len(base.layers) - 1}")
    drops = dropout_settings(lm)
    if drops:
        raise ValueError(f"lm_cache_frozen: the LM has dropout ({drops}), so its frozen layers do not repeat")


def dropout_settings(lm) -> dict:
    """The LM config's positive dropout rates (``*dropout*``, ``*pdrop*``): empty where training repeats
    decoding's arithmetic."""
    return {n: v for n, v in lm.config.to_dict().items() if ("dropout" in n or "pdrop" in n) and _positive(v)}


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


@contextmanager
def _only_blocks(base, blocks: slice, norm: bool = True):
    """``base`` runs only ``blocks`` of its layers (and, with ``norm`` false, no final norm) inside the block."""
    layers, final = base.layers, base.norm
    base.layers = torch.nn.ModuleList(list(layers)[blocks])
    if not norm:
        base.norm = torch.nn.Identity()
    try:
        yield
    finally:
        base.layers, base.norm = layers, final


class FrozenBottom:
    """The states entering the top ``lm_train_layers`` blocks for each training pair ``(texts[i], codes[i])``
    (prompt + the ``D`` vokens, padding stripped), and :meth:`sequence_logprob` from them."""

    def __init__(self, gen, texts: list[str], codes, batch_size: int = 64, progress: bool = False):
        self.gen, self.base = gen, gen.lm.base_model  # check_cacheable passed when ``gen`` was built
        self.split = len(self.base.layers) - gen.cfg.lm_train_layers
        self.codes = torch.as_tensor(codes, dtype=torch.long, device=gen.lm.device)
        self.states: list[torch.Tensor] = []
        steps = range(0, len(texts), batch_size)
        with torch.no_grad(), _only_blocks(self.base, slice(0, self.split), norm=False):
            for s in tqdm(steps, desc="frozen layers, once", disable=not progress):
                ids, mask = self._inputs(texts[s : s + batch_size], self.codes[s : s + batch_size])
                h = self.base(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
                self.states += [row[m.bool()].clone() for row, m in zip(h.last_hidden_state, mask)]

    def _inputs(self, texts, codes):
        b = self.gen.prompts(texts)
        vokens = codes + self.gen.voken_offset
        ids = torch.cat([b["input_ids"], vokens], dim=1)
        return ids, torch.cat([b["attention_mask"], torch.ones_like(vokens)], dim=1)

    def sequence_logprob(self, rows) -> torch.Tensor:
        """log P(codes + end | prompt) of the training pairs ``rows``: the top blocks and the head on the kept
        states, padded on the left as the prompts are."""
        states = [self.states[i] for i in rows]
        width = max(len(h) for h in states)
        h = torch.stack([F.pad(x, (0, 0, width - len(x), 0)) for x in states])
        mask = torch.stack([torch.arange(width) >= width - len(x) for x in states]).long().to(h.device)
        depth = self.gen.depth
        with _only_blocks(self.base, slice(self.split, None)):
            out = self.gen.lm(
                inputs_embeds=h,
                attention_mask=mask,
                position_ids=_positions(mask),
                use_cache=False,
                logits_to_keep=depth + 1,
            )
        lp = F.log_softmax(out.logits / self.gen.cfg.temperature, dim=-1)
        codes = self.codes[torch.as_tensor(rows, device=h.device)]
        target = torch.cat([codes + self.gen.voken_offset, torch.full_like(codes[:, :1], self.gen.eos_id)], dim=1)
        return lp.gather(2, target.unsqueeze(2)).squeeze(2).sum(1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only (left padding), as :meth:`DecoderGenerator.encode` gives them."""
    return (mask.cumsum(-1) - 1).clamp_min(0)
