"""One command line for everything that is not a notebook step: ``python -m avg_lib COMMAND`` (or ``avg COMMAND``
once the package is installed). ``avg --help`` lists the commands; ``avg COMMAND --help`` gives each one's options.

    avg run --profile smoke                 the notebooks in order (what run_all.sh calls)
    avg search "a red heart"                top images by AVG (with their vokens) and by the two-tower model
    avg train --profile default             a profile's models into the cache (torchrun: several processes)
    avg speed --profile efficiency          the timing studies on a random-weight generator
    avg compare results/ OTHER_RUN/         two runs' per-seed tables, row by row, against seed noise
    avg cut --changes '{...}'               a generator-setting change against the profile's, paired over seeds
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module whose main(argv) runs it, one line for the listing)
COMMANDS = {
    "run": ("runs.runner", "run the notebooks of a profile in order with papermill (run_all.sh)"),
    "search": ("tools.cli", "search the gallery with a text query: AVG's and the two-tower model's top images"),
    "train": ("tools.train", "train a profile's models into the cache (one process, or several under torchrun)"),
    "speed": ("tools.speed", "timing studies without trained models: decoding benchmark, gallery-size efficiency"),
    "compare": ("evaluation.rundiff", "compare two runs' per-seed tables row by row against the seeds' own spread"),
    "cut": ("tools.cutcheck", "a change of generator settings against the profile's, a paired check over seeds"),
    "growth": ("tools.growth", "fit how each stage's cost grows with the data set, from timed dry runs"),
    "bench": ("tools.bench", "micro-benchmarks behind speed claims in the code (dropout)"),
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="avg",
        description="AVG replication: text-to-image retrieval as autoregressive token-to-voken generation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<9} {h}" for n, (_, h) in COMMANDS.items()),
    )
    ap.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="the command's own options (COMMAND --help)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        _parser().print_help()
        return 0
    args = _parser().parse_args(argv[:1])
    module, _ = COMMANDS[args.command]
    run = search if module == "tools.cli" else importlib.import_module(f"avg_lib.{module}").main
    rc = run(argv[1:])
    return int(rc or 0)


def search(argv: list[str] | None = None) -> int:
    """``avg search "QUERY" [--profile P] [--top N]``: from the profile's trained models (never training one)."""
    ap = argparse.ArgumentParser(prog="avg search", description=search.__doc__.split(":", 1)[1].strip())
    ap.add_argument("query", nargs="+", help="one or more text queries")
    ap.add_argument("--profile", default="default", help="the profile whose trained models to use (default: default)")
    ap.add_argument("--top", type=int, default=5, help="images to list per method (default 5)")
    ap.add_argument("--no-pseudo", action="store_true", help="AVG trained without pseudo queries")
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from avg_lib import cache
    from avg_lib.runs.search import search_models

    hf_logging.disable_progress_bar()  # the encoders' weight-loading bars would sit above the answer

    try:
        with cache.reading_only():
            tables = search_models(args.profile, args.query, args.top, pseudo=not args.no_pseudo)
    except cache.NotCached as e:
        print(
            f"avg search: the profile {args.profile!r} has no trained models yet ({e}); "
            f"run ./run_all.sh --profile {args.profile} first",
            file=sys.stderr,
        )
        return 2
    for query, table in zip(args.query, tables):
        print(f"\n{query!r}\n{table.to_string(index=False)}")
    return 0


if __name__ == "__main__":  # pragma: no cover - python -m avg_lib.tools.cli
    sys.exit(main())
