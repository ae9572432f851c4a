"""Free-text search over a profile's whole gallery with its trained models: AVG (constrained decoding of voken
sequences, each hit shown with its vokens) beside the two-tower model (exact cosine search). Backs ``avg search``;
callable from a notebook too."""

from __future__ import annotations

import numpy as np
import pandas as pd

from avg_lib.retrieval.trie import VokenTrie
from avg_lib.runs import pipeline


def _caption(ds, i: int, width: int = 48) -> str:
    text = ds.items[i].captions[0]
    return text if len(text) <= width else text[: width - 1] + "…"


def search_models(profile: str, queries: list[str], top: int = 5, pseudo: bool = True) -> list[pd.DataFrame]:
    """:func:`search_run` on the run of ``profile``."""
    return search_run(pipeline.setup(profile, progress=False), queries, top, pseudo)


def search_run(run: pipeline.Run, queries: list[str], top: int = 5, pseudo: bool = True) -> list[pd.DataFrame]:
    """One table per query: AVG's ``top`` images (rank, id, sequence log-probability, vokens, first caption, image
    path) then the two-tower model's (cosine in the joint space). ``pseudo``: AVG trained with the profile's
    pseudo queries, as in its main table. Trains nothing itself; wrap in :func:`avg_lib.cache.reading_only` to
    make a missing model an error rather than a training run."""
    ds, ids = run.ds, run.vt.ids
    model = run.generator(run.cfg.retrieval.pseudo_per_image if pseudo else 0).model
    beams = max(top, model.cfg.num_beams)
    found = model.retrieve(list(queries), VokenTrie(ids.codes), num_beams=beams)
    q = run.js.embed_queries(list(queries))
    sims = q @ run.js.image.T
    nearest = np.argsort(-sims, axis=1)[:, :top]
    label = "AVG + pseudo queries" if pseudo else "AVG"
    tables = []
    for n in range(len(queries)):
        rows = []
        for rank, (i, s) in enumerate(zip(found.items[n, :top].tolist(), found.scores[n, :top].tolist()), 1):
            if i >= 0:
                rows.append((label, rank, i, f"log p {s:.2f}", "-".join(map(str, ids.codes[i].tolist()))))
        rows += [("two-tower", r, int(i), f"cos {sims[n, i]:.3f}", "") for r, i in enumerate(nearest[n], 1)]
        table = pd.DataFrame(
            [
                {
                    "method": m,
                    "rank": r,
                    "id": ds.items[i].id,
                    "score": s,
                    "vokens": v,
                    "caption": _caption(ds, i),
                    "image": ds.items[i].image,
                }
                for m, r, i, s, v in rows
            ]
        )
        tables.append(table.drop(columns="image") if table["image"].isna().all() else table)
    return tables
