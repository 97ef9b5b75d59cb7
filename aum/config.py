"""Run configs: a dataclass schema holds the defaults; a YAML file, then ``key=value`` overrides change them.
Use: ``cfg = load_config(Schema, path, overrides); save_config(cfg, yaml_path)``; command lines are parsed by
:class:`aum.cli.CommandLine`, which checks overrides with :func:`check_overrides`."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aum.atomic import atomic_write_text

__all__ = ["ConfigError", "load_config", "save_config", "to_dataclass", "check_overrides"]

_KEY_RE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_0-9][\w-]*)*$")


class ConfigError(ValueError):
    """An unknown key, a value of the wrong type, or a malformed override / config file."""


def _check_keys(schema, data, prefix: str, source: str) -> None:
    """Raise ConfigError for a key of ``data`` (nested mapping) that ``schema`` (a dataclass) lacks."""
    hints = typing.get_type_hints(schema)
    valid = [f.name for f in dataclasses.fields(schema)]
    for key, value in data.items():
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else "."
            raise ConfigError(f"unknown config key '{prefix}{key}' in {source}{hint} "
                              f"Valid keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(valid)}")
        tp = hints[key]  # recurse into a nested dataclass, also Optional[...] / ... | None
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        sub = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
        if len(sub) == 1 and dataclasses.is_dataclass(sub[0]) and isinstance(value, dict):
            _check_keys(sub[0], value, f"{prefix}{key}.", source)


def _apply(cfg: DictConfig, schema, data: dict, source: str) -> DictConfig:
    """Check ``data``'s keys against ``schema``, merge it into ``cfg`` key by key (type errors name the key)."""
    _check_keys(schema, data, "", source)
    for key, value in data.items():
        try:
            cfg = OmegaConf.merge(cfg, {key: value})
        except OmegaConfBaseException as e:
            bad, msg = getattr(e, "full_key", None) or key, str(e).splitlines()[0]
            raise ConfigError(f"invalid value for config key '{bad}' in {source}: {msg}") from e
    return cfg


def load_config(schema, path: str | os.PathLike | None = None, overrides=()) -> DictConfig:
    """Config of dataclass ``schema``: its defaults < the YAML file ``path`` < ``overrides`` (``"key=value"``
    strings, dotted keys for nested fields, values parsed as YAML). Raises :class:`ConfigError` for an unknown
    key (naming it, suggesting the closest valid key, listing the valid keys at that level), a wrong-typed
    value, a malformed override or an unset ``MISSING`` field; ``FileNotFoundError`` for a missing file."""
    cfg = OmegaConf.structured(schema)  # struct mode: the schema's keys, typed
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = OmegaConf.to_container(OmegaConf.load(path)) or {}
        except Exception as e:  # noqa: BLE001 - YAML syntax errors of several types
            raise ConfigError(f"cannot parse config file {path}: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
        cfg = _apply(cfg, schema, data, f"config file {path}")
    for item in [overrides] if isinstance(overrides, str) else overrides:
        cfg = _apply(cfg, schema, _override_data(item), f"override {item!r}")
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(f"config value(s) required but not set: {', '.join(missing)}")
    return cfg


def save_config(cfg, path: str | os.PathLike) -> Path:
    """Write ``cfg`` (DictConfig, dict or dataclass instance) as resolved YAML to ``path`` atomically
    (:func:`aum.atomic.atomic_write_text`); creates the folder. Returns the path."""
    (path := Path(path)).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, OmegaConf.to_yaml(cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg),
                                              resolve=True))
    return path


def to_dataclass(cfg, schema):
    """``cfg`` as a plain instance of dataclass ``schema`` (nested too), checked as in :func:`load_config`."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return OmegaConf.to_object(_apply(OmegaConf.structured(schema), schema, data, "config"))


def _override_data(item) -> dict:
    """The nested mapping one ``key=value`` override sets (value parsed as YAML); ConfigError when malformed."""
    if "=" not in str(item) or not _KEY_RE.match(str(item).partition("=")[0].strip()):
        raise ConfigError(f"malformed override {item!r}: expected key=value, e.g. optim.lr=3e-4")
    return OmegaConf.to_container(OmegaConf.from_dotlist([str(item).strip()]))


def check_overrides(schema, overrides) -> None:
    """Check ``key=value`` overrides against dataclass ``schema`` without applying them: :class:`ConfigError` for
    a malformed one or an unknown key (as :func:`load_config`: the closest key, the valid keys at that level)."""
    for item in overrides:
        _check_keys(schema, _override_data(item), "", f"override {item!r}")


class UnknownPresetError(KeyError, ValueError):
    """Unknown preset name (catchable as KeyError or ValueError)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""
