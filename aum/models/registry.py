"""Presets of the AuM and DASS encoders behind a timm-style factory: ``create_model("small", mixer="v2")``,
``create_model("dass_small")``."""
from __future__ import annotations

from aum.config import ConfigError
from aum.config import UnknownPresetError
from aum.models.aum import CLS_POSITIONS, AuM, AuMConfig
from aum.models.dass import DASS, DASSConfig
from aum.modules import DIRECTIONS

# All presets: depth 24, d_state 16, d_conv 4, expand 2, dt_rank ceil(D/16), Fo-Bi mixer, middle class token.
PRESETS: dict[str, dict] = {
    "tiny": {"embed_dim": 192},
    "small": {"embed_dim": 384},
    "base": {"embed_dim": 768},
}

# DASS (VMamba-style 2-D SSM): N = 1, dt_rank ceil(C/16), d_conv 3, MLP x4. ``dass_tiny`` is ours, for tests/CPU.
DASS_PRESETS: dict[str, dict] = {
    "dass_tiny": {"dims": (24, 48, 96, 192), "depths": (1, 1, 2, 1), "drop_path_rate": 0.0},
    "dass_small": {"dims": (96, 192, 384, 768), "depths": (2, 2, 8, 2), "drop_path_rate": 0.2},
    "dass_medium": {"dims": (96, 192, 384, 768), "depths": (2, 2, 20, 2), "drop_path_rate": 0.3},
}


def list_models(family: str = "aum") -> list[str]:
    """Preset names of an encoder ``family`` (``"aum"``, ``"dass"``, or ``"all"``), all accepted by
    :func:`create_model`."""
    names = {"aum": sorted(PRESETS), "dass": sorted(DASS_PRESETS), "all": sorted(PRESETS) + sorted(DASS_PRESETS)}
    if family not in names:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(names)}")
    return names[family]


def preset_fields(name: str) -> dict:
    """The :class:`AuMConfig` fields that preset ``name`` sets (a copy). An unknown name raises
    :class:`aum.config.UnknownPresetError` (a ``KeyError`` and a ``ValueError``) listing the valid presets."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown AuM preset {name!r}; valid presets: {', '.join(list_models())}")
    return dict(PRESETS[name])


def model_config(name: str, **overrides) -> AuMConfig | DASSConfig:
    """The :class:`AuMConfig` of preset ``name`` (a :class:`DASSConfig` for the ``dass_*`` presets) with
    ``overrides`` (any field of that config) applied; an unknown name raises
    :class:`aum.config.UnknownPresetError` (see :func:`preset_fields`)."""
    if name in DASS_PRESETS:
        return DASSConfig.from_dict({**DASS_PRESETS[name], **overrides})
    return AuMConfig.from_dict({**preset_fields(name), **overrides})


def create_model(name: str, **overrides) -> AuM | DASS:
    """Build a freshly initialised preset, e.g. ``create_model("base", num_classes=527)`` (AuM) or
    ``create_model("dass_small", num_classes=527)`` (DASS)."""
    config = model_config(name, **overrides)
    return DASS(config) if isinstance(config, DASSConfig) else AuM(config)


def check_model_options(prefix: str = "model.", **options) -> None:
    """Check the architecture choices of a config section (``preset``, ``mixer``, ``cls_position``; ``depth``
    and ``embed_dim`` >= 1; ``None`` = unset) without building anything. Raises
    :class:`aum.config.ConfigError` naming the key (``prefix`` + name), the value and the valid values."""
    valid = {"preset": list_models(), "mixer": DIRECTIONS, "cls_position": CLS_POSITIONS}
    for name, value in options.items():
        if value is None:
            continue
        if name in valid and value not in valid[name]:
            raise ConfigError(f"{prefix}{name} must be one of {', '.join(valid[name])}; got {value!r}")
        if name in ("depth", "embed_dim") and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{prefix}{name} must be an integer >= 1, got {value!r}")
