"""Presets of the AuM and DASS encoders behind a timm-style factory: ``create_model("small", mixer="v2")``,
``create_model("dass_small")``."""
from __future__ import annotations

import dataclasses

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


FAMILIES: dict[str, tuple[type, type]] = {"aum": (AuM, AuMConfig), "dass": (DASS, DASSConfig)}   # model, config


def list_models(family: str = "aum") -> list[str]:
    """Preset names of an encoder ``family`` (``"aum"``, ``"dass"``, or ``"all"``), all accepted by
    :func:`create_model`."""
    names = {"aum": sorted(PRESETS), "dass": sorted(DASS_PRESETS), "all": sorted(PRESETS) + sorted(DASS_PRESETS)}
    if family not in names:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(names)}")
    return names[family]


def preset_family(name: str) -> str:
    """The encoder family (``"aum"`` or ``"dass"``) of preset ``name``; an unknown name raises
    :class:`aum.config.UnknownPresetError` (see :func:`preset_fields`)."""
    if name in DASS_PRESETS:
        return "dass"
    preset_fields(name)
    return "aum"


def preset_fields(name: str) -> dict:
    """The config fields that preset ``name`` sets (a copy): :class:`AuMConfig` fields, or :class:`DASSConfig`
    fields for the ``dass_*`` presets. An unknown name raises :class:`aum.config.UnknownPresetError` (a
    ``KeyError`` and a ``ValueError``) listing the valid presets."""
    if name in DASS_PRESETS:
        return dict(DASS_PRESETS[name])
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


def model_from_config(family: str, config: dict) -> AuM | DASS:
    """A freshly initialised encoder of ``family`` (``"aum"`` or ``"dass"``) from the fields of its config
    (e.g. a checkpoint's). An unknown family raises ``ValueError``; an unknown field ``KeyError`` naming the
    valid ones."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
    model_cls, config_cls = FAMILIES[family]
    return model_cls(config_cls.from_dict(config))


def config_family(config: dict) -> str:
    """The family whose config has all the fields of ``config`` (a config dict): ``"aum"`` or ``"dass"``.
    Raises ``ValueError`` naming the fields when neither has them all."""
    for family, (_, config_cls) in FAMILIES.items():
        if set(config) <= {f.name for f in dataclasses.fields(config_cls)}:
            return family
    raise ValueError(f"config fields {sorted(config)} are neither an AuM nor a DASS config")


def model_name(config: dict, family: str | None = None) -> str:
    """The short name of an encoder config in result records and tables. AuM: ``tiny``/``small``/``base`` by
    width (``D<width>`` for others), ``-d<depth>`` when not 24. DASS: its preset (``dass_small``) when the
    widths and depths are one, else ``dass-D<widths>-d<depths>``. ``family`` defaults to
    :func:`config_family`."""
    family = family or config_family(config)
    if family == "dass":
        dims, depths = list(config.get("dims", ())), list(config.get("depths", ()))
        preset = next((n for n, p in DASS_PRESETS.items() if list(p["dims"]) == dims and list(p["depths"]) == depths),
                      None)
        return preset or f"dass-D{'.'.join(map(str, dims))}-d{'.'.join(map(str, depths))}"
    preset = next((n for n, p in PRESETS.items() if p["embed_dim"] == config.get("embed_dim")), None)
    return (preset or f"D{config.get('embed_dim')}") + ("" if config.get("depth", 24) == 24 else f"-d{config['depth']}")


def _title(family: str) -> str:
    return FAMILIES[family][0].__name__                 # "AuM", "DASS"


def check_model_options(prefix: str = "model.", families=tuple(FAMILIES), used_for: str = "this stage",
                        **options) -> None:
    """Check the architecture choices of a config section (``preset``, ``mixer``, ``cls_position``; ``depth``
    and ``embed_dim`` >= 1; ``None`` = unset) without building anything. ``families`` are the encoder families
    the caller can build (``used_for`` says what it is, for the message); the AuM options (``mixer``,
    ``cls_position``, ``depth``, ``embed_dim``) are refused beside a DASS preset. Raises
    :class:`aum.config.ConfigError` naming the key (``prefix`` + name), the value and the valid values."""
    valid = {"preset": [n for f in families for n in list_models(f)], "mixer": DIRECTIONS,
             "cls_position": CLS_POSITIONS}
    preset = options.get("preset")
    if preset is not None and preset not in valid["preset"] and preset in list_models("all"):
        raise ConfigError(f"{prefix}preset {preset!r} is a {_title(preset_family(preset))} preset, but {used_for} "
                          f"builds only {' or '.join(map(_title, families))} encoders: one of "
                          f"{', '.join(valid['preset'])}")
    for name, value in options.items():
        if value is None:
            continue
        if name == "preset" and value not in valid[name]:       # AuM's first, then the other families'
            first, *rest = [list_models(f) for f in sorted(families, key=lambda f: f != "aum")]
            raise ConfigError(f"{prefix}preset must be one of {', '.join(first)}; got {value!r}"
                              + "".join(f" (or one of the {_title(preset_family(r[0]))} presets {', '.join(r)})"
                                        for r in rest))
        if name in valid and value not in valid[name]:
            raise ConfigError(f"{prefix}{name} must be one of {', '.join(valid[name])}; got {value!r}")
        if name in ("depth", "embed_dim") and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{prefix}{name} must be an integer >= 1, got {value!r}")
    if preset is not None and preset_family(preset) == "dass":
        aum_only = [n for n in ("mixer", "cls_position", "depth", "embed_dim") if options.get(n) is not None]
        if aum_only:
            raise ConfigError(f"{prefix}{aum_only[0]} is an AuM option; {prefix}preset {preset!r} is a DASS "
                              f"encoder (set dims/depths through a DASS preset instead)")
