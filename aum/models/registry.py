"""Presets of the AuM encoder behind a timm-style factory: ``create_model("small", mixer="v2")``."""
from __future__ import annotations

from aum.models.aum import AuM, AuMConfig

# All presets: depth 24, d_state 16, d_conv 4, expand 2, dt_rank ceil(D/16), Fo-Bi mixer, middle class token.
PRESETS: dict[str, dict] = {
    "tiny": {"embed_dim": 192},
    "small": {"embed_dim": 384},
    "base": {"embed_dim": 768},
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(PRESETS)


def model_config(name: str, **overrides) -> AuMConfig:
    """The :class:`AuMConfig` of preset ``name`` with ``overrides`` (any AuMConfig field) applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown AuM preset {name!r}; available: {list_models()}")
    return AuMConfig.from_dict({**PRESETS[name], **overrides})


def create_model(name: str, **overrides) -> AuM:
    """Build a freshly initialised AuM preset, e.g. ``create_model("base", num_classes=527)``."""
    return AuM(model_config(name, **overrides))
