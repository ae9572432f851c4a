"""Building a generator from its configuration, and saving / loading a trained one."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avg_lib.models.generator.base import VokenGenerator
from avg_lib.models.generator.config import GeneratorConfig
from avg_lib.models.generator.decoder import DecoderGenerator
from avg_lib.models.generator.minilm import MiniLMGenerator, TextStateCache
from avg_lib.models.generator.t5 import T5Generator


def build_generator(
    codebook_size: int,
    depth: int,
    cfg: GeneratorConfig,
    codebooks: np.ndarray | None = None,
    prior_head: nn.Linear | None = None,
    text_states: TextStateCache | None = None,
):
    """A generator for identifiers of ``depth`` tokens over ``codebook_size`` vokens. ``codebooks`` is the
    tokenizer's ``(n_books, K, e)`` array; with one codebook per level their mean initialises the
    (position-independent) voken tokens. ``prior_head``: the two-tower text head (``joint_prior``).
    ``text_states``: a frozen-encoder state cache to share with other generators (minilm)."""
    torch.manual_seed(cfg.seed)
    book = None if codebooks is None else np.asarray(codebooks).mean(0)
    if cfg.backend == "minilm":
        return MiniLMGenerator(codebook_size, depth, cfg, book, prior_head, text_states=text_states)
    if cfg.backend == "decoder":
        return DecoderGenerator(codebook_size, depth, cfg, book)
    return T5Generator(codebook_size, depth, cfg, book)


def save(gen: VokenGenerator, directory: str | Path, extra: dict | None = None) -> Path:
    """State dict (loads with ``weights_only=True``) + JSON config; the encoder/T5 base is named, not copied."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(gen.state_dict(), directory / "generator.pt")
    prior = getattr(gen, "prior_head", None)
    (directory / "generator_config.json").write_text(
        json.dumps(
            {
                "generator": asdict(gen.cfg),
                "codebook_size": gen.codebook_size,
                "depth": gen.depth,
                "prior_shape": None if prior is None else [prior.in_features, prior.out_features],
                **(extra or {}),
            },
            indent=1,
        )
    )
    return directory


def load(directory: str | Path, text_states: TextStateCache | None = None) -> VokenGenerator:
    """A generator saved by :func:`save` (``text_states`` as in :func:`build_generator`)."""
    directory = Path(directory)
    meta = json.loads((directory / "generator_config.json").read_text())
    prior = nn.Linear(*meta["prior_shape"]) if meta.get("prior_shape") else None
    gen = build_generator(
        meta["codebook_size"],
        meta["depth"],
        GeneratorConfig(**meta["generator"]),
        prior_head=prior,
        text_states=text_states,
    )
    gen.load_state_dict(torch.load(directory / "generator.pt", weights_only=True))
    return gen.eval()
