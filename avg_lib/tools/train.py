"""Train a profile's stages into the cache, in one process or several:

    avg train --profile default
    torchrun --nproc_per_node 2 -m avg_lib.tools.train --profile default      # several processes (gloo, CPU)

Trains (or finds cached) the frozen features, the two-tower joint space, the voken tokenizer and AVG's
generators for the given seeds and pseudo-query settings; ``run_all.sh`` then finds them cached. Under
``torchrun`` the ranks share feature extraction chunk by chunk and every generator batch (gradients summed,
so the steps are those of one process on the same global batch; dropout masks differ per rank, as in any
data-parallel run); the two-tower model and the tokenizer are small and train whole on each rank; only
rank 0 writes to the cache. Generator training runs where ``generator.device`` says: on the CPU, ranks
joined by ``gloo``; or with ``cuda``, one GPU per rank (``LOCAL_RANK``), gradients reduced by ``nccl``:

    torchrun --nproc_per_node 4 -m avg_lib.tools.train --profile default --overrides '{"generator": {"device": "cuda"}}'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="avg train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", help="profiles/<name>.yaml (default: default)")
    ap.add_argument("--overrides", default="{}", help="settings merged over the profile, as JSON")
    ap.add_argument("--seeds", type=int, nargs="+", help="generator seeds (default: the profile's main_table.seeds)")
    ap.add_argument(
        "--pseudo", type=int, nargs="+", help="pseudo queries per test image (default: 0, retrieval.pseudo_per_image)"
    )
    ap.add_argument(
        "--timing",
        action="store_true",
        help="write <results_dir>/stages.csv: wall time and peak memory of each stage (rank 0's process)",
    )
    args = ap.parse_args(argv)

    import torch.distributed as dist

    from avg_lib.runs import pipeline
    from avg_lib.runs.config import load_config

    cfg = load_config(args.profile, json.loads(args.overrides))
    world, rank = _join_processes(cfg.generator.uses_cuda())
    t0 = time.perf_counter()
    run = pipeline.setup(cfg, progress=rank == 0)
    seeds = args.seeds or list(run.cfg.main_table.seeds)
    pseudo = args.pseudo if args.pseudo is not None else [0, run.cfg.retrieval.pseudo_per_image]
    stages = []

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        stages.append({"stage": name, "wall_s": time.perf_counter() - start, "peak_rss_mb_so_far": peak_mb})
        return out

    ds = timed("dataset", lambda: run.ds)
    timed("features + two-tower joint space", lambda: run.js)
    vt = timed("voken tokenizer", lambda: run.vt)
    if rank == 0:
        print(f"tokenizer: {vt.directory}")
    for seed in seeds:
        for p in pseudo:
            name = f"generator (seed {seed}, {p} pseudo queries)"
            tg = timed(name, lambda s=seed, p=p: run.with_seed(s).generator(p))
            if rank == 0:
                print(f"seed {seed}, pseudo {p}: val R@1 {tg.selected['val_R@1']:.2f} ({tg.directory})")
    if rank == 0:
        print(f"{world} process(es), {time.perf_counter() - t0:.0f} s")
        if args.timing:
            _write_stages(stages, run, ds, world)
    if world > 1:
        dist.destroy_process_group()


def _join_processes(cuda: bool) -> tuple[int, int]:
    """``(world size, rank)`` under torchrun (joining its process group; each rank on its LOCAL_RANK GPU where
    training runs on CUDA), ``(1, 0)`` in a single process."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")  # CPU tensors by gloo, GPU ones by nccl
    return world, dist.get_rank() if world > 1 else 0


def _write_stages(stages: list[dict], run, ds, world: int) -> None:
    """``<results_dir>/stages.csv``: each stage's wall time and peak memory, with the data set's size."""
    import pandas as pd
    import torch

    from avg_lib.results import write_csv

    table = pd.DataFrame(stages).assign(
        n_images=len(ds), n_captions=ds.n_captions(), processes=world, threads=torch.get_num_threads()
    )
    print(table.round(1).to_string(index=False))
    write_csv(table, f"{run.cfg.results_dir}/stages.csv", run.cfg.profile, run.cfg.seed, run.cfg.to_dict())


if __name__ == "__main__":
    main()
