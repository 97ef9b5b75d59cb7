"""Settings of one training run: :class:`EngineConfig`, the ``engine.`` keys of every training config.

Below the engine and the optimiser so both read it (the folder layout of ``out_dir`` is in :mod:`aum.train.engine`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    """Settings of one training run (see the module docstring for the folder layout)."""

    out_dir: str = "runs/default"
    max_steps: int = 1000          # optimizer steps
    batch_size: int = 8            # per rank, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4               # peak lr (after warm-up)
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: str = "adamw"       # "adamw" | "adam" (fine-tuning recipes use Adam)
    schedule: str = "cosine"       # "cosine" | "constant" | "step" | "multistep"
    decay_start: int = 0
    decay_every: int = 1
    decay_factor: float = 1.0
    milestones: tuple[int, ...] = ()            # multistep: steps where a new factor starts
    milestone_factors: tuple[float, ...] = ()   # multistep: lr * milestone_factors[i] from milestones[i] on
    clip_grad: float | None = 1.0
    precision: str = "auto"        # "auto" | "fp32" | "bf16" | "fp16"
    ckpt_every: int = 500          # steps; 0 = only at the end
    keep_last: int = 2             # 0 = keep all
    log_every: int = 10
    image_every: int = 0           # 0 = never
    seed: int = 0
    num_workers: int = 0
    resume: bool = True
    deterministic: bool = False
    device: str = "auto"
    eval_every: int = 0            # steps between calls of the evaluate hook (0 = never); the last step always
    select_metric: str = ""        # key of the evaluate hook's dict that picks the best weights ("" = no selection)
    select_mode: str = "max"       # "max" | "min"

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.milestones = tuple(int(m) for m in self.milestones)
        self.milestone_factors = tuple(float(f) for f in self.milestone_factors)
        for name, allowed in (("optimizer", ("adamw", "adam")),
                              ("schedule", ("cosine", "constant", "step", "multistep")),
                              ("precision", ("auto", "fp32", "bf16", "fp16")), ("select_mode", ("max", "min"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"EngineConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("batch_size", "grad_accum", "decay_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "ckpt_every", "keep_last", "image_every", "num_workers",
                     "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"EngineConfig.{name} must be >= 0, got {getattr(self, name)}")
        if len(self.milestones) != len(self.milestone_factors) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"EngineConfig.milestones must be ascending and match milestone_factors one to one, "
                             f"got {self.milestones} and {self.milestone_factors}")
