"""Training-state checkpoints of :class:`aum.train.engine.Trainer` on disk: how they are named, written atomically,
rotated and found again, and the bookkeeping a resume needs (changed settings, the data position under another
global batch, ``metrics.jsonl`` lines a killed run wrote after its last checkpoint).

These are the engine's own resumable files (model, optimizer, scheduler, scaler, sampler, RNG streams), not the
model-weight files of :mod:`aum.checkpoint`. Layout inside ``out_dir/checkpoints``::

    step_00000500.pt   # the state after 500 optimizer steps; the last ``keep_last`` ones are kept
    last               # text file: the name of the newest complete checkpoint

Every file is written to a temporary name, fsynced and renamed, so a run killed at any moment leaves either the
old or the new file; ``last`` is updated only after its checkpoint is complete. The files load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from aum.atomic import DiskFullError, atomic_write

log = logging.getLogger(__name__)

__all__ = ["CKPT_FORMAT", "step_checkpoint_path", "write_train_state",
           "latest_checkpoint", "load_train_state", "read_train_state", "changed_settings", "rescale_offset",
           "truncate_metrics"]

CKPT_FORMAT = "aum-engine/1"


def step_checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """``ckpt_dir/step_XXXXXXXX.pt``: the checkpoint holding the state after ``step`` optimizer steps."""
    return ckpt_dir / f"step_{step:08d}.pt"


def write_train_state(ckpt_dir: Path, path: Path, state: dict, keep_last: int) -> None:
    """Save ``state`` to ``path`` in ``ckpt_dir`` atomically, point ``last`` at it and delete all but the newest
    ``keep_last`` ``step_*.pt`` files (``keep_last == 0`` keeps all). Temporary files a run killed while writing
    left behind are removed first. A full device raises :class:`DiskFullError` naming ``path`` and the last good
    checkpoint (the one a resume would load), which is left intact."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_dir.glob(".*.tmp-*"):      # left by a run killed while writing
        stale.unlink(missing_ok=True)
    try:
        atomic_write(path, lambda f: torch.save(state, f))
        atomic_write(ckpt_dir / "last", lambda f: f.write(path.name.encode() + b"\n"))
    except DiskFullError as e:
        good = _newest_in(ckpt_dir)
        raise DiskFullError(f"{e}; the last good checkpoint is {good or 'none (no checkpoint was completed)'}") \
            from e.__cause__
    if keep_last > 0:
        for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep_last]:
            old.unlink(missing_ok=True)


def read_pointer(ckdir: Path, name: str) -> Path | None:
    """The file that the pointer ``ckdir/name`` (a one-line text file) names, or ``None`` when the pointer is
    absent or names a missing file (logged)."""
    pointer = ckdir / name
    if not pointer.is_file():
        return None
    target = ckdir / pointer.read_text().strip()
    if target.is_file():
        return target
    log.warning("%s names %s, which is missing", pointer, target.name)
    return None


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run: the one ``checkpoints/last`` names, else the highest
    ``step_*.pt``; ``None`` when there is none."""
    return _newest_in(Path(out_dir) / "checkpoints")


def _newest_in(ckdir: Path) -> Path | None:
    target = read_pointer(ckdir, "last")
    if target is not None:
        return target
    steps = sorted(ckdir.glob("step_*.pt"))
    return steps[-1] if steps else None


def load_train_state(path: str | Path) -> dict:
    """Read an engine checkpoint safely (``weights_only=True``) onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_train_state(path: str | Path) -> dict:
    """:func:`load_train_state`, raising ``RuntimeError`` when the file is not an engine checkpoint
    (its ``format`` is not :data:`CKPT_FORMAT`)."""
    ck = load_train_state(path)
    if ck.get("format") != CKPT_FORMAT:
        raise RuntimeError(f"{path} is not an aum engine checkpoint (format {ck.get('format')!r})")
    return ck


def changed_settings(saved: dict, config: Any) -> dict[str, tuple[Any, Any]]:
    """``{name: (saved value, current value)}`` of the config fields that differ between a checkpoint's
    ``config`` dict and ``config``; ``resume``, ``out_dir`` and ``max_steps`` are expected to change and left out,
    and a saved list equal to the current tuple is no change."""
    return {k: (v, getattr(config, k)) for k, v in saved.items()
            if k not in ("resume", "out_dir", "max_steps") and hasattr(config, k)
            and v != getattr(config, k) and not (isinstance(v, (list, tuple)) and tuple(v) ==
                                                 tuple(getattr(config, k)))}


def rescale_offset(offset: int, saved_global_batch: int, global_batch: int) -> int:
    """The batch offset within the epoch under ``global_batch`` that starts nearest (at or before) where
    ``offset`` batches of ``saved_global_batch`` samples end; ``offset`` itself when the two are equal."""
    if saved_global_batch != global_batch:
        return offset * saved_global_batch // global_batch
    return offset


def truncate_metrics(metrics_path: Path, step: int) -> None:
    """Drop the lines of ``metrics.jsonl`` (and blank ones) whose ``step`` is after ``step``: a killed run wrote
    them after the checkpoint being resumed. Rewritten atomically; nothing happens when the file is missing."""
    if metrics_path.is_file():
        lines = [ln for ln in metrics_path.read_text().splitlines()
                 if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write(metrics_path, lambda f: f.write("".join(ln + "\n" for ln in lines).encode()))
