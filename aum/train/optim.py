"""Optimisation for the training engine: the learning-rate schedules (:func:`lr_at`), which parameters are exempt
from weight decay (:func:`no_weight_decay`, :func:`default_param_groups`), and the optimizer and scheduler that
:class:`aum.train.engine.Trainer` builds from an :class:`aum.train.config.EngineConfig`.
"""
from __future__ import annotations

import math
import torch
from torch import nn

from aum.train.config import EngineConfig

__all__ = ["lr_at", "no_weight_decay", "default_param_groups", "build_optimizer", "build_scheduler",
           "NO_DECAY_SUFFIXES", "NO_DECAY_NAMES"]

NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "mask_token")
NO_DECAY_NAMES = ("A_log", "A_b_log", "D", "D_b")


def lr_at(step: int, cfg: EngineConfig) -> float:
    """Learning rate of the optimizer step with 0-based index ``step``.

    Warm-up: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (the last warm-up step reaches the
    peak). After it, ``constant`` keeps ``lr``; ``cosine`` goes from ``lr`` at ``step == warmup_steps`` to
    ``min_lr`` at ``step == max_steps``; ``step`` keeps ``lr`` until ``decay_start`` and from there multiplies by
    ``decay_factor`` every ``decay_every`` steps: ``lr * decay_factor ** (1 + (step - decay_start) //
    decay_every)`` (not floored at ``min_lr``); ``multistep`` gives ``lr * milestone_factors[i]`` from step
    ``milestones[i]`` on (``lr`` before the first milestone).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "step" and step >= cfg.decay_start:
        return cfg.lr * cfg.decay_factor ** (1 + (step - cfg.decay_start) // cfg.decay_every)
    if cfg.schedule == "multistep":
        passed = [f for m, f in zip(cfg.milestones, cfg.milestone_factors) if step >= m]
        return cfg.lr * passed[-1] if passed else cfg.lr
    return cfg.lr


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is exempt from weight decay: 0-/1-d tensors (biases, norms), names whose last
    component ends in ``pos_embed``/``cls_token``/``mask_token``, and the SSM's ``A_log``/``A_b_log``/``D``/``D_b``."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf.endswith(NO_DECAY_SUFFIXES) or leaf in NO_DECAY_NAMES


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups of the trainable parameters: decayed (``weight_decay``) and exempt (0), see
    :func:`no_weight_decay`. Empty groups are left out."""
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (exempt if no_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(param_groups, cfg: EngineConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or Adam (L2 decay) over ``param_groups`` with ``cfg.lr``/``betas``/``weight_decay``
    as defaults; a group's own ``lr``/``weight_decay`` wins."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(param_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: EngineConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that scales every group's initial ``lr`` by ``lr_at(step, cfg) / cfg.lr`` (0 when
    ``cfg.lr`` is 0), so the default group follows :func:`lr_at` exactly and a group with its own ``lr`` follows
    the same shape."""
    peak = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / peak if peak else 0.0)
