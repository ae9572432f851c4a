"""The timing studies without any trained model, for any machine: ``avg speed``.

A generator of the profile's architecture (for the default, frozen all-MiniLM-L6-v2 encoder + the 2-layer,
256-wide voken decoder over 256 vokens, temperature 0.5) is built with **random weights**: decoding cost does
not depend on the weights, and a GPU machine then needs no pretrained files. Two studies, each measured
in one run on one machine:

* the **decoding benchmark** (:func:`avg_lib.evaluation.benchmark.decoding_benchmark`): our batched trie search
  against transformers' ``prefix_allowed_tokens_fn`` on that generator, at batch 1 and batched;
* the **efficiency study** (:func:`avg_lib.evaluation.efficiency.study`): latency, throughput, build time and
  memory per image against gallery size, with crossovers.

and, with ``--what training``, the **training benchmark** (:mod:`avg_lib.tools.trainbench`): seconds per generator
epoch on every device and precision the machine has (``training_speed.csv``).

Outputs (with provenance columns): ``<results_dir>/decoding_benchmark.csv``, ``efficiency.csv`` and
``efficiency_crossovers.csv``. Profiles: ``efficiency`` (CPU, 1K to 1M images), ``gpu`` (CUDA, 1K to 10M;
``scripts/gpu_efficiency.sh``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from avg_lib.tools.randomgen import random_weight_generator, synthetic_queries

# the emoji training set's shape: training images, captions each, validation images and captions
EMOJI_TRAINING_SET = (1311, 3, 200, 579)


def real_captions(cfg) -> list[str]:
    """Every caption of the profile's data set (the training benchmark's ``--captions real``)."""
    from avg_lib.data import load_dataset

    return [c for item in load_dataset(cfg.data.dataset, **cfg.data.kwargs).items for c in item.captions]


def run(
    profile: str = "efficiency",
    sizes=None,
    device: str | None = None,
    out: Path | None = None,
    what: tuple[str, ...] = ("decoding", "efficiency"),
    backends: tuple[str, ...] = ("minilm",),
    fraction: float = 1.0,
    settings: tuple[tuple[str, str], ...] | None = None,
    captions: str = "synthetic",
):
    """The studies in ``what`` for ``profile``; returns ``(decoding table, efficiency table, crossovers)`` (None
    for a study not run) and writes them under ``out`` (default: the profile's ``results_dir``). ``captions``:
    the training benchmark's captions, ``synthetic`` (4 words) or ``real`` (drawn from the profile's data set)."""
    import tempfile

    from avg_lib.evaluation import benchmark, efficiency
    from avg_lib.results import hardware, write_csv
    from avg_lib.retrieval.trie import VokenTrie
    from avg_lib.runs import config

    cfg = config.load_config(profile)
    device = device or cfg.efficiency.device
    sizes = [int(n) for n in (sizes or cfg.efficiency.gallery_sizes)]
    out = Path(out or cfg.results_dir)
    depth, vocab = cfg.tokenizer.levels, cfg.tokenizer.codebook_size
    where = hardware(device)
    print(f"{where}; galleries {sizes}; identifiers {depth} x {vocab}; {cfg.two_tower.dim}-d vectors", flush=True)
    conf = cfg.to_dict() | {
        "speed_command": {"sizes": sizes, "device": device, "backends": list(backends), "fraction": fraction}
        | ({"settings": [list(x) for x in settings]} if settings else {})
        | ({"captions": captions} if captions != "synthetic" else {})
    }

    def save(table, name):
        table["device"], table["hardware"] = device, where
        write_csv(table, out / f"{name}.csv", cfg.profile, cfg.seed, conf)
        _show(table.drop(columns=["hardware"]))

    t0, bench, table, crossings = time.perf_counter(), None, None, None
    with tempfile.TemporaryDirectory() as tmp:
        gen = random_weight_generator(vocab, depth, cfg.generator, Path(tmp)).to(device).eval()
        texts = synthetic_queries(max(cfg.efficiency.batch_size, cfg.benchmark.queries), cfg.seed)
        trie = VokenTrie(efficiency.random_unique_codes(cfg.benchmark.gallery_size, depth, vocab, cfg.seed))
        queries, beams = texts[: cfg.benchmark.queries], cfg.generator.num_beams
        if "training" in what:
            _training_study(cfg, Path(tmp) / "train", out, conf, backends, fraction, settings, captions)
        if "profile" in what:
            save(benchmark.decode_profile(gen, queries, trie, beams), "decode_profile")
        if "decoding" in what:
            b = cfg.benchmark
            bench = benchmark.decoding_benchmark(gen, queries, trie, beams, tuple(b.batch_sizes), b.repeats)
            save(bench, "decoding_benchmark")
            print(f"wrote {out}/decoding_benchmark.csv; {time.perf_counter() - t0:.0f} s", flush=True)
        if "efficiency" in what:
            table = _efficiency_study(cfg, gen, texts, sizes, device)
            crossings = efficiency.crossovers(table)
            save(table, "efficiency")
            write_csv(crossings, out / "efficiency_crossovers.csv", cfg.profile, cfg.seed, conf)
            _show(crossings)
            plot(out)
            print(f"wrote {out}/efficiency.csv and efficiency_crossovers.csv; {time.perf_counter() - t0:.0f} s")
    if "efficiency" in what or "training" in what:
        from avg_lib.evaluation.report import write_speed_readme

        write_speed_readme(out, cfg.profile)
    return bench, table, crossings


def _efficiency_study(cfg, gen, texts: list[str], sizes: list[int], device: str) -> pd.DataFrame:
    """The gallery-size study (:func:`avg_lib.evaluation.efficiency.study`) with the profile's settings, query
    embeddings drawn like gallery vectors, and an untrained cross-encoder of the one-tower baseline's shape."""
    from avg_lib.evaluation import efficiency
    from avg_lib.models import baselines

    eff, dim, ot = cfg.efficiency, cfg.two_tower.dim, cfg.one_tower
    dist = efficiency.GalleryDistribution.power_law(dim, cfg.seed)
    return efficiency.study(
        gen,
        texts[: eff.batch_size],
        dist.sample(eff.batch_size, cfg.seed + 1).numpy(),
        sizes,
        cfg.tokenizer.levels,
        cfg.tokenizer.codebook_size,
        cross_encoder=baselines.CrossEncoder(dim, dim, ot.dim, ot.hidden, ot.dropout).to(device),
        num_beams=cfg.generator.num_beams,
        batch_size=eff.batch_size,
        one_tower_max=eff.one_tower_max,
        ann=tuple(eff.ann),
        ann_max=eff.ann_max,
        target_recall=eff.target_recall,
        distribution=dist,
        seed=cfg.seed,
        device=device,
        rerank_k=cfg.rerank.k,
    )


def _training_study(cfg, workdir: Path, out: Path, conf: dict, backends, fraction, settings, captions) -> None:
    """Seconds per generator epoch (:func:`avg_lib.tools.trainbench.epoch_costs`) on an emoji-sized synthetic
    training set (``fraction`` of it, scaled to the whole), written to ``training_speed.csv``."""
    from avg_lib.results import write_csv
    from avg_lib.tools.trainbench import epoch_costs, synthetic_training_set

    g, (images, per_image, val_images, val_captions) = cfg.generator, EMOJI_TRAINING_SET
    n = [max(1, round(fraction * x)) for x in (images, val_images, val_captions)]
    pool = real_captions(cfg) if captions == "real" else None
    depth, vocab = cfg.tokenizer.levels, cfg.tokenizer.codebook_size
    data = synthetic_training_set(n[0], per_image, n[1], n[2], depth, vocab, cfg.seed, pool)
    costs = epoch_costs(
        g,
        data,
        workdir,
        epochs=g.epochs,
        disc_epochs=g.disc_epochs,
        backends=tuple(backends),
        full_pairs=images * per_image,
        **({"settings": settings} if settings else {}),
    )
    write_csv(costs, out / "training_speed.csv", cfg.profile, cfg.seed, conf)
    _show(costs.drop(columns=["hardware"]))


def plot(out: Path | str) -> Path:
    """``<out>/figures/efficiency.png`` from ``<out>/efficiency.csv`` (what :func:`run` ends with)."""
    from avg_lib.evaluation import viz
    from avg_lib.results import save_figure

    out = Path(out)
    table = pd.read_csv(out / "efficiency.csv")
    title = f"query cost against gallery size ({table['hardware'].iloc[0]}, random weights)"
    return save_figure(viz.efficiency(table, title=title), out / "figures" / "efficiency.png")


def _show(df: pd.DataFrame) -> None:
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(df.round(4).to_string(index=False), flush=True)


def _parser():
    import argparse

    ap = argparse.ArgumentParser(
        prog="avg speed",
        description="Decoding benchmark and efficiency study on a random-weight generator of the profile's "
        "architecture (no trained model, no download); writes <results_dir>/decoding_benchmark.csv, "
        "efficiency.csv and efficiency_crossovers.csv.",
    )
    ap.add_argument("--profile", default="efficiency", help="profiles/<name>.yaml (default: efficiency; gpu for CUDA)")
    ap.add_argument(
        "--sizes", type=lambda s: [int(float(x)) for x in s.split(",")], help="gallery sizes, e.g. 1e3,1e4,1e5"
    )
    ap.add_argument("--device", help="cpu | cuda (default: the profile's efficiency.device)")
    ap.add_argument("--out", type=Path, help="output folder (default: the profile's results_dir)")
    ap.add_argument(
        "--what",
        choices=["both", "decoding", "efficiency", "profile", "training"],
        default="both",
        help="decoding: the decoding benchmark; efficiency: the gallery-size study; both (default); profile: "
        "where batch-1 and batched decoding spend their time (torch.profiler, CPU); training: seconds per "
        "generator epoch on every device and precision the machine running it has (avg_lib.tools.trainbench)",
    )
    ap.add_argument(
        "--backends",
        default="minilm",
        help="training: generator backends to time, comma-separated (default minilm; minilm,decoder adds a "
        "random LM of SmolLM2-135M's shape, decoder:6 the same with only its top 6 layers trained, decoder:6:cached "
        "with its frozen lower layers also run once, a :twice suffix encoding each discriminative batch's prompts "
        "twice as before they were shared; the first is the baseline)",
    )
    ap.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="training: time on this fraction of the emoji-sized training set and scale to the whole "
        "(default 1; 0.1 keeps an LM backend on a CPU to minutes)",
    )
    ap.add_argument(
        "--settings",
        type=lambda s: tuple(tuple(x.split(":")) for x in s.split(",")),
        help="training: device:precision pairs to time, e.g. cpu:fp32,cuda:fp32 (default: cpu and cuda, fp32 and "
        "bf16, where present); a third part picks the CPU matmul library: cpu:fp32:mkl,cpu:fp32:onednn",
    )
    ap.add_argument(
        "--captions",
        choices=("synthetic", "real"),
        default="synthetic",
        help="training: the benchmark's captions, synthetic (4 words; default) or real (drawn from the profile's "
        "data set: an LM's cost follows the prompts' lengths and their padding)",
    )
    return ap


def main(argv=None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        ap.error(f"--fraction must be in (0, 1], not {args.fraction}")
    what = ("decoding", "efficiency") if args.what == "both" else (args.what,)
    backends = tuple(args.backends.split(","))
    from avg_lib.tools.trainbench import backend_settings

    for b in backends:
        try:
            backend_settings(b)
        except ValueError as e:
            ap.error(f"--backends: {e}")
    run(args.profile, args.sizes, args.device, args.out, what, backends, args.fraction, args.settings, args.captions)


if __name__ == "__main__":
    main()
