"""The paper's backend: ``T5ForConditionalGeneration`` with voken tokens appended to its vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avg_lib.models.generator.base import VokenGenerator, project_codebook
from avg_lib.models.generator.config import GeneratorConfig, minilm_dir


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
            self.tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
            tok = self.tokenizer
            self.model = T5ForConditionalGeneration(
                T5Config(
                    vocab_size=len(tok),
                    d_model=cfg.d_model,
                    d_kv=cfg.d_model // cfg.heads,
                    d_ff=4 * cfg.d_model,
                    num_layers=cfg.layers,
                    num_decoder_layers=cfg.layers,
                    num_heads=cfg.heads,
                    dropout_rate=cfg.dropout,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.sep_token_id,
                    decoder_start_token_id=tok.pad_token_id,
                )
            )
        conf = self.model.config
        self.voken_offset = conf.vocab_size
        self.eos_id = conf.eos_token_id
        self.start_id = conf.decoder_start_token_id
        self.model.resize_token_embeddings(conf.vocab_size + codebook_size, mean_resizing=False)
        emb = self.model.get_input_embeddings().weight
        with torch.no_grad():
            std = float(emb[: self.voken_offset].std())
            if codebook is not None and cfg.init_from_codebook:
                emb[self.voken_offset :] = project_codebook(codebook, emb.shape[1], std, cfg.seed)
            else:
                emb[self.voken_offset :] = torch.randn(codebook_size, emb.shape[1]) * std

    def encode(self, texts):
        dev = self.model.device
        b = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.cfg.max_text_len, return_tensors="pt"
        ).to(dev)
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
            out = self.model(
                encoder_outputs=enc_now,
                attention_mask=mask_now,
                decoder_input_ids=dec,
                past_key_values=state["cache"],
                use_cache=True,
            )
            state["cache"] = out.past_key_values
            return F.log_softmax(out.logits[:, -1] / self.cfg.temperature, dim=-1)

        return step

    def decoder_logits(self, ctx, prefix):
        from transformers.modeling_outputs import BaseModelOutput

        memory, mask = ctx
        start = torch.full((len(prefix), 1), self.start_id, device=prefix.device, dtype=torch.long)
        dec = torch.cat([start, prefix + self.voken_offset], dim=1)
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=mask,
            decoder_input_ids=dec,
            use_cache=False,
        )
        return out.logits
