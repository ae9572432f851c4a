"""One call sets a notebook up: ``run = pipeline.setup(profile)``.

:class:`Run` holds the validated run configuration (:mod:`avg_lib.runs.config`) and hands out the
cached stages as typed objects, each computed on first use and loaded from ``data/`` afterwards:

=====================  ===============================================================
``run.ds``             the dataset (loaded, not yet encoded)
``run.js``             the joint space (data, frozen features, two-tower model)
``run.vt``             the voken tokenizer and the unique identifiers of every image
``run.tokenizer(...)`` a variant tokenizer (ablations and sweeps: settings changed)
``run.generator(...)`` a trained generator (pseudo queries, stage, settings changed)
``run.split(name)``    the queries and gallery of a split
``run.with_seed(s)``   the same run with another seed in every trained stage
=====================  ===============================================================

and writes what a notebook records: ``run.record(table, name)`` (CSV with provenance, and the
run configuration as JSON in ``<results_dir>/config/<name>.json``), ``run.figure(fig, name)``,
``run.done(**numbers)`` (the last line of a notebook: its numbers and wall time as JSON).
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import cached_property
from pathlib import Path

import numpy as np

from avg_lib import data
from avg_lib.models import generator, identifiers
from avg_lib.paths import data_dir, repo_path
from avg_lib.results import save_figure, write_csv, write_text
from avg_lib.runs import config, splits, stages


class Run:
    def __init__(
        self,
        cfg: config.RunConfig,
        text_states: generator.TextStateCache | None = None,
        progress: bool = True,
        _seeds: dict | None = None,
    ):
        self.cfg = cfg
        self.out = repo_path(cfg.results_dir)
        self.figures = self.out / "figures"
        self.progress = progress
        # frozen-encoder states shared by every generator of this run (and its other seeds)
        if text_states is None:  # kept under data/ too, so the next notebook reuses what this one encodes
            text_states = generator.TextStateCache(directory=data_dir() / "text_states")
        self.text_states = text_states
        self.started = time.time()
        self._seeds = _seeds if _seeds is not None else {}  # the runs of other seeds, shared by all of them
        self._seeds.setdefault(cfg.seed, self)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"Run(profile={c.profile!r}, seed={c.seed}, data={c.data.dataset}, encoder={c.encoder.name}, "
            f"tokenizer K={c.tokenizer.codebook_size} L={c.tokenizer.levels}, generator={c.generator.backend}, "
            f"results={c.results_dir})"
        )

    # --- stages -------------------------------------------------------------------------------
    @cached_property
    def dataset(self) -> data.CaptionedImages:
        return data.load_dataset(self.cfg.data.dataset, **self.cfg.data.kwargs)

    @cached_property
    def js(self) -> stages.JointSpace:
        return stages.joint_space(
            self.cfg.data, self.cfg.encoder, self.cfg.two_tower, progress=self.progress, ds=self.dataset
        )

    @cached_property
    def vt(self) -> stages.VokenTokenizer:
        return stages.voken_tokenizer(self.js, self.cfg.tokenizer, progress=self.progress)

    @property
    def ds(self) -> data.CaptionedImages:
        return self.dataset

    def tokenizer(self, **changes) -> stages.VokenTokenizer:
        """The run's tokenizer with ``changes`` to its settings (e.g. ``align_weight=0.0``)."""
        if not changes:
            return self.vt
        cfg = dataclasses.replace(self.cfg.tokenizer, **changes)
        return stages.voken_tokenizer(self.js, cfg, progress=self.progress)

    def generator(
        self,
        pseudo: int = 0,
        *,
        vt: stages.VokenTokenizer | None = None,
        stage: str = "final",
        ids: identifiers.Identifiers | None = None,
        codebooks: np.ndarray | None = None,
        force: bool = False,
        pseudo_recipe: str | None = None,
        **changes,
    ) -> stages.TrainedGenerator:
        """A generator trained with ``pseudo`` pseudo queries per test image (0: none; made by the profile's
        ``retrieval.pseudo_recipe``, or ``pseudo_recipe``) on the identifiers of ``vt`` (default: the run's
        tokenizer) or ``ids``, with ``changes`` to the profile's generator settings."""
        cfg = dataclasses.replace(self.cfg.generator, **changes)
        recipe = self.cfg.retrieval.recipe
        if pseudo_recipe is not None:
            recipe = {**recipe, "recipe": pseudo_recipe}
        return stages.voken_generator(
            self.js,
            vt or self.vt,
            cfg,
            pseudo,
            force=force,
            progress=self.progress,
            stage=stage,
            ids=ids,
            codebooks=codebooks,
            text_states=self.text_states,
            pseudo_recipe=recipe,
        )

    def split(self, name: str = "test", ids: identifiers.Identifiers | None = None) -> splits.RetrievalSplit:
        return splits.retrieval_split(self.js, ids if ids is not None else self.vt, name)

    def with_seed(self, seed: int) -> Run:
        """The same run with ``seed`` in every trained stage (made once per seed, then reused)."""
        if seed not in self._seeds:
            other = Run(self.cfg.with_seed(seed), self.text_states, self.progress, self._seeds)
            other.started = self.started
            if "dataset" in self.__dict__:  # the data does not depend on the seed
                other.dataset = self.dataset
        return self._seeds[seed]

    # --- recording ----------------------------------------------------------------------------
    def record(self, table, name: str, seed: int | str | None = None) -> Path:
        """``<results_dir>/<name>.csv`` with provenance columns; the run configuration goes beside it."""
        return write_csv(
            table,
            self.out / f"{name}.csv",
            profile=self.cfg.profile,
            seed=self.cfg.seed if seed is None else seed,
            config=self.cfg.to_dict(),
        )

    def figure(self, fig, name: str) -> Path:
        return save_figure(fig, self.figures / f"{name}.png")

    def text(self, text: str, name: str) -> Path:
        return write_text(text, self.out / name)

    def done(self, **numbers) -> None:
        """Print the notebook's headline numbers and wall time as one JSON line (the last cell)."""
        print(json.dumps({**numbers, "wall_s": round(time.time() - self.started, 1)}, default=str))


def setup(profile: str | config.RunConfig = "smoke", overrides: dict | None = None, progress: bool = True) -> Run:
    """The run of ``profile`` (a name in ``profiles/`` or a :class:`~avg_lib.runs.config.RunConfig`), with optional
    ``overrides`` merged over it like a profile that extends it. Prints what it set up."""
    cfg = profile if isinstance(profile, config.RunConfig) else config.load_config(profile, overrides)
    run = Run(cfg, progress=progress)
    print(run)
    return run
