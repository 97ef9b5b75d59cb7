"""Presets of the AuM encoder behind a timm-style factory: ``create_model("small", mixer="v2")``."""
from __future__ import annotations

from aum.config import ConfigError
from aum.features import UnknownPresetError
from aum.models.aum import CLS_POSITIONS, AuM, AuMConfig
from aum.modules import DIRECTIONS

# All presets: depth 24, d_state 16, d_conv 4, expand 2, dt_rank ceil(D/16), Fo-Bi mixer, middle class token.
PRESETS: dict[str, dict] = {
    "tiny": {"embed_dim": 192},
    "small": {"embed_dim": 384},
    "base": {"embed_dim": 768},
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(PRESETS)


def preset_fields(name: str) -> dict:
    """The :class:`AuMConfig` fields that preset ``name`` sets (a copy). An unknown name raises
    :class:`aum.features.UnknownPresetError` (a ``KeyError`` and a ``ValueError``) listing the valid presets."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown AuM preset {name!r}; valid presets: {', '.join(list_models())}")
    return dict(PRESETS[name])


def model_config(name: str, **overrides) -> AuMConfig:
    """The :class:`AuMConfig` of preset ``name`` with ``overrides`` (any AuMConfig field) applied; an unknown
    name raises :class:`aum.features.UnknownPresetError` (see :func:`preset_fields`)."""
    return AuMConfig.from_dict({**preset_fields(name), **overrides})


def create_model(name: str, **overrides) -> AuM:
    """Build a freshly initialised AuM preset, e.g. ``create_model("base", num_classes=527)``."""
    return AuM(model_config(name, **overrides))


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
