"""The pretraining configuration: every default in one place, overridden by a YAML file and ``key=value``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from aum.config import ConfigError
from aum.train.config import EngineConfig
from aum.audio.features import get_preset
from aum.config import UnknownPresetError
from aum.models.registry import check_model_options
from pretrain.masking import STRATEGIES
from pretrain.objectives import OBJECTIVES


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


def check_config(cfg: PretrainConfig) -> PretrainConfig:
    """Check the values of ``cfg`` that types alone cannot (objective, preset, mixer, class token, mask strategy
    and ratio, feature preset, data source) without building a model or reading audio; returns ``cfg``. Raises
    :class:`aum.config.ConfigError` naming the key, the value and the valid values. The valid values come from
    the code that uses them (:data:`pretrain.objectives.OBJECTIVES`, :data:`aum.models.PRESETS`, ...)."""
    m = cfg.model
    check_model_options("model.", families=("aum",), used_for="pretraining (its objectives use the AuM patch grid "
                        "and embed())", preset=m.preset, mixer=m.mixer, cls_position=m.cls_position, depth=m.depth,
                        embed_dim=m.embed_dim)
    for key, value, valid in (("objective.name", cfg.objective.name, sorted(OBJECTIVES)),
                              ("mask.strategy", cfg.mask.strategy, STRATEGIES)):
        if value not in valid:
            raise ConfigError(f"{key} must be one of {', '.join(valid)}; got {value!r}")
    try:
        get_preset(cfg.data.preset)
    except UnknownPresetError as e:
        raise ConfigError(f"data.preset: {e}") from None
    if cfg.mask.ratio is not None and not 0 < cfg.mask.ratio < 1:
        raise ConfigError(f"mask.ratio must be in (0, 1), got {cfg.mask.ratio}")
    if cfg.data.source != "synth" and not Path(cfg.data.source).exists():
        raise ConfigError(f"data.source {cfg.data.source} does not exist (use 'synth', a folder or a manifest)")
    return cfg
