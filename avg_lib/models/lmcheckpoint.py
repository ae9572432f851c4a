"""An LM re-ranker's training and scoring, resumable where they stopped.

On a CPU one ``lm``-profile re-ranker takes about 50 minutes (three alignment epochs, then scoring the validation
and test beams); an interruption used to lose all of it. :class:`RerankCheckpoint` is one file per seed that
:meth:`avg_lib.models.lmrerank.LMReranker.fit` writes after every epoch (the trained modules, and mid-stage the
optimiser, random states and validation selection), once more when training ends (the selected state), and that
:func:`avg_lib.runs.lmroles.trained_reranker` extends with the scores of each chunk of queries as it scores them. A call
that finds the file goes on after what it holds, so a seed runs in pieces and ends as one uninterrupted call would
(the tests check this); :func:`avg_lib.runs.lmroles.trained_reranker` removes the file once its scores are stored.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from avg_lib.paths import repo_path


class RerankCheckpoint:
    """The resumable state of one re-ranker (``settings``: its ``LMRerankConfig`` as a dict) in ``path``; with
    ``path=None`` nothing is read or written (a plain, uninterrupted call)."""

    def __init__(self, path: str | os.PathLike | None, settings: dict):
        self.path, self.settings, self.blob = (None if path is None else repo_path(path)), settings, {}
        if self.path is not None and self.path.is_file():
            blob = torch.load(self.path, map_location="cpu", weights_only=False)
            if blob.get("settings") != settings:
                changed = sorted(k for k, v in settings.items() if blob.get("settings", {}).get(k) != v)
                raise ValueError(
                    f"{self.path}: a checkpoint of other LM re-ranker settings ({', '.join(changed)}); remove it"
                )
            self.blob = blob
        self.pieces = self.blob.get("pieces", 0) + 1  # this call's number
        self.start()

    def start(self) -> None:
        """Start this call's training clock (``fit`` does, so loading the LM is not training time)."""
        self._before, self._t0 = self.blob.get("seconds", 0.0), time.perf_counter()

    @property
    def epoch(self) -> int:
        """Epochs finished (alignment epochs first, then group epochs)."""
        return self.blob.get("epoch", 0)

    def seconds(self) -> float:
        """Training seconds: those of earlier calls plus this call's so far (not meant for after training)."""
        return self._before + time.perf_counter() - self._t0

    def restore(self, modules: dict) -> list[dict]:
        """Load the saved states into ``modules`` (name -> module); the training history saved with them."""
        for name, state in self.blob.get("modules", {}).items():
            modules[name].load_state_dict(state)
        return list(self.blob.get("history", []))

    @property
    def loop(self) -> dict | None:
        """The stage's loop state (:func:`avg_lib.models.generator.training.loop_state`) if the file stopped
        mid-stage."""
        return self.blob.get("loop")

    def save_epoch(self, epoch: int, epochs: int, modules: dict, history: list, loop: dict | None = None) -> None:
        """After ``epoch`` of ``epochs`` (all stages): the states of ``modules``, and ``loop`` (a
        :func:`~avg_lib.models.generator.training.loop_state`) to go on mid-stage; without it, the stage ended with its
        selected state."""
        states = {name: m.state_dict() for name, m in modules.items()}
        self._write(
            epoch=epoch, epochs=epochs, modules=states, loop=loop, history=list(history), seconds=self.seconds()
        )

    def scores(self, split: str) -> np.ndarray | None:
        """The scores of ``split``'s first queries, saved by :meth:`save_scores` (``None``: none yet)."""
        return self.blob.get("scores", {}).get(split)

    def score_seconds(self) -> float:
        """Seconds spent scoring in earlier calls."""
        return self.blob.get("score_seconds", 0.0)

    def save_scores(self, split: str, scores: np.ndarray, seconds: float) -> None:
        """``split``'s scores so far, with the scoring seconds of every call so far."""
        self._write(scores={**self.blob.get("scores", {}), split: np.asarray(scores)}, score_seconds=seconds)

    def remove(self) -> None:
        if self.path is not None and self.path.is_file():
            self.path.unlink()

    def _write(self, **fields) -> None:
        from avg_lib.results import write_file

        self.blob = {**self.blob, **fields, "settings": self.settings, "pieces": self.pieces}
        if self.path is not None:
            write_file(self.path, lambda f: torch.save(self.blob, f))  # atomically: never half a checkpoint


def progress(path) -> dict:
    """How far the re-ranker that wrote ``path`` got, read without loading its tensors: ``epoch`` (finished),
    ``epochs``, training ``seconds``, ``pieces`` (calls so far) and ``scored``, which queries it has scored (text:
    ``", 256 val queries scored"``, empty before scoring)."""
    blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    scored = "".join(f", {len(v)} {split} queries scored" for split, v in blob.get("scores", {}).items())
    return {k: blob[k] for k in ("epoch", "epochs", "seconds", "pieces")} | {"scored": scored}
