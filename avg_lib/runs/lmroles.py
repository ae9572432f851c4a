"""Notebook 09: a pretrained causal LM in the paper's two LM roles, trained in-process like every other model.

The paper's LLaMA generator (prompt → vokens) and its SEED-LLaMA re-ranker are both pretrained causal LMs. Here
both train on the profile's own chain (data, joint space, voken tokenizer, AVG's generator) with the settings of
the profile section ``language_models``, at the seeds it names, and are compared with the profile's generator on
the same seeds and test queries with notebook 06's statistics (95% intervals over test images, paired
differences and their verdicts).

* The **generator** is the run's cached generator stage with ``backend: decoder`` and the section's settings
  (:meth:`avg_lib.runs.pipeline.Run.generator`): resumable at its last finished epoch, on the device the section names.
* The **re-ranker** (:class:`avg_lib.models.lmrerank.LMReranker`) is a cached stage of its own under AVG's generator
  (:func:`trained_reranker`): it learns from AVG's top ``rerank_k`` beams for ``train_queries`` training captions,
  scores the validation and test beams, and keeps a checkpoint while it trains and scores, so an interrupted
  run resumes there. Its scores enter the one re-ranking path of notebook 06
  (:func:`avg_lib.runs.experiments.rerank_results`), beside the embedding re-ranker, alone and fused with AVG.

``language_models.lm``: ``smollm2`` (SmolLM2-135M-Instruct, offline after ``bash scripts/setup.sh --lm``), a local
``AutoModelForCausalLM`` directory, or ``tiny-random`` (a random 2-layer Llama built on the spot, what the smoke
profile and the tests run: the same code path in seconds, numbers meaningless).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from avg_lib import cache
from avg_lib.evaluation import claims, stats
from avg_lib.models import generator, rerank, two_tower
from avg_lib.paths import data_dir, repo_path
from avg_lib.runs import experiments, stages

TINY = "tiny-random"
RERANKER_VERSION = 1  # bump when a change alters what the LM re-ranker stage produces


def tiny_random_lm(directory: str | Path, hidden: int = 32, layers: int = 2, tie: bool = True) -> Path:
    """Save a random-weight ``LlamaForCausalLM`` (SmolLM2's architecture, grouped-query attention included) with
    MiniLM's WordPiece tokenizer (its separator doubling as end of sequence) like a pretrained checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from avg_lib.models.generator.config import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    tok.eos_token = tok.sep_token
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def lm_path(lm: str) -> str | None:
    """The ``lm_path`` both LMs load: ``None`` for SmolLM2, the tiny random Llama's directory (built once), or the
    named directory, which must exist."""
    if lm == "smollm2":
        return None
    if lm == TINY:
        directory = data_dir() / "lm" / "tiny-random-llama"
        return str(directory if (directory / "config.json").is_file() else tiny_random_lm(directory))
    path = repo_path(lm)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"language_models.lm = {lm!r}: {path} holds no causal LM (no config.json); "
            f"name a saved AutoModelForCausalLM directory, 'smollm2' or '{TINY}'"
        )
    return str(path)


def settings(run) -> tuple[dict, dict]:
    """``(generator changes, re-ranker settings)``: the section's own, the LM and the device, over the profile's
    generator settings and :class:`~avg_lib.models.lmrerank.LMRerankConfig`'s defaults."""
    lmc = run.cfg.language_models
    where = {"lm_path": lm_path(lmc.lm), "device": lmc.device}
    return {**lmc.generator, "backend": "decoder", **where}, {**lmc.reranker, **where}


# --- the LM as the generator -------------------------------------------------------------------------------


def _recall_row(name: str, seed: int, ranked: np.ndarray, targets: np.ndarray) -> dict:
    """R@K of one ranked list with each 95% interval over test images."""
    hits = stats.hits(ranked, targets)
    row = {"model": name, "seed": seed, **{f"R@{k}": 100 * hits[:, i].mean() for i, k in enumerate(stats.KS)}}
    return row | stats.interval_columns(hits, targets)


def generator_rows(run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The LM generator against the profile's own at ``language_models.seeds`` (both without pseudo queries, on
    the same chain): ``(runs, claims)``, the runs with each generator's training seconds and selected epoch."""
    changes, _ = settings(run)
    name_a, name_b = generator.backend_label(run.cfg.generator), None
    rows, ranked_a, ranked_b, targets = [], {}, {}, None
    for s in run.cfg.language_models.seeds:
        r = run.with_seed(s)
        targets = r.split("test").targets
        for name, ranked, kw in ((name_a, ranked_a, {}), (None, ranked_b, changes)):
            tg = r.generator(0, **kw)
            name = name or generator.backend_label(tg.model.cfg)
            row, ranked[s] = experiments.avg_result(r, 0, return_ranked=True, **kw)
            rows.append(
                _recall_row(name, s, ranked[s], targets)
                | {"train_seconds": tg.meta.get("train_seconds"), "selected_epoch": row["selected_epoch"]}
            )
            name_b = name if kw else name_b
    claim = claims.compare(
        f"The {name_b} generator beats the {name_a} one", name_a, ranked_a, name_b, ranked_b, targets
    )
    return pd.DataFrame(rows), claims.table([claim])


def generator_history(run) -> pd.DataFrame:
    """Epoch by epoch, the LM generator's training and the profile's own generator's at every seed of
    ``language_models.seeds``: losses and validation R@1, with ``generator``, ``seed`` and ``model`` (one curve
    each in :func:`history_figure`) columns."""
    changes, _ = settings(run)
    parts = []
    for s in run.cfg.language_models.seeds:
        for kw in ({}, changes):
            tg = run.with_seed(s).generator(0, **kw)
            parts.append(tg.history.assign(model=generator.backend_label(tg.model.cfg), seed=s))
    both = pd.concat(parts, ignore_index=True)
    return both.assign(generator=both["model"], model=both["model"] + ", seed " + both["seed"].astype(str))


def history_figure(run, history: pd.DataFrame):
    """:func:`generator_history` drawn: losses and validation R@1 by epoch, one colour per generator, one line
    style per seed; the discriminative stage's start marked where both generators start it at the same epoch."""
    from avg_lib.evaluation.viz import generator_curves

    lm_epochs = settings(run)[0].get("epochs", run.cfg.generator.epochs)
    same = lm_epochs == run.cfg.generator.epochs
    return generator_curves(history, disc_start=lm_epochs if same else None, colour_by="generator")


# --- the LM as the re-ranker -------------------------------------------------------------------------------


def reranker_inputs(run, tg, k: int, train_queries: int) -> dict:
    """``{split: (inputs, AVG's top-k beams)}`` for the LM re-ranker: ``train_queries`` training captions (a
    sample drawn with the run's seed), every validation and every test caption. The LM reads each candidate image
    as its joint-space embedding (``image_feats``) and the query as text (no text features)."""
    out = {}
    for name in ("train", "val", "test"):
        inp = rerank.inputs(run.js, run.split(name))
        if name == "train" and train_queries < len(inp.texts):
            pick = np.sort(np.random.default_rng(run.cfg.seed).choice(len(inp.texts), train_queries, replace=False))
            inp = dataclasses.replace(
                inp, texts=[inp.texts[i] for i in pick], text_feats=inp.text_feats[pick], targets=inp.targets[pick]
            )
        cand = rerank.candidates(tg.model, inp, k, run.cfg.retrieval.batch_size)
        images = two_tower.embed(run.js.model, image_feats=inp.image_feats)
        n = len(inp.texts)
        out[name] = (rerank.RerankInputs(inp.texts, np.zeros((n, 0)), images, inp.gallery_codes, inp.targets), cand)
    return out


class StoredScores:
    """The trained LM re-ranker as notebook 06's re-rankers are used: ``score`` returns the scores its stage
    computed for the validation or test beams (the same beams, checked), and ``rerank_ms`` is the time per query
    its stage measured for them."""

    name = "LM"

    def __init__(self, directory: Path):
        with np.load(directory / "scores.npz") as z:
            self._by = {s: (z[f"{s}_items"], z[s]) for s in ("val", "test")}
        self.info = json.loads((directory / "reranker.json").read_text())
        self.rerank_ms = self.info["score_ms_per_query"]

    def score(self, inputs, cand) -> np.ndarray:
        for items, scores in self._by.values():
            if items.shape == cand.items.shape and np.array_equal(items, cand.items):
                return scores
        raise ValueError(f"LM re-ranker: these beams ({cand.items.shape}) are not the ones its stage scored")


def trained_reranker(run, progress: bool = True) -> StoredScores:
    """Train (or load) the LM re-ranker of ``run`` on its generator's beams (cached under that generator's folder,
    keyed by the re-ranker settings, ``rerank_k`` and ``train_queries``) and return its stored scores."""
    from avg_lib import results
    from avg_lib.models.lmcheckpoint import RerankCheckpoint
    from avg_lib.models.lmrerank import LMRerankConfig, LMReranker

    lmc = run.cfg.language_models
    tg = run.generator(0)
    cfg = LMRerankConfig(**{"seed": run.cfg.seed, **settings(run)[1]})

    def build(tmp: Path) -> None:
        data = reranker_inputs(run, tg, lmc.rerank_k, lmc.train_queries)
        ck = RerankCheckpoint(stages.checkpoint_beside(tmp), dataclasses.asdict(cfg))
        width = data["train"][0].image_feats.shape[1]
        rr = LMReranker(run.vt.ids.codebook_size, run.vt.ids.depth, run.vt.codebooks, cfg, image_dim=width)
        rr.fit(*data["train"], progress=progress, val=data["val"], checkpoint=ck)
        scores, t1, before = {}, time.perf_counter(), ck.score_seconds()
        for s in ("val", "test"):

            def keep(part, s=s):
                ck.save_scores(s, part, before + time.perf_counter() - t1)

            scores[s] = rr.score(*data[s], progress=progress, done=ck.scores(s), keep=keep)
            if s == "val":
                keep(scores[s])
        score_ms = 1000 * (before + time.perf_counter() - t1) / sum(len(data[s][1].items) for s in scores)
        items = {f"{s}_items": data[s][1].items for s in scores}
        np.savez(tmp / "scores.npz", **scores, **items)
        info = {
            "model": generator.backend_label(rr.gen.cfg),
            "reranker": dataclasses.asdict(cfg),
            "k": lmc.rerank_k,
            "train_queries": len(data["train"][0].texts),
            "train_seconds": round(rr.train_seconds, 1),
            "train_pieces": ck.pieces,  # > 1: resumed from its checkpoint, training and scoring seconds summed
            "score_ms_per_query": round(score_ms, 2),
            "history": rr.history,
            "hardware": results.hardware(cfg.device),
        }
        (tmp / "reranker.json").write_text(json.dumps(info, indent=1) + "\n")
        ck.remove()

    out = cache.trained(
        tg.directory,
        "lm-reranker",
        "LM re-ranker",
        RERANKER_VERSION,
        dataclasses.asdict(cfg),
        build,
        extra={"k": lmc.rerank_k, "train_queries": lmc.train_queries},
    )
    return StoredScores(out)


def reranker_rows(run, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The LM re-ranker on AVG's top ``rerank_k`` beams beside AVG's order and the embedding re-ranker, alone and
    fused (notebook 06's re-ranking path), at ``language_models.seeds``: ``(runs, claims)``."""
    lmc, rows, ranked, targets, model = run.cfg.language_models, [], {}, None, None
    for s in lmc.seeds:
        r = run.with_seed(s)
        lm = trained_reranker(r, progress)
        model, targets = lm.info["model"], r.split("test").targets
        found, lists = experiments.rerank_results(r, 0, ks=[lmc.rerank_k], rerankers=["embedding", lm])
        for row in found:
            name = "AVG order" if row["reranker"] == "none (AVG order)" else row["reranker"]
            items = lists[(lmc.rerank_k, row["reranker"])]
            ranked.setdefault(name, {})[s] = items
            rows.append(
                {"reranker": name, "seed": s, "k": row["k"], "ceiling": row["ceiling"]}
                | {c: v for c, v in _recall_row(name, s, items, targets).items() if c not in ("model", "seed")}
                | {"fusion_weight": row["fusion_weight"], "rerank_ms": row["rerank_ms"]}
            )
    checks = [
        (f"The {model} re-ranker beats AVG's own order", "AVG order", "LM"),
        (f"AVG's log-probability fused with the {model} re-ranker beats AVG's own order", "AVG order", "fusion (LM)"),
        (f"The fused {model} re-ranker beats the fused embedding re-ranker", "fusion (embedding)", "fusion (LM)"),
    ]
    claim = claims.table([claims.compare(c, a, ranked[a], b, ranked[b], targets) for c, a, b in checks])
    return pd.DataFrame(rows), claim


# --- both roles in the main table's form --------------------------------------------------------------------


def table(gen_runs: pd.DataFrame, rr_runs: pd.DataFrame) -> pd.DataFrame:
    """Every row of both comparisons in the main table's form: per system the mean recall over seeds, the spread
    of R@1 across seeds, the mean of the per-seed 95% interval bounds and the seeds."""
    rr = rr_runs.assign(model=rr_runs["reranker"].map(_rerank_label(rr_runs)))
    rows = []
    for role, runs in (("generator", gen_runs), ("re-ranker", rr)):
        for model, g in runs.groupby("model", sort=False):
            rows.append(
                {
                    "system": f"generator: {model}" if role == "generator" else model,
                    "role": role,
                    **{m: g[m].mean() for m in ("R@1", "R@1_low", "R@1_high", "R@5", "R@10")},
                    "R@1_std": g["R@1"].std(ddof=1) if len(g) > 1 else float("nan"),
                    "n_seeds": len(g),
                    "seeds": ",".join(map(str, sorted(g["seed"]))),
                    **({"ceiling": g["ceiling"].mean()} if "ceiling" in g else {}),
                }
            )
    return pd.DataFrame(rows)


def _rerank_label(rr_runs: pd.DataFrame) -> dict[str, str]:
    k = int(rr_runs["k"].iloc[0])
    names = {"AVG order": f"AVG's top {k}, its own order", "LM": f"AVG + LM re-ranker (top {k})"}
    names |= {"fusion (LM)": f"AVG + LM re-ranker fused with AVG (top {k})"}
    names |= {"embedding": f"AVG + embedding re-ranker (top {k})"}
    names |= {"fusion (embedding)": f"AVG + embedding re-ranker fused with AVG (top {k})"}
    return {r: names.get(r, r) for r in rr_runs["reranker"].unique()}


def figure(lm_table: pd.DataFrame, title: str):
    """Test R@1 of every row (bars, generators blue, re-ranked lists orange) with its mean 95% interval."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(lm_table) + 1.2))
    y = range(len(lm_table))[::-1]
    err = [lm_table["R@1"] - lm_table["R@1_low"], lm_table["R@1_high"] - lm_table["R@1"]]
    colours = ["tab:blue" if r == "generator" else "tab:orange" for r in lm_table["role"]]
    ax.barh(list(y), lm_table["R@1"], xerr=err, color=colours, capsize=3)
    ax.set_yticks(list(y), lm_table["system"], fontsize=8)
    ax.set_xlabel("test R@1 (%), mean over seeds (whiskers: 95% interval over test images)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def settings_text(run) -> str:
    """One paragraph: what this profile's notebook 09 trains, on what, or that it is switched off."""
    lmc = run.cfg.language_models
    if not lmc.enabled:
        return (
            f"language_models.enabled is false in profile {run.cfg.profile!r}: nothing to do here. "
            "`./run_all.sh --profile lm` runs this notebook (hours on a 2-core CPU); see docs/language_models.md."
        )
    gen, rr = settings(run)
    shown = {k: v for k, v in gen.items() if k != "lm_path"}, {k: v for k, v in rr.items() if k != "lm_path"}
    return (
        f"LM {lmc.lm!r} on {lmc.device}, seeds {list(lmc.seeds)}. Generator settings over the profile's: {shown[0]}. "
        f"Re-ranker settings: {shown[1]}, on AVG's top {lmc.rerank_k} beams, learning from {lmc.train_queries} "
        "training captions."
    )
