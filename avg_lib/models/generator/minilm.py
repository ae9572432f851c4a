"""The offline default backend: the pretrained all-MiniLM-L6-v2 encoder (frozen) and a small Transformer
decoder over voken tokens that cross-attends to it."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avg_lib.models import kernels
from avg_lib.models.dropout import Dropout
from avg_lib.models.generator.base import VokenGenerator, project_codebook
from avg_lib.models.generator.config import GeneratorConfig, minilm_dir


class DecoderBlock(nn.Module):
    """Pre-norm Transformer decoder block whose cross-attention keys/values are computed once per text
    (:meth:`memory_kv`) and then shared by every beam and every step, instead of once per beam per step."""

    def __init__(self, d: int, heads: int, dropout: float, memory_dim: int | None = None, onednn: bool = False):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

        def lin(a, b):  # oneDNN products where the profile's cpu_matmul picks them (avg_lib.models.kernels)
            return kernels.Linear(a, b, onednn=onednn)

        self.qkv = lin(d, 3 * d)
        self.q = lin(d, d)
        self.kv = lin(memory_dim or d, 2 * d)  # text states (memory_dim wide) -> keys/values
        self.o1, self.o2 = lin(d, d), lin(d, d)
        self.ff = nn.Sequential(lin(d, 4 * d), nn.GELU(), Dropout(dropout), lin(4 * d, d))
        self.drop = Dropout(dropout)

    def _split(self, x):  # (rows, t, d) -> (rows, heads, t, d / heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def memory_kv(self, memory, mask=None):
        """Cross-attention keys/values of the text states ``memory`` (texts, width, memory_dim). With ``mask``,
        only the real (unpadded) positions are projected (emoji captions are padded about 4x in a
        random batch); padded positions get zeros, which attention masks out anyway."""
        if mask is None:
            kv = self.kv(memory)
        else:
            kv_ = self.kv(memory[mask])
            kv = kv_.new_zeros(*mask.shape, self.kv.out_features).index_put((mask,), kv_)
        k, v = kv.chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x, kv, mem_mask, group: int = 1, past=None):
        """``x`` (rows, t, d); ``kv``/``mem_mask`` hold one entry per text, and row ``r`` belongs to text
        ``r // group`` (beams or negatives of one text): their cross-attention runs against that text's
        keys/values without copying them ``group`` times.

        ``past``: incremental decoding. ``x`` is then the newest position only, ``past`` the cached
        self-attention keys/values of the earlier positions (``None`` at the first step), and the
        return value is ``(x, new_past)``."""
        p = self.dropout if self.training else 0.0
        q, k, v = (self._split(t) for t in self.qkv(self.n1(x)).chunk(3, dim=-1))
        incremental = past is not None
        if incremental:
            if past != ():
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            h = F.scaled_dot_product_attention(q, k, v)  # one query: sees every cached position
        else:
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        x = x + self.drop(self.o1(h.transpose(1, 2).flatten(2)))
        q = self._split(self.q(self.n2(x)))  # (rows, heads, t, dh)
        rows, heads, t, dh = q.shape
        q = q.reshape(rows // group, group, heads, t, dh).transpose(1, 2).reshape(rows // group, heads, group * t, dh)
        h = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mem_mask[:, None, None, :], dropout_p=p)
        h = h.reshape(rows // group, heads, group, t, dh).transpose(1, 2).reshape(rows, heads, t, dh)
        x = x + self.drop(self.o2(h.transpose(1, 2).flatten(2)))
        x = x + self.drop(self.ff(self.n3(x)))
        return (x, (k, v)) if incremental else x


class TextStateCache:
    """Token states of a frozen text encoder, per distinct text: computed once, then shared by every
    generator given this cache (a notebook trains several on the same captions). Keyed by encoder,
    maximum length and device, and bounded by ``max_floats`` numbers; beyond that texts are encoded
    on the fly. A generator built without one gets a cache of its own.

    With a ``directory``, states are also kept on disk for the next process (the next notebook): every batch of
    texts encoded is written as one shard file (written whole, then renamed, so two processes may share the
    directory), and a table reads the shards of its encoder when it is first asked for. A text is then encoded
    once, by the first notebook that needs it, and read back by the others instead of encoded again (about 16 s
    per notebook for the emoji captions on a 2-core CPU). Two runs that encode a text at the same time each keep
    a shard; later tables read the one whose file name sorts first."""

    def __init__(self, max_floats: int = 500_000_000, directory: str | Path | None = None):  # 2 GB of float32
        self.max_floats = max_floats
        self.size = 0
        self.tables: dict[tuple, dict[str, torch.Tensor]] = {}
        self.directory = None if directory is None else Path(directory)

    def _shards(self, encoder: str, max_len: int) -> Path:
        key = hashlib.sha1(str(Path(encoder).resolve()).encode()).hexdigest()[:12]
        return self.directory / f"{key}-len{max_len}"

    def table(self, encoder: str, max_len: int, device) -> dict[str, torch.Tensor]:
        key = (encoder, max_len, str(device))
        if key not in self.tables:
            self.tables[key] = {}
            if self.directory is not None:
                for shard in sorted(self._shards(encoder, max_len).glob("*.pt")):
                    blob = torch.load(shard, map_location=device, weights_only=True)
                    for text, state in zip(blob["texts"], blob["states"].split(blob["lengths"].tolist())):
                        if text not in self.tables[key]:
                            self.offer(self.tables[key], text, state)
        return self.tables[key]

    def offer(self, table: dict, text: str, state: torch.Tensor) -> None:
        if self.size + state.numel() <= self.max_floats:
            table[text] = state
            self.size += state.numel()

    def keep(self, encoder: str, max_len: int, texts: list[str], states: list[torch.Tensor]) -> None:
        """Write the states of ``texts`` just encoded as one shard (with a ``directory``; nothing otherwise)."""
        if self.directory is None or not texts:
            return
        folder = self._shards(encoder, max_len)
        folder.mkdir(parents=True, exist_ok=True)
        blob = {
            "texts": list(texts),
            "lengths": torch.tensor([len(x) for x in states]),
            "states": torch.cat([x.cpu() for x in states]),
        }
        name = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
        tmp = folder / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        torch.save(blob, tmp)
        os.replace(tmp, folder / f"{name}.pt")


class MiniLMGenerator(VokenGenerator):
    """Pretrained MiniLM encoder + a small Transformer decoder over ``K`` vokens (output: K vokens + EOS).

    The encoder is frozen by default (``finetune_encoder=False``): its token states are computed once
    per distinct text and cached, which makes CPU training cheap."""

    def __init__(
        self,
        codebook_size: int,
        depth: int,
        cfg: GeneratorConfig,
        codebook: np.ndarray | None = None,
        prior_head: nn.Linear | None = None,
        encoder_dir: str | None = None,
        text_states: TextStateCache | None = None,
    ):
        super().__init__(codebook_size, depth, cfg)
        self.text_states = text_states if text_states is not None else TextStateCache()
        from transformers import AutoModel, AutoTokenizer

        encoder_dir = encoder_dir or minilm_dir()
        self.encoder_dir = str(encoder_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
        self.encoder = AutoModel.from_pretrained(encoder_dir)
        if not cfg.finetune_encoder:
            self.encoder.requires_grad_(False)
        enc_d = self.encoder.config.hidden_size
        d = cfg.decoder_width or enc_d
        heads = cfg.heads if d % cfg.heads == 0 else 6
        self.voken_offset, self.eos_id, self.bos_id = 0, codebook_size, codebook_size + 1
        self.embed = nn.Embedding(codebook_size + 2, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        if codebook is not None and cfg.init_from_codebook:
            with torch.no_grad():
                self.embed.weight[:codebook_size] = project_codebook(codebook, d, 0.02, cfg.seed)
        self.pos = nn.Embedding(depth + 2, d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.onednn = kernels.resolve(cfg.cpu_matmul)
        self.blocks = nn.ModuleList(DecoderBlock(d, heads, cfg.dropout, enc_d, self.onednn) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        if cfg.joint_prior:
            if prior_head is None:
                raise ValueError("joint_prior needs the two-tower text head (prior_head)")
            self.prior_head = copy.deepcopy(prior_head).requires_grad_(False)  # frozen, from notebook 01
            self.prior_proj = nn.Linear(prior_head.out_features, enc_d)  # a memory token, like the text states
        # output logits share the voken embeddings; this scale makes them O(1) at initialisation
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / (0.02 * math.sqrt(d))))

    def _states(self, texts):
        dev = self.embed.weight.device
        if self.cfg.finetune_encoder:
            b = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.cfg.max_text_len, return_tensors="pt"
            ).to(dev)
            return self.encoder(**b).last_hidden_state, b["attention_mask"].bool()
        return self._encode_frozen(texts)

    def encode(self, texts):
        """ctx = (per-block cross-attention keys/values, memory mask, rows per text)."""
        return self.context(*self._states(texts))

    def context(self, memory, mask, project_padding: bool = False):
        """:meth:`encode` from the text states. ``project_padding``: project every position, padded ones
        included (attention masks them out): same result, and shapes that do not depend on the mask, which
        a captured CUDA graph needs (:mod:`avg_lib.models.generator.graphed`)."""
        memory, mask = self.memory(memory, mask)
        return [blk.memory_kv(memory, None if project_padding else mask) for blk in self.blocks], mask, 1

    def encoder_states(self, texts: list[str]):
        """``(memory, mask)``: the encoder's token states of ``texts`` (cached when the encoder is frozen)."""
        return self._states(texts)

    def memory(self, memory, mask):
        """What the decoder cross-attends to: the text states, after the joint-space prior token when
        ``joint_prior`` is on (MiniLM's sentence embedding, mean pool + L2, through the two-tower text head)."""
        if self.cfg.joint_prior:
            m = mask.unsqueeze(-1).to(memory.dtype)
            sent = F.normalize((memory * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
            prior = self.prior_proj(F.normalize(self.prior_head(sent), dim=-1)).unsqueeze(1)
            memory = torch.cat([prior, memory], dim=1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return memory, mask

    def repeat(self, ctx, n):
        kvs, mask, group = ctx
        return kvs, mask, group * n

    def precompute(self, texts):
        if not self.cfg.finetune_encoder:
            self._encode_frozen(texts)

    @torch.no_grad()
    def _encode_frozen(self, texts):
        """Frozen encoder: token states are computed once per distinct text and kept in
        ``self.text_states`` (see :class:`TextStateCache`)."""
        dev = self.embed.weight.device
        cache = self.text_states.table(self.encoder_dir, self.cfg.max_text_len, dev)
        found = {t: cache[t] for t in texts if t in cache}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing and self.encoder.training:  # switching a whole BERT's modules costs about 0.8 ms per call
            self.encoder.eval()
        for s in range(0, len(missing), 256):
            chunk = missing[s : s + 256]
            b = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.cfg.max_text_len, return_tensors="pt"
            ).to(dev)
            h = self.encoder(**b).last_hidden_state
            for t, row, m in zip(chunk, h, b["attention_mask"]):
                found[t] = row[: int(m.sum())].clone()
                self.text_states.offer(cache, t, found[t])
            self.text_states.keep(self.encoder_dir, self.cfg.max_text_len, chunk, [found[t] for t in chunk])
        states = [found[t] for t in texts]
        width = max(len(x) for x in states)
        memory = torch.zeros(len(texts), width, states[0].shape[1], device=dev)
        mask = torch.zeros(len(texts), width, dtype=torch.bool, device=dev)
        for i, x in enumerate(states):
            memory[i, : len(x)] = x
            mask[i, : len(x)] = True
        return memory, mask

    def decode_step(self, ctx):
        """Incremental decoding: each step runs the decoder on the newest position only, reusing the
        self-attention keys/values of earlier positions (reordered to follow the beams)."""
        kvs, mask, _ = ctx
        state = {"past": [()] * len(self.blocks)}
        scale = self.logit_scale / self.cfg.temperature

        def step(prefix, src):
            rows, t = prefix.shape
            group = rows // len(mask)  # rows per text: 1 at the first step of beam search, then the beams
            if t == 0:
                tok = torch.full((rows,), self.bos_id, device=prefix.device, dtype=torch.long)
            else:
                tok = prefix[:, -1]
                state["past"] = [(k[src], v[src]) for k, v in state["past"]]
            x = (self.embed(tok) + self.pos.weight[t]).unsqueeze(1)
            new = []
            for blk, kv, past in zip(self.blocks, kvs, state["past"]):
                x, cache = blk(x, kv, mask, group, past=past)
                new.append(cache)
            state["past"] = new
            return F.log_softmax(self.logits(self.norm(x[:, 0])) * scale, dim=-1)

        return step

    def decoder_logits(self, ctx, prefix):
        kvs, mask, group = ctx
        rows, t = prefix.shape
        inp = torch.cat([torch.full((rows, 1), self.bos_id, device=prefix.device, dtype=torch.long), prefix], 1)
        x = self.embed(inp) + self.pos(torch.arange(t + 1, device=prefix.device))
        for blk, kv in zip(self.blocks, kvs):
            x = blk(x, kv, mask, group)
        return self.logits(self.norm(x)) * self.logit_scale

    def logits(self, h):
        """Unscaled logits over the vokens and end-of-sequence: ``h`` against the (shared) voken embeddings."""
        w = self.embed.weight[: self.codebook_size + 1]
        return kernels.linear(h, w, None, onednn=True) if self.onednn else h @ w.T
