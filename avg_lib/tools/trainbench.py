"""What one generator epoch costs, per device and precision: the training benchmark.

The default run trains about thirty generators, and each spends most of its time in the discriminative
stage (negatives mined by beam search for every batch, then ten sequences scored per caption). This study
times both stages of :func:`avg_lib.models.generator.train_generator` on a generator of the profile's architecture
with random weights (:func:`avg_lib.tools.randomgen.random_weight_generator`) over a synthetic training set the size of
the emoji one (random unique identifiers, captions from a small vocabulary): timing depends on neither the
weights nor what the identifiers mean. Each setting trains one generative epoch, then one generative and one
discriminative epoch, from the same start; the difference is the discriminative epoch. Ratios are against the
first row (the MiniLM backend in float32 on the CPU), measured in the same run. With ``--backends
minilm,decoder`` it also times the decoder backend (a random LM of SmolLM2-135M's shape,
:func:`avg_lib.tools.randomgen.random_smollm2`), on a fraction of the training set (``--fraction``) scaled to the
whole, since an epoch of it takes minutes on a CPU; ``decoder:6`` times it with only its top 6 layers trained
(``generator.lm_train_layers``), and ``decoder:6:cached`` also with its frozen lower layers run once
(``generator.lm_cache_frozen``; that pass is timed on its own, ``once_s``, and counted once per generator);
``:twice`` after either times the discriminative stage encoding each batch's prompts twice, the baseline of
mining from the training pass's prompts (``mining_shares_prompts``).

``avg speed --profile gpu --what training`` runs it (on every device it finds) and writes
``<results_dir>/training_speed.csv``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avg_lib.evaluation.efficiency import random_unique_codes

SETTINGS = (("cpu", "fp32"), ("cpu", "bf16"), ("cuda", "fp32"), ("cuda", "bf16"))


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    texts: list[str]
    codes: np.ndarray  # (pairs, depth): each caption's image identifier
    image_codes: np.ndarray  # (images, depth): the training images' identifiers (negatives are mined over them)
    val: tuple[list[str], np.ndarray, np.ndarray]  # validation texts, target positions, gallery identifiers


def synthetic_training_set(
    images: int,
    captions: int,
    val_images: int,
    val_captions: int,
    depth: int,
    vocab: int,
    seed: int = 0,
    pool: list[str] | None = None,
) -> TrainingSet:
    """``images`` training images with ``captions`` captions each and a validation split, all with random
    unique identifiers and captions of 4 words from :data:`avg_lib.tools.randomgen.QUERY_WORDS`, or, with ``pool``
    (real captions), captions drawn from it with the seed (an LM's cost follows its prompts' lengths and their
    padding; the identifiers stay random)."""
    from avg_lib.tools.randomgen import synthetic_queries

    codes = random_unique_codes(images + val_images, depth, vocab, seed)
    owner = np.repeat(np.arange(images), captions)
    val_owner = np.arange(val_captions) % val_images
    n = len(owner) + val_captions
    if pool is None:
        texts = synthetic_queries(n, seed)
    elif not pool:
        raise ValueError("synthetic_training_set: the caption pool is empty")
    else:
        draw = np.random.default_rng(seed).permutation(max(n, len(pool)))[:n] % len(pool)
        texts = [pool[i] for i in draw]
    val = (texts[len(owner) :], val_owner, codes[images:])
    return TrainingSet(texts[: len(owner)], codes[owner], codes[:images], val)


def parse_backend(spec: str) -> tuple[dict, bool]:
    """One ``--backends`` entry: ``(generator settings, encodes twice)``. A backend's name; ``decoder:<k>`` for the
    decoder backend with only its top ``k`` layers trained (0: all); then ``:cached`` with its frozen lower layers
    run once (``lm_cache_frozen``) and ``:twice`` to encode each discriminative batch's prompts twice, once to
    mine negatives and once to train (what every backend did before the decoder shared them: the baseline of
    that change)."""
    from avg_lib.models.generator.config import BACKENDS

    name, *parts = spec.split(":")
    layers = parts.pop(0) if parts else None
    flags = [p for p in ("cached", "twice") if p in parts]
    if name not in BACKENDS or (layers is not None and (name != "decoder" or not layers.isdigit())) or parts != flags:
        raise ValueError(
            f"backend {spec!r}: expected minilm, t5, decoder or decoder:<top layers trained>[:cached][:twice]"
        )
    settings = {"backend": name, "lm_train_layers": int(layers or 0), "lm_cache_frozen": "cached" in flags}
    return settings, "twice" in flags


def backend_settings(spec: str) -> dict:
    """The generator settings of one ``--backends`` entry (:func:`parse_backend`)."""
    return parse_backend(spec)[0]


def _seconds(work, device: str) -> float:
    """Wall time of ``work()``, the device's queued work included."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    work()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _train_seconds(gen_factory, data: TrainingSet, cfg, device: str, twice: bool = False) -> tuple[float, bool]:
    """Seconds of a training with settings ``cfg``, and whether it mined from the training pass's prompts."""
    from avg_lib.models.generator import train_generator

    gen = gen_factory(cfg).to(device)
    if twice:  # the baseline: mining encodes the prompts again
        gen.mining_shares_prompts = lambda: False
    train = (data.texts, data.codes)
    seconds = _seconds(lambda: train_generator(gen, train, data.val, data.image_codes, progress=False), device)
    return seconds, gen.mining_shares_prompts()


def _once_seconds(gen, data: TrainingSet, device: str, precision: str) -> float:
    """Seconds of what a training does once before its epochs: ``lm_cache_frozen``'s pass over the frozen
    layers."""

    def once():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            gen.frozen_positives(data.texts, data.codes)

    return _seconds(once, device)


def epoch_costs(
    gen_cfg,
    data: TrainingSet,
    workdir: Path,
    settings=SETTINGS,
    epochs: int = 8,
    disc_epochs: int = 2,
    backends: tuple[str, ...] = ("minilm",),
    full_pairs: int | None = None,
):
    """One row per backend and (device, precision) in ``settings`` that the machine running it has: seconds of the
    work done once per training (``once_s``: the pass over the frozen layers of ``lm_cache_frozen``, else 0), per
    generative and per discriminative epoch (validation included), milliseconds per training pair, the estimated
    time of a ``epochs`` + ``disc_epochs`` generator, and its speedup over the first row's.

    ``full_pairs``: the training set a generator really has, when ``data`` is a fraction of it (an LM backend
    on a CPU); epoch times then scale linearly to it (validation shrinks with ``data`` in proportion)."""
    from avg_lib.models.generator import TextStateCache
    from avg_lib.results import hardware
    from avg_lib.tools.randomgen import random_weight_generator

    vocab, depth = int(data.image_codes.max()) + 1, data.image_codes.shape[1]
    states = TextStateCache()  # one cache for every setting: it keeps a table per device

    def factory(cfg):
        gen = random_weight_generator(vocab, depth, cfg, workdir)
        if cfg.backend == "minilm":
            gen.text_states = states
        return gen

    rows, scale = [], (full_pairs or len(data.texts)) / len(data.texts)
    for backend, (device, precision, *matmul) in ((b, s) for b in backends for s in settings):
        if device == "cuda" and not torch.cuda.is_available():
            continue
        settings_of, twice = parse_backend(backend)
        matmul = {"cpu_matmul": matmul[0]} if matmul else {}  # a third part: the CPU matmul library (mkl, onednn)
        cfg = dataclasses.replace(gen_cfg, **settings_of, device=device, precision=precision, **matmul)
        _train_seconds(factory, data, dataclasses.replace(cfg, epochs=1, disc_epochs=0), device)  # warm-up
        gen_s, _ = _train_seconds(factory, data, dataclasses.replace(cfg, epochs=1, disc_epochs=0), device)
        both_s, shared = _train_seconds(factory, data, dataclasses.replace(cfg, epochs=1, disc_epochs=1), device, twice)
        once_s = _once_seconds(factory(cfg).to(device), data, device, precision) if cfg.lm_cache_frozen else 0.0
        epoch_s = gen_s - once_s  # a one-epoch training does the once-only work too
        rows.append(
            {
                "backend": cfg.backend,
                "lm_train_layers": cfg.lm_train_layers,
                "lm_cache_frozen": cfg.lm_cache_frozen,
                "mining_shares_prompts": shared,
                "device": device,
                "precision": precision,
                "cpu_matmul": cfg.cpu_matmul,
                "once_s": once_s * scale,
                "generative_epoch_s": epoch_s * scale,
                "discriminative_epoch_s": (both_s - gen_s) * scale,
                "generative_ms_per_pair": 1000 * epoch_s / len(data.texts),
                "discriminative_ms_per_pair": 1000 * (both_s - gen_s) / len(data.texts),
                "generator_s": scale * (once_s + epochs * epoch_s + disc_epochs * (both_s - gen_s)),
                "train_pairs": round(scale * len(data.texts)),
                "measured_pairs": len(data.texts),
                "hardware": hardware(device),
            }
        )
        label = f"{backend} {device} {precision}" + (f" {cfg.cpu_matmul}" if matmul else "")
        print(f"{label}: {rows[-1]['generator_s']:.1f} s per generator", flush=True)
    table = pd.DataFrame(rows)
    table["speedup"] = table["generator_s"].iloc[0] / table["generator_s"]
    return table
