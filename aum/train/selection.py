"""Model selection for the training engine: keep the weights that scored best on a validation split.

:class:`BestKeeper` is what :class:`aum.train.engine.Trainer` uses when it is given an ``evaluate`` hook and
``EngineConfig.select_metric``. Every improvement is written as ``checkpoints/best_step_XXXXXXXX.pt`` (the model's
state_dict plus the step, the metric and all evaluation numbers) and ``checkpoints/best`` names the current one.

Resume safety: the engine checkpoint stores the keeper's state (best step and score). A best file written after the
newest engine checkpoint belongs to a future that a resume replays, so :meth:`BestKeeper.load_state_dict` deletes
every best file newer than the resumed step; the file the checkpoint names is never deleted before a newer engine
checkpoint supersedes it (:meth:`BestKeeper.committed`).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from aum.atomic import atomic_write, atomic_write_text
from aum.train.state import read_pointer

log = logging.getLogger(__name__)

BEST_FORMAT = "aum-engine-best/1"
__all__ = ["BestKeeper", "best_checkpoint", "load_best"]


def best_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The best-on-validation weights file of a run (named by ``checkpoints/best``), or ``None``."""
    return read_pointer(Path(out_dir) / "checkpoints", "best")


def load_best(out_dir: str | os.PathLike) -> dict | None:
    """``{"format", "step", "metric", "score", "metrics", "model": state_dict}`` of a run's best weights (read with
    ``weights_only=True`` onto the CPU), or ``None`` when the run selected none."""
    path = best_checkpoint(out_dir)
    return None if path is None else torch.load(path, map_location="cpu", weights_only=True)


class BestKeeper:
    """Tracks the best value of ``metric`` (``mode`` ``"max"`` or ``"min"``) over evaluations and keeps those
    weights in ``ckpt_dir``. Ties keep the earlier step. Only rank 0 should call :meth:`update`."""

    def __init__(self, ckpt_dir: str | os.PathLike, metric: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"select_mode must be 'max' or 'min', got {mode!r}")
        self.ckpt_dir, self.metric, self.mode = Path(ckpt_dir), metric, mode
        self.step: int | None = None
        self.score: float | None = None
        self.metrics: dict = {}
        self._committed_step: int | None = None       # the best step the newest engine checkpoint names

    def path(self, step: int) -> Path:
        """File of the best weights found at ``step``."""
        return self.ckpt_dir / f"best_step_{step:08d}.pt"

    def better(self, score: float) -> bool:
        """Whether ``score`` beats the best so far (NaN never does)."""
        if not math.isfinite(score):
            return False
        if self.score is None:
            return True
        return score > self.score if self.mode == "max" else score < self.score

    def update(self, step: int, metrics: dict, module: torch.nn.Module) -> bool:
        """Consider the evaluation ``metrics`` of ``step``; on improvement save ``module``'s weights and return True.
        A missing ``metric`` key is an error naming the keys that were there."""
        if self.metric not in metrics:
            raise KeyError(f"evaluation returned no {self.metric!r} to select on (got {sorted(metrics)})")
        score = float(metrics[self.metric])
        if not self.better(score):
            return False
        previous = self.step
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {"format": BEST_FORMAT, "step": int(step), "metric": self.metric, "score": score,
                 "metrics": {k: float(v) for k, v in metrics.items()},
                 "model": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
        atomic_write(self.path(step), lambda f: torch.save(state, f))
        atomic_write_text(self.ckpt_dir / "best", self.path(step).name + "\n")
        self.step, self.score, self.metrics = int(step), score, state["metrics"]
        if previous is not None and previous != self._committed_step:
            self.path(previous).unlink(missing_ok=True)
        log.info("step %d: new best %s = %.6g", step, self.metric, score)
        return True

    def committed(self) -> None:
        """Call after an engine checkpoint that stores :meth:`state_dict` was written: older best files go."""
        self._committed_step = self.step
        for old in self.ckpt_dir.glob("best_step_*.pt"):
            if self.step is None or old != self.path(self.step):
                old.unlink(missing_ok=True)

    def state_dict(self) -> dict:
        """Plain data for the engine checkpoint (loads with ``weights_only=True``)."""
        return {"metric": self.metric, "mode": self.mode, "step": self.step, "score": self.score,
                "metrics": dict(self.metrics)}

    def load_state_dict(self, state: dict | None, resumed_step: int) -> None:
        """Restore from an engine checkpoint taken at ``resumed_step``: best files of later steps are deleted and
        the ``best`` pointer is set back to the checkpoint's best."""
        state = state or {}
        if state.get("metric") not in (None, self.metric):
            log.warning("resuming with select_metric %r; the checkpoint selected on %r: starting selection afresh",
                        self.metric, state.get("metric"))
            state = {}
        self.step, self.score = state.get("step"), state.get("score")
        self.metrics = dict(state.get("metrics") or {})
        self._committed_step = self.step
        for f in self.ckpt_dir.glob("best_step_*.pt"):
            if int(f.stem.rsplit("_", 1)[1]) > resumed_step:
                log.info("dropping %s: written after the checkpoint of step %d", f.name, resumed_step)
                f.unlink(missing_ok=True)
        pointer = self.ckpt_dir / "best"
        if self.step is not None and self.path(self.step).is_file():
            atomic_write_text(pointer, self.path(self.step).name + "\n")
        else:
            if self.step is not None:
                log.warning("best weights of step %d are missing: selection restarts", self.step)
                self.step, self.score, self.metrics = None, None, {}
            pointer.unlink(missing_ok=True)

    def summary(self) -> dict | None:
        """``{"step", "metric", "score", "metrics", "path"}`` of the best so far, or ``None``."""
        if self.step is None:
            return None
        return {"step": self.step, "metric": self.metric, "score": self.score, "metrics": dict(self.metrics),
                "path": str(self.path(self.step))}
