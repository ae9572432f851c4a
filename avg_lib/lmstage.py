"""Notebook 09: a pretrained causal LM in the paper's two LM roles, inside ``run_all.sh``.

The paper's LLaMA generator (prompt → vokens) and its SEED-LLaMA re-ranker are both pretrained causal LMs. This
stage trains both on the profile's own chain (data, joint space, voken tokenizer, AVG's generator) with the
settings of the profile section ``language_models``, at the seeds it names, and compares them with the profile's
generator on the same seeds and test queries, with the statistics of notebook 06 (95% intervals over test
images, paired differences and their verdicts).

It reuses the jobs that do the same work across machines (:mod:`avg_lib.genjob`, :mod:`avg_lib.rerankjob`):
export what each LM learns from into a work directory under the data cache, train one LM per seed, then
compare. The work directory's name carries a key of everything that changes it, and a seed is trained only when
its outputs are missing, so an interrupted run resumes at the seed it was training (a generator within it, at its
last finished epoch: :func:`avg_lib.genjob.train` keeps a checkpoint). The comparisons are written
to ``<results_dir>/lm/`` (generator) and ``<results_dir>/lm_rerank/`` (re-ranker), each with its README;
:func:`table` gathers every row in the main table's form (mean and spread over seeds).

``language_models.lm``: ``smollm2`` (SmolLM2-135M-Instruct, offline after ``bash scripts/setup.sh --lm``), a
local ``AutoModelForCausalLM`` directory, or ``tiny-random`` (a random 2-layer Llama built on the spot, what the
smoke profile and the tests run: the same code path in seconds, numbers meaningless).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import REPO_ROOT, data_dir, repo_path

TINY = "tiny-random"
CHAIN = ("data", "encoder", "two_tower", "tokenizer", "generator", "retrieval")  # what the exported jobs hold
# generator settings added after the work directories' keys: left out of them at this (their neutral) value, so
# that directories made before keep their names
KEYED_LATER = {"lm_cache_frozen": False}


def tiny_random_lm(directory: str | Path, hidden: int = 32, layers: int = 2, tie: bool = True) -> Path:
    """Save a random-weight ``LlamaForCausalLM`` (SmolLM2's architecture, grouped-query attention included) with
    MiniLM's WordPiece tokenizer (its separator doubling as end of sequence) like a pretrained checkpoint."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from .generator.config import minilm_dir

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


def overrides(run) -> tuple[dict, dict]:
    """The settings the LM generator and the LM re-ranker train with, over the job's: the section's own, the LM
    and the device."""
    lmc = run.cfg.language_models
    where = {"lm_path": lm_path(lmc.lm), "device": lmc.device}
    return {**lmc.generator, "backend": "decoder", **where}, {**lmc.reranker, **where}


def work_dirs(run) -> dict[str, tuple[Path, Path]]:
    """``{role: (job, trained)}``: where each role's job is exported and its LMs trained, named by keys of what
    changes them (the chain for the job; the LM, its device and settings for the trained models: one directory
    holds every seed, so adding a seed trains only that one)."""
    from .cache import key

    lmc, conf = run.cfg.language_models, run.cfg.to_dict()
    chain = {s: conf[s] for s in CHAIN}
    chain["generator"] = {k: v for k, v in chain["generator"].items() if k not in KEYED_LATER or KEYED_LATER[k] != v}
    trained = {"lm": lmc.lm, "device": lmc.device}
    root = data_dir() / "lm" / run.cfg.data.dataset
    gen = root / f"generator-{key(chain)}"
    rr = root / f"reranker-{key({**chain, 'k': lmc.rerank_k, 'train_queries': lmc.train_queries})}"
    return {
        "generator": (gen, gen / f"trained-{key({**trained, 'settings': lmc.generator})}"),
        "reranker": (rr, rr / f"trained-{key({**trained, 'settings': lmc.reranker})}"),
    }


def missing(directory: Path, seeds) -> list[int]:
    """The seeds without a finished ``seed<s>.json`` in ``directory`` (each job writes it last)."""
    return [s for s in seeds if not (directory / f"seed{s}.json").is_file()]


def progress_table(run) -> pd.DataFrame:
    """Where the profile's LM trainings stand, read from the work directories (nothing trained or exported): per
    role and seed, ``state`` (``trained``, ``interrupted`` at a checkpoint, with any queries scored, ``exported``,
    ``to export``), epochs, training seconds and pieces so far, a trained generator's test R@1, the directory."""
    import json

    from .generator.training import checkpoint_progress
    from .genjob import checkpoint_file
    from .lmcheckpoint import progress as rerank_progress

    rows = []
    for role, (job, trained) in work_dirs(run).items():
        for s in run.cfg.language_models.seeds:
            info, ckpt = trained / f"seed{s}.json", checkpoint_file(trained, s)
            row = {"role": role, "seed": s, "state": "exported" if (job / f"seed{s}.json").is_file() else "to export"}
            if info.is_file():
                d = json.loads(info.read_text())
                row |= {"state": "trained", "epochs": str(d.get("epochs_run", "")), "train_s": d.get("train_seconds")}
                row |= {"pieces": d.get("train_pieces", 1), "test_R@1": d.get("test", {}).get("R@1")}
                row["on"] = d.get("hardware")
            elif ckpt.is_file():
                c = checkpoint_progress(ckpt) if role == "generator" else rerank_progress(ckpt)
                row |= {"epochs": f"{c['epoch']} of {c['epochs']}", "train_s": c["seconds"], "pieces": c["pieces"]}
                row["state"] = "interrupted" + c.get("scored", "")
            rows.append(row | {"directory": str(trained)})
    columns = ["role", "seed", "state", "epochs", "train_s", "pieces", "test_R@1", "on", "directory"]
    table = pd.DataFrame(rows).reindex(columns=columns).round({"train_s": 0, "test_R@1": 2})
    return table.astype({"train_s": "Int64", "pieces": "Int64"})


def _role(run, role: str):
    """``(job module, settings to train with, export options, results subfolder)`` of ``role``."""
    from . import genjob, rerankjob

    lmc = run.cfg.language_models
    if role == "generator":
        return genjob, overrides(run)[0], {}, "lm"
    return rerankjob, overrides(run)[1], {"k": lmc.rerank_k, "train_queries": lmc.train_queries}, "lm_rerank"


def export_missing(run, role: str) -> Path:
    """Export ``role``'s job for the profile's seeds it lacks; its directory."""
    job_module, _, export_kwargs, _ = _role(run, role)
    job = work_dirs(run)[role][0]
    todo = missing(job, run.cfg.language_models.seeds)
    if todo:
        job_module.export(run, todo, job, **export_kwargs)
    return job


def _job_rows(run, role: str, progress: bool):
    """Export ``role``'s job for the seeds it lacks, train the seeds without a trained model, then compare the
    profile's seeds into ``<results_dir>/<role's subfolder>/``."""
    job_module, settings, _, out = _role(run, role)
    job, trained = export_missing(run, role), work_dirs(run)[role][1]
    todo = missing(trained, run.cfg.language_models.seeds)
    if todo:
        job_module.train(job, settings, trained, progress=progress, seeds=todo)
    return job_module.compare(
        run, job, trained, repo_path(run.cfg.results_dir) / out, seeds=run.cfg.language_models.seeds
    )


def generator_rows(run, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The LM generator against the profile's own at ``language_models.seeds``: ``(runs, claims)``, also written
    to ``<results_dir>/lm/``."""
    return _job_rows(run, "generator", progress)


def reranker_rows(run, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The LM re-ranker on AVG's top ``rerank_k`` beams beside AVG's order and the embedding re-ranker, alone and
    fused, at ``language_models.seeds``: ``(runs, claims)``, also written to ``<results_dir>/lm_rerank/``."""
    return _job_rows(run, "reranker", progress)


def generator_history(run) -> pd.DataFrame:
    """Epoch by epoch, the LM generator's training and the profile's own generator's at every seed of
    ``language_models.seeds`` the LM has finished: losses and validation R@1, with ``generator``, ``seed`` and
    ``model`` (both: one curve each in :func:`history_figure`) columns."""
    import json

    from .generator import backend_label
    from .genjob import seed_histories

    job, trained = work_dirs(run)["generator"]
    lm = seed_histories(trained, run.cfg.language_models.seeds)
    if lm is None:
        raise FileNotFoundError(f"{trained}: no LM generator of seeds {list(run.cfg.language_models.seeds)} trained")
    own = []
    for s in map(int, lm["seed"].unique()):  # the profile's generator as the job compared it (its pseudo-query setting)
        pseudo = json.loads((job / f"seed{s}.json").read_text())["pseudo_per_image"]
        own.append(run.with_seed(s).generator(pseudo).history.assign(model=backend_label(run.cfg.generator), seed=s))
    both = pd.concat([*own, lm], ignore_index=True)
    return both.assign(generator=both["model"], model=both["model"] + ", seed " + both["seed"].astype(str))


def history_figure(run, history: pd.DataFrame):
    """:func:`generator_history` drawn: losses and validation R@1 by epoch, one colour per generator, one line
    style per seed; the discriminative stage's start marked where both generators start it at the same epoch."""
    from .viz import generator_curves

    lm_epochs = overrides(run)[0].get("epochs", run.cfg.generator.epochs)
    same = lm_epochs == run.cfg.generator.epochs
    return generator_curves(history, disc_start=lm_epochs if same else None, colour_by="generator")


def hand_off(run, out: str | Path = "data/lm/to-gpu", roles=("generator", "reranker")) -> str:
    """Prepare the profile's LM trainings to run on a lent GPU: export what each role lacks, copy each role's
    exported seeds (only those without a trained model) to ``out/<role>`` (a folder inside the checkout that git
    ignores, so a device call can carry it) and return the commands: on the GPU, ``scripts/gpu_lm.sh`` trains
    them with this profile's settings into the folder name this stage looks for; here, the archives unpack into
    the work directories, and ``./run_all.sh --profile <profile>`` then only compares."""
    import json
    import shutil

    from .genjob import seed_files
    from .results import git_commit

    out, lines, commit = repo_path(out), [], git_commit()  # the copy on the GPU names the commit it came from
    for role in roles:
        _, settings, _, _ = _role(run, role)
        job, trained = export_missing(run, role), work_dirs(run)[role][1]
        todo = missing(trained, run.cfg.language_models.seeds)
        if not todo:
            lines.append(f"# {role}: every seed trained ({trained})")
            continue
        staged = out / role
        staged.mkdir(parents=True, exist_ok=True)
        for old in seed_files(staged):  # an earlier hand-off's seeds (trained since, or not to train now)
            old.unlink()
            old.with_suffix(".npz").unlink(missing_ok=True)
        for info in seed_files(job, todo):
            for f in (info, info.with_suffix(".npz")):
                shutil.copy2(f, staged / f.name)
        given = json.dumps({k: v for k, v in settings.items() if k not in ("backend", "device")})[1:-1]
        inside = staged.is_relative_to(REPO_ROOT)
        rel = staged.relative_to(REPO_ROOT) if inside else staged
        seeds = " ".join(map(str, todo))
        carry = f"carry {str(rel)!r}" if inside else "outside the checkout: copy it into a git-ignored folder to carry"
        lines += [
            f"# {role}, seeds {seeds}: on the GPU (after `bash scripts/gpu_lm.sh stage ...`; {carry}):",
            f"AVG_GIT_COMMIT={commit} AVG_LM_TRAINED={trained.name} AVG_LM_OVERRIDES='{given}' "
            f"bash scripts/gpu_lm.sh {role} {rel} {seeds}",
            *([f"# the LM at {settings['lm_path']} must be at that path there too"] if settings.get("lm_path") else []),
            "# then, here, each archive it returns:",
            *[f"tar -xzf {role}-{trained.name}-seed{s}.tar.gz -C {job}" for s in todo],
        ]
    lines.append(f"./run_all.sh --profile {run.cfg.profile}   # trains nothing already trained; compares")
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m avg_lib.lmstage", description=hand_off.__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="lm-gpu")
    ap.add_argument("--out", default="data/lm/to-gpu", help="a folder inside the checkout that git ignores")
    ap.add_argument("--roles", nargs="+", default=["generator", "reranker"], choices=["generator", "reranker"])
    ap.add_argument("--status", action="store_true", help="where each seed of each role stands; exports nothing")
    a = ap.parse_args(argv)
    from . import pipeline

    run = pipeline.setup(a.profile, progress=False)
    status = progress_table(run).astype(object).fillna("").to_string(index=False) if a.status else None
    print(status or hand_off(run, a.out, a.roles))


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
    """One paragraph: what this profile's stage trains, on what, or that it is switched off."""
    lmc = run.cfg.language_models
    if not lmc.enabled:
        return (
            f"language_models.enabled is false in profile {run.cfg.profile!r}: nothing to do here. "
            "`./run_all.sh --profile lm` runs this stage (hours on a 2-core CPU); see docs/language_models.md."
        )
    gen, rr = overrides(run)
    shown = {k: v for k, v in gen.items() if k != "lm_path"}, {k: v for k, v in rr.items() if k != "lm_path"}
    return (
        f"LM {lmc.lm!r} on {lmc.device}, seeds {list(lmc.seeds)}. Generator settings over the profile's: {shown[0]}. "
        f"Re-ranker settings: {shown[1]}, on AVG's top {lmc.rerank_k} beams, learning from {lmc.train_queries} "
        f"training captions. Work directories: "
        + ", ".join(f"{role}: {dirs[1]}" for role, dirs in work_dirs(run).items())
    )


if __name__ == "__main__":
    main()
