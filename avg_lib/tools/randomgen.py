"""Inputs for timing without a trained model: a generator of a profile's architecture with random weights, and
synthetic emoji-like queries (:mod:`avg_lib.tools.speed`, :mod:`avg_lib.tools.trainbench`). Cost depends on neither the
weights nor the words, so a machine needs no pretrained file to time the default architecture."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

_WORDS = (
    "a red heart smiling face with tears of joy cat grinning big eyes sun cloud rain blue green yellow orange "
    "purple black white star moon fire water tree flower dog hand thumbs up down person running woman man girl "
    "boy car house music note book phone clock food cake pizza coffee"
)
QUERY_WORDS = tuple(_WORDS.split())


def synthetic_queries(n: int, seed: int = 0, words: int = 4) -> list[str]:
    """``n`` short emoji-caption-like query strings (4 words, about an emoji caption's length)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(QUERY_WORDS, size=words)) for _ in range(n)]


# SmolLM2-135M-Instruct's architecture (the offline decoder backend's LM), from its GGUF's configuration
SMOLLM2_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def _word_tokenizer(workdir: Path):
    """A word-level WordPiece tokenizer over the synthetic queries' words, saved in ``workdir``."""
    from transformers import BertTokenizerFast

    workdir.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *QUERY_WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (workdir / "vocab.txt").write_text("\n".join(dict.fromkeys(words)) + "\n")
    tok = BertTokenizerFast(vocab_file=str(workdir / "vocab.txt"))
    tok.save_pretrained(workdir)
    return tok


def random_smollm2(workdir: Path, seed: int = 0) -> Path:
    """A ``LlamaForCausalLM`` of SmolLM2-135M's shape with random weights and a word-level tokenizer, saved in
    ``workdir``: what the decoder backend costs, without the pretrained package (a GPU machine lacks it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _word_tokenizer(Path(workdir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        **SMOLLM2_SHAPE, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id
    )
    LlamaForCausalLM(cfg).save_pretrained(workdir)
    return Path(workdir)


def random_weight_generator(codebook_size: int, depth: int, cfg, workdir: Path):
    """A generator of ``cfg``'s architecture with random weights and no download. For the minilm backend: a
    BERT encoder of all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads) and a word-level tokenizer,
    saved under ``workdir``; for the decoder backend: :func:`random_smollm2`. Timing depends on neither the
    weights nor the words of the vocabulary."""
    from transformers import BertConfig, BertModel

    from avg_lib.models import generator

    workdir = Path(workdir)
    if cfg.backend == "decoder":
        lm = workdir / "lm"
        if not (lm / "config.json").is_file():  # built once per workdir: a benchmark builds several generators
            random_smollm2(lm, cfg.seed)
        return generator.build_generator(codebook_size, depth, dataclasses.replace(cfg, lm_path=str(lm)), None)
    if cfg.backend != "minilm":
        return generator.build_generator(codebook_size, depth, cfg, None)
    _word_tokenizer(workdir)
    torch.manual_seed(cfg.seed)
    bert = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    BertModel(bert).save_pretrained(workdir)
    return generator.MiniLMGenerator(codebook_size, depth, cfg, encoder_dir=str(workdir))
