"""The pretraining configuration: every default in one place, overridden by a YAML file and ``key=value``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from aum.engine import EngineConfig


@dataclass
class ModelConfig:
    """The encoder to pretrain: a preset plus optional overrides of its size."""

    preset: str = "tiny"
    mixer: str = "v1"
    cls_position: str = "middle"
    depth: Optional[int] = None
    embed_dim: Optional[int] = None


@dataclass
class ObjectiveConfig:
    """``ssast`` (mask tokens in place; InfoNCE + gen_weight x MSE) or ``mae`` (drop; decoder)."""

    name: str = "ssast"
    gen_weight: float = 10.0
    disc_weight: float = 1.0
    decoder_dim: int = 128
    decoder_depth: int = 2
    norm_pix: bool = True


@dataclass
class MaskConfig:
    """Masking: ``random``, ``time``, ``frequency`` or ``cluster``; ratio defaults per objective
    (SSAST: 400 of 512 patches, MAE: 0.75)."""

    strategy: str = "random"
    ratio: Optional[float] = None
    span: int = 2
    cluster: int = 3


@dataclass
class DataConfig:
    """Unlabelled audio: ``synth`` (the built-in generator), a folder, or a CSV / JSON-lines manifest."""

    source: str = "synth"
    crop_frames: int = 1024
    preset: str = "audioset"
    synth_clips: int = 100_000


@dataclass
class PretrainConfig:
    """Everything ``python -m pretrain`` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(
        out_dir="runs/pretrain", max_steps=1000, batch_size=8, lr=2e-4, warmup_steps=50, ckpt_every=100,
        log_every=10, image_every=100))
