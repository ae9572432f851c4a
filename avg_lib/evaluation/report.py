"""``results/README.md``: every table and figure of one results directory, and the paper's claims
checked against them. Built only from the CSVs and PNGs in that directory (nothing typed in by
hand), so it always matches them; a missing table is reported as missing, not skipped silently.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from avg_lib.evaluation.findings import HEADLINE_MARKERS, agreement_lines, claims, efficiency_claims, headline, read_csv
from avg_lib.evaluation.tables import markdown
from avg_lib.results import environment_note, write_readme, write_text

# The best public anchor for the paper's numbers (docs/paper.md: an independent re-run of the
# authors' code with T5-base, ComGTIR, SIGIR-AP 2025). Different data and models: only the
# *relations* between rows are compared with this run, never the values.
ANCHORS = pd.DataFrame(
    [
        {
            "setting": "AVG, no pseudo queries",
            "Flickr30K R@1/5/10": "40.8 / 75.1 / 84.2",
            "MS-COCO 5K R@1/5/10": "19.3 / 45.7 / 59.7",
        },
        {
            "setting": "AVG, with pseudo queries",
            "Flickr30K R@1/5/10": "49.4 / 81.6 / 89.0",
            "MS-COCO 5K R@1/5/10": "23.2 / 51.1 / 64.1",
        },
        {
            "setting": "GRACE structured IDs (as cited)",
            "Flickr30K R@1/5/10": "37.4 / 59.5 / 66.2",
            "MS-COCO 5K R@1/5/10": "16.7 / 39.2 / 50.3",
        },
        {
            "setting": "CLIP ViT-L/14-336 zero-shot",
            "Flickr30K R@1/5/10": "68.7 / 90.6 / 95.2",
            "MS-COCO 5K R@1/5/10": "37.8 / 62.4 / 72.2",
        },
    ]
)

PROVENANCE = ["profile", "seed", "git_commit", "created_utc"]

# the tables of avg speed's README; the last is written by that command only, never by a notebook
SPEED_TABLES = (
    "decoding_benchmark.csv",
    "decode_profile.csv",
    "efficiency.csv",
    "efficiency_crossovers.csv",
    "training_speed.csv",
)
SPEED_ONLY = ("training_speed.csv",)
OPTIONAL = ("lm_table.csv", "generator_backends.csv")  # from studies most profiles switch off: not listed as missing
SECTIONS = [  # (csv, title, figures, columns to show (None = all but provenance))
    (
        "main_table.csv",
        "Main table (test gallery)",
        ["main_recall.png"],
        [
            "method",
            "pseudo_queries",
            "R@1",
            "R@1_std",
            "R@1_low",
            "R@1_high",
            "R@5",
            "R@10",
            "rSum",
            "rSum_std",
            "latency_ms",
            "n_seeds",
        ],
    ),
    (
        "claims.csv",
        "Paired comparisons behind the claims (difference = b - a, 95% interval over test images)",
        [],
        ["claim", "metric", "seeds", "a_recall", "b_recall", "difference", "low", "high", "p_value", "verdict"],
    ),
    (
        "rerank.csv",
        "Re-ranking AVG's K beams: candidate ceiling (recall@K of the beams) and each re-ranker (`n_seeds`: the seeds "
        "that decoded every K; the main table's re-ranked rows have every seed)",
        ["rerank.png"],
        ["k", "pseudo_queries", "reranker", "ceiling", "R@1", "R@1_std", "R@5", "R@10", "latency_ms", "n_seeds"],
    ),
    (
        "ablation.csv",
        "Ablations (AVG without pseudo queries)",
        ["ablation.png"],
        ["variant", "R@1", "R@1_std", "R@5", "R@10", "rSum", "delta_R@1", "val_R@1", "n_seeds"],
    ),
    (
        "ablation_claims.csv",
        "Ablations as paired tests (difference = full AVG - variant, 95% interval over test images)",
        [],
        ["claim", "metric", "seeds", "a_recall", "b_recall", "difference", "low", "high", "p_value", "verdict"],
    ),
    (
        "analysis_codebook_size.csv",
        "Analysis: codebook size (generative stage only: no discriminative training)",
        ["analysis_codebook_size.png"],
        ["codebook_size", "voken_length", "identifier_depth", "R@1", "R@1_low", "R@1_high", "R@5", "R@10", "val_R@1"],
    ),
    (
        "analysis_voken_length.csv",
        "Analysis: voken length (generative stage only: no discriminative training)",
        ["analysis_voken_length.png"],
        ["codebook_size", "voken_length", "identifier_depth", "R@1", "R@1_low", "R@1_high", "R@5", "R@10", "val_R@1"],
    ),
    (
        "analysis_beam_size.csv",
        "Analysis: beam size",
        ["analysis_beam_size.png"],
        ["beam_size", "R@1", "R@1_low", "R@1_high", "R@5", "R@10", "latency_ms"],
    ),
    (
        "efficiency.csv",
        "Efficiency: query cost against gallery size",
        ["efficiency.png"],
        [
            "method",
            "gallery_size",
            "latency_ms_batch1",
            "queries_per_s_batched",
            "build_s",
            "bytes_per_image",
            "setting",
            "recall_at_10",
            "hardware",
        ],
    ),
    ("efficiency_crossovers.csv", "Efficiency: crossover gallery sizes", [], None),
    (
        "two_tower.csv",
        "Two-tower baseline and the ridge reference (notebook 01)",
        ["two_tower_recall.png", "two_tower_training.png"],
        None,
    ),
    (
        "tokenizer.csv",
        "Voken tokenizer (notebook 02)",
        [
            "tokenizer_training.png",
            "tokenizer_collisions.png",
            "voken_codebook_usage.png",
            "voken_prefix1_grid.png",
            "voken_prefix2_grid.png",
            "voken_map.png",
            "voken_queries.png",
        ],
        None,
    ),
    ("generator_training.csv", "Generator training (notebook 04)", ["generator_training.png"], None),
    ("generator_backends.csv", "Generator backends (notebook 04)", [], None),
    (
        "lm_table.csv",
        "Language models as generator and re-ranker (notebook 09)",
        ["lm_recall.png", "lm_generator_training.png"],
        None,
    ),
    ("evaluation.csv", "AVG against two-tower at the profile seed (notebook 05)", ["evaluation_recall.png"], None),
    (
        "decoding_benchmark.csv",
        "Decoding speed: batched trie vs transformers' prefix_allowed_tokens_fn on the AVG generator (notebook 05)",
        [],
        None,
    ),
    (
        "decode_profile.csv",
        "Where decoding time goes: operations and time per query by batch size, under torch.profiler "
        "(notebook 05; `avg speed --what profile`)",
        [],
        None,
    ),
    (
        "training_speed.csv",
        "Training speed: seconds per generator epoch by device and precision (`--what training`, "
        "avg_lib.tools.trainbench)",
        [],
        None,
    ),
]


def _section(d: Path, csv: str, title: str, figs: list[str], cols: list[str] | None) -> list[str] | None:
    """The README lines of one table (its columns ``cols``, provenance left out) and its figures; ``None`` if
    the table is not in ``d``."""
    df = read_csv(d, csv)
    if df is None:
        return None
    show = [c for c in (cols or df.columns) if c in df.columns and c not in PROVENANCE]
    lines = [f"## {title}", "", f"`{csv}`", "", markdown(df[show])]
    return lines + [f"![{f}](figures/{f})" for f in figs if (d / "figures" / f).is_file()] + [""]


def write_results_readme(results_dir: str | Path, profile: str, paired: tuple[Path, str] | None = None) -> Path:
    """Write ``<results_dir>/README.md`` from the tables and figures in that directory (the runner calls
    this after the notebooks it ran). ``paired``: ``(results directory, profile)`` of a run whose shared claims
    are set beside this one's."""
    d = Path(results_dir)
    prov = read_csv(d, "provenance.csv")
    made_by = (
        "Generated by `run_all.sh` (`avg_lib/evaluation/report.py`, after the notebooks it ran) from the CSVs and "
        "figures in this directory; do not edit by hand. Every CSV row carries its profile, seed(s), git commit and "
        "creation time, and `config/<table>.json` holds the run configuration that produced the table."
    )
    lines = [
        "Recall is in percent over the test gallery (a hit is the query's own image; identifiers are unique). "
        "`latency_ms` is the mean time per query when queries are processed in batches of 64, excluding the frozen "
        "text encoder for every method (two-tower, one-tower and AVG alike); the efficiency table adds batch-1 "
        "latency.",
        "",
    ]
    if prov is not None and len(prov):
        lines += [
            "## Run",
            "",
            markdown(prov),
            f"Sum of the wall times above: {prov['wall_s'].sum() / 60:.1f} min. "
            "A notebook rerun with cached models (`run_all.sh --from NN`) is much faster than in a fresh run; "
            "`provenance.csv` keeps the latest run of each notebook. " + environment_note(prov),
            "",
        ]
    lines += ["## The paper's claims, checked on this run", ""]
    found = claims(d)
    lines += [f"- {c}" for c in found] if found else ["- (no tables to check yet)"]
    lines += [
        "",
        "Anchors (docs/paper.md; other datasets and models, so only the relations above are comparable):",
        "",
        markdown(ANCHORS),
    ]
    if paired is not None and paired[0].resolve() != d.resolve():
        lines += agreement_lines(d, paired[0], profile, paired[1])
    missing = []
    for section in SECTIONS:
        if section[0] in SPEED_ONLY:
            continue
        table = _section(d, *section)
        if table is None and section[0] not in OPTIONAL:
            missing.append(section[0])
        lines += table or []
    if missing:
        lines += ["## Not produced in this run", "", ", ".join(f"`{m}`" for m in missing), ""]
    return write_readme(d, f"Results: profile `{profile}`", made_by, lines)


def write_speed_readme(results_dir: str | Path, profile: str) -> Path:
    """``<results_dir>/README.md`` for the timing studies of ``avg speed`` (random-weight model):
    their claims, then each table and the figure, from the files in that directory."""
    d = Path(results_dir)
    made_by = (
        f"Generated by `avg speed --profile {profile}` (`avg_lib/evaluation/report.py`) from the CSVs in this "
        "directory; do not edit by hand. The generator has the default architecture with random weights (decoding "
        "cost does not depend on the weights); every ratio below was measured in one run on one machine "
        "(`hardware` column; provenance columns and `config/` as for every table)."
    )
    lines = [
        "## Claims, checked on these tables",
        "",
        *[f"- {c}" for c in efficiency_claims(d)],
        "",
    ]
    for section in SECTIONS:
        if section[0] in SPEED_TABLES:
            lines += _section(d, *section) or []
    return write_readme(d, f"Timing studies: profile `{profile}`", made_by, lines)


def write_readme_headline(readme: str | Path, results_dir: str | Path) -> bool:
    """Replace the headline block of ``readme`` (between :data:`findings.HEADLINE_MARKERS`) with the headline table
    of ``results_dir``; returns whether the file changed. A README without the markers is an error naming it."""
    readme, start, end = Path(readme), *HEADLINE_MARKERS
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no headline block (the lines {start} and {end})")
    table = headline(Path(results_dir))
    if table is None:
        return False
    head, rest = text.split(start, 1)
    new = f"{head}{start}\n{table}{end}{rest.split(end, 1)[1]}"
    if new != text:
        write_text(new, readme)
    return new != text
