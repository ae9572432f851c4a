"""``avg bench``: micro-benchmarks that back speed claims in the code. Today one: ``dropout``, torch's dropout
against :mod:`avg_lib.models.dropout`, alone and inside the training steps that use it (the decoding and
gallery-size benchmarks run in notebooks 05 and 08, and ``avg speed``)."""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from avg_lib.evaluation.efficiency import timed


def _swap_dropout(model: torch.nn.Module, make) -> torch.nn.Module:
    """Replace every :class:`avg_lib.models.dropout.Dropout` of ``model`` by ``make(p)`` (in place)."""
    from avg_lib.models.dropout import Dropout

    for name, child in model.named_children():
        if isinstance(child, Dropout):
            setattr(model, name, make(child.p))
        else:
            _swap_dropout(child, make)
    return model


def dropout_benchmark(repeats: int = 20, seed: int = 0) -> pd.DataFrame:
    """Milliseconds of ``torch.nn.functional.dropout`` against :func:`avg_lib.models.dropout.dropout`, alone
    (activation shapes of the tokenizer and of the voken decoder's discriminative batches) and inside
    training steps: an RQ-VAE step (batch 256, the default tokenizer) and a forward + backward of a
    2-block, 256-wide voken decoder on 640 rows (64 captions x 10 sequences). Same seed, same inputs,
    best of ``repeats``; only the dropout differs."""
    from avg_lib.models.dropout import dropout

    torch.manual_seed(seed)
    rows = []

    def record(what, shape, fn_torch, fn_ours):
        t_torch, t_ours = timed(fn_torch, repeats), timed(fn_ours, repeats)
        rows.append(
            {
                "what": what,
                "shape": shape,
                "torch_ms": 1000 * t_torch,
                "avg_lib_ms": 1000 * t_ours,
                "speedup": t_torch / t_ours,
            }
        )

    for shape, p in (((256, 512), 0.1), ((1400, 256), 0.3), ((1400, 1024), 0.3)):
        x = torch.randn(shape)
        record(f"dropout p={p}", "x".join(map(str, shape)), lambda: F.dropout(x, p, True), lambda: dropout(x, p, True))

    rq = _rq_vae_steps(seed)
    record("RQ-VAE training step", "256 rows", rq["torch"], rq["ours"])
    texts, beams, depth, d = 64, 10, 3, 256
    dec = _decoder_steps(seed, texts, beams, depth, d)
    record("voken decoder forward + backward", f"{texts * beams}x{depth + 1}x{d}", dec["torch"], dec["ours"])
    return pd.DataFrame(rows)


def _rq_vae_steps(seed: int) -> dict:
    """A training step of the default RQ-VAE tokenizer on 256 rows, with torch's dropout and with ours."""
    from avg_lib.models import tokenizer

    cfg = tokenizer.TokenizerConfig()
    x, t = F.normalize(torch.randn(256, 256), dim=1), F.normalize(torch.randn(256, 256), dim=1)
    steps = {}
    for kind in ("torch", "ours"):
        torch.manual_seed(seed)
        m = tokenizer.RQVAE(256, cfg).train()
        if kind == "torch":
            _swap_dropout(m, torch.nn.Dropout)
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr)

        def step(m=m, opt=opt):
            loss = m.losses(x, t)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        steps[kind] = step
    return steps


def _decoder_steps(seed: int, texts: int, beams: int, depth: int, d: int) -> dict:
    """A forward + backward of a 2-block voken decoder on ``texts x beams`` rows, with torch's dropout and ours."""
    from avg_lib.models import generator

    memory, mask = torch.randn(texts, 16, 384), torch.ones(texts, 16, dtype=torch.bool)
    prefix = torch.randn(texts * beams, depth + 1, d)
    steps = {}
    for kind in ("torch", "ours"):
        torch.manual_seed(seed)
        blocks = torch.nn.ModuleList(generator.DecoderBlock(d, 4, 0.3, 384) for _ in range(2)).train()
        if kind == "torch":
            _swap_dropout(blocks, torch.nn.Dropout)

        def step(blocks=blocks):
            h = prefix
            for blk in blocks:
                h = blk(h, blk.memory_kv(memory, mask), mask, beams)
            h.square().mean().backward()

        steps[kind] = step
    return steps


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(
        prog="avg bench",
        description="Micro-benchmarks that back speed claims in the code (the decoding "
        "and gallery-size benchmarks run in notebooks 05 and 08).",
    )
    ap.add_argument(
        "what",
        choices=["dropout"],
        help="dropout: torch's dropout against avg_lib.models.dropout, alone and inside training steps",
    )
    ap.add_argument("--repeats", type=int, default=20, help="best of this many timings (default 20)")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(dropout_benchmark(args.repeats).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
