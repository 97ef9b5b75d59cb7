"""The one training loop: self-supervised pretraining and supervised fine-tuning both run :class:`Trainer`.

A task supplies a model, a map-style dataset and ``step_fn(model, batch) -> (loss, metrics)``; the engine owns
everything else: device placement, DDP, mixed precision, gradient accumulation (``no_sync`` on all but the last
micro-step), clipping, AdamW/Adam with no decay on norms/biases/SSM parameters/embeddings, the learning-rate
schedule (:func:`lr_at`), a resumable deterministic sampler (:class:`ResumableBatchSampler`), atomic rotating
checkpoints that load with ``torch.load(weights_only=True)``, exact resume, a final checkpoint and a clean stop
at SIGTERM/SIGUSR1 (pre-emption) or SIGINT (Ctrl-C), optional periodic evaluation with best-on-validation model
selection (:mod:`aum.train.selection`), and logging (tqdm, ``metrics.jsonl``, TensorBoard, ``log.txt``, images).

The parts live in their own modules of :mod:`aum.train`: :mod:`aum.train.config` (:class:`EngineConfig`),
:mod:`aum.train.optim` (schedules, decay groups, optimizer), :mod:`aum.train.state` (checkpoint files and resume
bookkeeping), :mod:`aum.train.log` (``log.txt``, ``metrics.jsonl``, TensorBoard), :mod:`aum.train.run_env`
(deterministic mode, pre-emption signals), :mod:`aum.train.distributed` (DDP, seeds, RNG state, the sampler).

Layout of ``out_dir``::

    checkpoints/step_00000500.pt   # the last ``keep_last`` ones
    checkpoints/last               # text file: the name of the newest complete checkpoint
    checkpoints/best_step_00000400.pt  checkpoints/best   # best weights on validation (with ``evaluate``)
    metrics.jsonl  tb/  log.txt  images/step_00000500.png

Step numbers count optimizer steps done: ``step_00000004.pt`` holds the state after 4 steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from aum.data.samplers import ResumableBatchSampler
from aum.train.config import EngineConfig
from aum.train.distributed import barrier, init_distributed, move_to_device, rng_state, seed_everything, set_rng_state
from aum.train.log import LogWindow, add_scalars, append_metrics, log_file, tensorboard_writer
from aum.train.optim import build_optimizer, build_scheduler, default_param_groups
from aum.train.run_env import deterministic_mode, ignore_stop_signals, stop_signals
from aum.train.selection import BestKeeper
from aum.train.state import (CKPT_FORMAT, changed_settings, latest_checkpoint, read_train_state, rescale_offset,
                             step_checkpoint_path, truncate_metrics, write_train_state)

log = logging.getLogger(__name__)

__all__ = ["Trainer", "resolve_precision"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA devices that support it, ``fp16`` on other CUDA devices, ``fp32`` elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


# ---------------------------------------------------------------------------------------------- the trainer

class Trainer:
    """Trains ``model`` on ``dataset`` with ``step_fn`` under ``config``; :meth:`fit` runs or resumes the loop.

    ``step_fn(model, batch) -> (loss, metrics)`` receives the (possibly DDP-wrapped) model and a batch already on
    the device and runs the forward under the engine's autocast; the engine does the rest. ``visualise(model,
    batch, step, png_path)`` is called on rank 0 every ``image_every`` steps with the unwrapped model in eval
    mode under ``no_grad`` (the RNG streams are restored after it, so it cannot change training).
    ``export(model, out_dir)`` is called on rank 0 with the unwrapped model after every checkpoint save.
    ``param_groups`` replaces the default decay / no-decay split (each group's ``lr`` is scaled by the
    schedule). ``dataset_epoch_keys`` makes the sampler yield ``(epoch, index)`` keys.

    ``evaluate(model, step) -> {name: float}`` is called on rank 0 every ``eval_every`` steps and after the last
    step, like ``visualise`` (unwrapped model, eval mode, ``no_grad``, RNG streams restored; the other ranks wait).
    Its numbers go to ``metrics.jsonl`` (with ``"eval": true`` and the fractional ``epoch``) and TensorBoard; with
    ``select_metric`` the best weights are kept (:class:`aum.train.selection.BestKeeper`, resumable) and
    :meth:`fit` reports them under ``"best"``.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, config: EngineConfig,
                 step_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]],
                 collate_fn=None, visualise: Callable[[nn.Module, Any, int, Path], None] | None = None,
                 export: Callable[[nn.Module, Path], None] | None = None, param_groups=None,
                 dataset_epoch_keys: bool = False,
                 evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None):
        self.config = cfg = config
        self.dataset, self.step_fn, self.collate_fn = dataset, step_fn, collate_fn
        self.visualise, self.export, self.evaluate = visualise, export, evaluate
        self.dist = init_distributed(cfg.device)
        self.device = self.dist.device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.module = model.to(self.device)
        groups = default_param_groups(model, cfg.weight_decay) if param_groups is None else param_groups
        self.optimizer = build_optimizer(groups, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.model = model
        if self.dist.world_size > 1:
            self.model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False)
        self.sampler = ResumableBatchSampler(len(dataset), cfg.batch_size, self.dist.rank, self.dist.world_size,
                                             cfg.seed, dataset_epoch_keys)
        self.step = 0
        self.loss_smooth: float | None = None
        self._elapsed_before = 0.0
        self._saved_step: int | None = None
        self._last_ckpt: Path | None = None
        self._signal: int | None = None
        self.best = BestKeeper(self.ckpt_dir, cfg.select_metric, cfg.select_mode) if (
            evaluate is not None and cfg.select_metric) else None

    # ------------------------------------------------------------------ helpers

    @property
    def samples_per_step(self) -> int:
        """Samples in one optimizer step over all ranks."""
        return self.config.batch_size * self.config.grad_accum * self.dist.world_size

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _ckpt_path(self, step: int) -> Path:
        return step_checkpoint_path(self.ckpt_dir, step)

    def _save(self, step: int, consumed: int) -> Path:
        """Write the checkpoint of ``step`` (all ranks take part; rank 0 writes), rotate, export."""
        rng = rng_state()
        rngs = [rng]
        if self.dist.world_size > 1:
            rngs = [None] * self.dist.world_size if self.dist.is_main else None
            dist.gather_object(rng, rngs, dst=0)
        path = self._ckpt_path(step)
        self._saved_step, self._last_ckpt, self._saves = step, path, self._saves + 1
        if not self.dist.is_main:
            return path
        epoch, offset = self.sampler.position_after(consumed)
        state = {
            "format": CKPT_FORMAT, "step": step, "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": {"epoch": epoch, "offset": offset, "batches_per_epoch": self.sampler.batches_per_epoch,
                        "global_batch": self.config.batch_size * self.dist.world_size},
            "rng": rngs, "loss_smooth": self.loss_smooth, "elapsed": self._elapsed(),
            "best": self.best.state_dict() if self.best is not None else None,
            "config": dataclasses.asdict(self.config),
            "engine": {"precision": self.precision, "world_size": self.dist.world_size,
                       "device": self.device.type},
        }
        write_train_state(self.ckpt_dir, path, state, self.config.keep_last)
        if self.best is not None:
            self.best.committed()
        log.info("step %d: checkpoint %s", step, path)
        if self.export is not None:
            self.export(self.module, self.out_dir)
        return path

    def _resume(self) -> None:
        path = latest_checkpoint(self.out_dir) if self.config.resume else None
        if path is None:
            if self.best is not None and self.dist.is_main:
                self.best.load_state_dict(None, 0)     # a fresh start: no best weights of an earlier attempt
            return
        ck = read_train_state(path)
        diff = changed_settings(ck["config"], self.config)
        if diff:
            log.warning("resuming %s with changed settings (old, new): %s", path, diff)
        self.module.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if ck["scaler"] and self.scaler.is_enabled():        # empty when saved without fp16
            self.scaler.load_state_dict(ck["scaler"])
        s = ck["sampler"]
        epoch, offset = s["epoch"], s["offset"]
        global_batch = self.config.batch_size * self.dist.world_size
        if s["global_batch"] != global_batch:
            offset = rescale_offset(offset, s["global_batch"], global_batch)
            log.warning("global batch changed %d -> %d: the data position is approximate",
                        s["global_batch"], global_batch)
        self.sampler.set_position(epoch, offset)
        rngs = ck["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:
            log.warning("checkpoint has RNG states of %d ranks, this job has %d: reseeding",
                        len(rngs), self.dist.world_size)
            seed_everything(self.config.seed + self.dist.rank + 1_000_003 * ck["step"])
        self.step = self._saved_step = int(ck["step"])
        self._last_ckpt = path
        self.loss_smooth = ck.get("loss_smooth")
        self._elapsed_before = float(ck.get("elapsed", 0.0))
        if self.best is not None and self.dist.is_main:
            self.best.load_state_dict(ck.get("best"), self.step)
        if self.dist.is_main:        # drop lines a killed run wrote after this checkpoint
            truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, epoch, offset)

    def _elapsed(self) -> float:
        return self._elapsed_before + (time.perf_counter() - self._t0)

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum          # act on it between steps; logging here could deadlock

    @contextlib.contextmanager
    def _hook_mode(self):
        """For a rank-0 hook: the unwrapped model in eval mode under ``no_grad``; train mode and the RNG streams
        restored afterwards, so the hook cannot change training."""
        saved = rng_state()
        self.module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.module.train()
            set_rng_state(saved)

    def _call_visualise(self, batch: Any) -> None:
        path = self.out_dir / "images" / f"step_{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._hook_mode():
            self.visualise(self.module, batch, self.step, path)

    def _call_evaluate(self, writer) -> None:
        """Run the evaluate hook (rank 0), log its numbers, update the best weights; all ranks then meet."""
        if self.dist.is_main:
            with self._hook_mode():
                metrics = {k: float(v) for k, v in self.evaluate(self.module, self.step).items()}
            epoch, offset = self.sampler.position_after(self._consumed)
            rec = {"step": self.step, "eval": True, "epoch": epoch + offset / self.sampler.batches_per_epoch,
                   **metrics}
            if self.best is not None:
                self.best.update(self.step, metrics, self.module)
                rec.update(best_step=self.best.step, best_score=self.best.score)
            append_metrics(self.out_dir, rec)
            add_scalars(writer, "eval", metrics, self.step)
            log.info("step %d: eval %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        barrier()

    @contextlib.contextmanager
    def _run_context(self):
        """The log file, deterministic mode and the stop-signal handlers for the duration of :meth:`fit`."""
        with log_file(self.out_dir) if self.dist.is_main else contextlib.nullcontext():
            with deterministic_mode(self.config.deterministic), stop_signals(self._on_signal):
                yield

    def _writer(self):
        return tensorboard_writer(self.out_dir, self.step) if self.dist.is_main else None

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        """Train (or resume) until ``max_steps`` or a stop signal (SIGTERM, SIGUSR1, SIGINT: the step under way
        finishes and is checkpointed); returns ``{"step", "loss" (smoothed),
        "checkpoint" (path of the newest checkpoint), "stopped_by": "done"|"signal", "best": the best weights on
        validation (:meth:`aum.train.selection.BestKeeper.summary`) or None}``.

        Raises ``FloatingPointError`` naming the step when the loss (averaged over ranks) is not finite; nothing
        of that step is applied or saved.
        """
        cfg, main = self.config, self.dist.is_main
        self._t0 = time.perf_counter()
        self._signal, self._saves, self._consumed = None, 0, 0
        stopped_by = "done"
        with self._run_context():
            self.module.train()
            seed_everything(cfg.seed + self.dist.rank)
            self._resume()
            if main:
                n_params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
                log.info("training %.2fM parameters on %d x %s (%s), %d samples/step, from step %d to %d: %s",
                         n_params / 1e6, self.dist.world_size, self.device, self.precision,
                         self.samples_per_step, self.step, cfg.max_steps, dataclasses.asdict(cfg))
            start_batch = self.sampler.epoch * self.sampler.batches_per_epoch + self.sampler.offset
            loader = DataLoader(
                self.dataset, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                collate_fn=self.collate_fn, pin_memory=self.device.type == "cuda",
                worker_init_fn=ignore_stop_signals if cfg.num_workers else None,
                generator=torch.Generator().manual_seed(
                    (cfg.seed * 1_000_003 + self.dist.rank * 7919 + start_batch) % 2**63))
            it = iter(loader)
            writer = self._writer() if self.step < cfg.max_steps else None
            pbar = tqdm(total=cfg.max_steps, initial=self.step, disable=not main, dynamic_ncols=True,
                        desc="train", mininterval=1.0 if sys.stderr.isatty() else 30.0)
            try:
                stopped_by = self._loop(it, writer, pbar)
            finally:
                pbar.close()
                if writer is not None:
                    writer.close()
                # stop the loader's workers now: a traceback that still holds ``it`` would otherwise keep them
                # alive to interpreter exit, where joining them (they ignore SIGTERM) never ends
                getattr(it, "_shutdown_workers", lambda: None)()
                del it
            if self._saved_step != self.step:
                self._save(self.step, self._consumed)
            elif main and self.export is not None and self._saves == 0:
                self.export(self.module, self.out_dir)     # resumed a finished run: export its final state
            barrier()
            if stopped_by == "signal":
                log.warning("stopped by signal %s at step %d; checkpoint %s", self._signal, self.step,
                            self._last_ckpt)
        return {"step": self.step, "loss": self.loss_smooth,
                "checkpoint": str(self._last_ckpt) if self._last_ckpt else None, "stopped_by": stopped_by,
                "best": self.best.summary() if self.best is not None else None}

    def _next_batch(self, it, patience: int = 50):
        """The next usable batch. A collate function returns None when every clip of a batch was bad (the
        data set logged each one); after ``patience`` such batches in a row the data is declared unusable."""
        for _ in range(patience):
            batch = next(it)
            self._consumed += 1
            if batch is not None:
                return move_to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        raise RuntimeError(f"{patience} consecutive batches had no usable clip: the data set is unusable "
                           f"(see the bad-file log in {self.out_dir})")

    def _loop(self, it, writer, pbar) -> str:
        cfg, main, accum = self.config, self.dist.is_main, self.config.grad_accum
        ddp = isinstance(self.model, DistributedDataParallel)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._consumed = 0
        window = LogWindow()
        sps, step_t = 0.0, time.perf_counter()
        while self.step < cfg.max_steps:
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=self.device)
            for micro in range(accum):
                batch = self._next_batch(it)
                sync = self.model.no_sync() if ddp and micro < accum - 1 else contextlib.nullcontext()
                with sync:
                    with self._autocast():
                        loss, metrics = self.step_fn(self.model, batch)
                    self.scaler.scale(loss / accum).backward()
                loss_sum += loss.detach().float()
                if main:
                    window.add(metrics)
            shared = torch.stack([loss_sum / accum,
                                  torch.tensor(float(self._signal is not None), device=self.device)])
            if self.dist.world_size > 1:
                dist.all_reduce(shared)
            loss_val, stop = shared[0].item() / self.dist.world_size, shared[1].item() > 0
            if not math.isfinite(loss_val):
                raise FloatingPointError(f"non-finite loss ({loss_val}) at step {self.step + 1}")
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                if main:
                    window.add({"grad_norm": gnorm})
            lr = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            self.loss_smooth = loss_val if self.loss_smooth is None else 0.98 * self.loss_smooth + 0.02 * loss_val
            window.add_step(loss_val)
            if main:
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    rec = window.record(self.step, lr, self.samples_per_step, self._elapsed)
                    append_metrics(self.out_dir, rec)
                    values = {k: v for k, v in rec.items() if k != "step"}
                    add_scalars(writer, "train", values, self.step)
                    log.info("step %d: %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in values.items()))
                now = time.perf_counter()
                rate = self.samples_per_step / max(now - step_t, 1e-9)
                sps, step_t = (rate if sps == 0.0 else 0.9 * sps + 0.1 * rate), now
                pbar.set_postfix(loss=f"{self.loss_smooth:.4f}", lr=f"{lr:.2e}", clips_per_s=f"{sps:.2f}",
                                 refresh=False)
                pbar.update(1)
                if self.visualise is not None and cfg.image_every and self.step % cfg.image_every == 0:
                    self._call_visualise(batch)
            if self.evaluate is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0)
                                              or self.step == cfg.max_steps):
                self._call_evaluate(writer)
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self._save(self.step, self._consumed)
            if stop:
                if self._saved_step != self.step:
                    self._save(self.step, self._consumed)
                return "signal"
        return "done"
