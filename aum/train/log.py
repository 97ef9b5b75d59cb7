"""What a training run of :class:`aum.train.engine.Trainer` writes for people to read: ``log.txt`` (the log records of
the ``aum`` loggers), ``metrics.jsonl`` (one JSON object a line: training windows and evaluations) and TensorBoard
event files under ``tb/``; plus :class:`LogWindow`, the running means between two training log lines.

Only rank 0 writes these; the engine calls nothing here on the other ranks.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

log = logging.getLogger(__name__)

__all__ = ["LOG_FORMAT", "log_file", "tensorboard_writer", "append_metrics", "add_scalars", "LogWindow"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def log_file(out_dir: Path) -> Iterator[logging.Handler]:
    """Copy log records of level INFO and above to ``out_dir/log.txt`` (appended) while the context is open:
    a handler on the root logger, and the ``aum`` logger lowered to INFO if it was quieter. Both are undone on
    exit."""
    aum_logger = logging.getLogger("aum")
    prev_level = aum_logger.level
    out_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out_dir / "log.txt")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    if aum_logger.getEffectiveLevel() > logging.INFO:
        aum_logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        aum_logger.setLevel(prev_level)


def tensorboard_writer(out_dir: Path, step: int):
    """A ``SummaryWriter`` on ``out_dir/tb`` that drops events after ``step`` left by a killed run (none to drop
    when ``step`` is 0); ``None``, with a warning, when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return None
    return SummaryWriter(str(out_dir / "tb"), purge_step=step + 1 if step else None)


def append_metrics(out_dir: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``out_dir/metrics.jsonl``."""
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def add_scalars(writer, prefix: str, values: Mapping[str, float], step: int) -> None:
    """``writer.add_scalar(f"{prefix}/{name}", value, step)`` for each of ``values``; nothing when ``writer`` is
    None."""
    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(f"{prefix}/{k}", v, step)


class LogWindow:
    """The optimizer steps since the last training log line: their summed loss, the running sums of the
    ``step_fn`` metrics (and ``grad_norm``) per name, and when the window opened."""

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        """Start an empty window at time ``now`` (``time.perf_counter()``)."""
        self.t, self.steps, self.loss, self.sums, self.counts = now, 0, 0.0, {}, {}

    def add(self, metrics: Mapping[str, Any] | None) -> None:
        """Add one value of each metric (a tensor stays on its device until :meth:`record`)."""
        for k, v in (metrics or {}).items():
            self.sums[k] = self.sums.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else float(v))
            self.counts[k] = self.counts.get(k, 0) + 1

    def add_step(self, loss: float) -> None:
        """Count one finished optimizer step with loss ``loss``."""
        self.steps, self.loss = self.steps + 1, self.loss + loss

    def record(self, step: int, lr: float, samples_per_step: int, elapsed: Callable[[], float]) -> dict:
        """The ``metrics.jsonl`` record of the window ending at ``step`` (mean loss, ``lr``, samples per second,
        ``elapsed()`` seconds of training, the mean of each metric); then a new window starts."""
        now = time.perf_counter()
        rec = {"step": step, "loss": self.loss / self.steps, "lr": lr,
               "samples_per_s": self.steps * samples_per_step / max(now - self.t, 1e-9),
               "elapsed": elapsed(), **{k: float(self.sums[k]) / self.counts[k] for k in self.sums}}
        self.reset(now)
        return rec
