"""Inputs for timing without a trained model: a generator of a profile's architecture with random weights, and
synthetic emoji-like queries (:mod:`avg_lib.speed`, :mod:`avg_lib.trainbench`). Cost depends on neither the
weights nor the words, so a machine needs no pretrained file to time the default architecture."""

from __future__ import annotations

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


def random_weight_generator(codebook_size: int, depth: int, cfg, workdir: Path):
    """A generator of ``cfg``'s architecture with random weights and no download. For the minilm backend: a
    BERT encoder of all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads) and a word-level tokenizer,
    saved under ``workdir``. Timing depends on neither the weights nor the words of the vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from . import generator

    if cfg.backend != "minilm":
        return generator.build_generator(codebook_size, depth, cfg, None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *QUERY_WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (workdir / "vocab.txt").write_text("\n".join(dict.fromkeys(words)) + "\n")
    BertTokenizerFast(vocab_file=str(workdir / "vocab.txt")).save_pretrained(workdir)
    torch.manual_seed(cfg.seed)
    bert = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
    )
    BertModel(bert).save_pretrained(workdir)
    return generator.MiniLMGenerator(codebook_size, depth, cfg, encoder_dir=str(workdir))
