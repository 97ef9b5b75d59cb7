"""State dicts and their checked loading, below every checkpoint format: the errors, :class:`LoadReport`,
:class:`RawCheckpoint` (a file read but not yet loaded), :func:`load_state_dict_checked` (every missing and
unexpected key named, silently partial loads refused) and the key helpers that strip wrapper prefixes.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, or is not something we know how to load."""


class CheckpointMismatchError(CheckpointError):
    """A state_dict does not fit the model: missing / unexpected keys or shapes, listed by name."""


@dataclass
class LoadReport:
    """What a load did: keys loaded, left missing, ignored as unexpected, and conversion notes."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str | None = None
    kind: str | None = None

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors" + (f" from {self.source} ({self.kind})" if self.source else "")]
        lines += [f"missing: {self.missing}"] if self.missing else []
        lines += [f"unexpected: {self.unexpected}"] if self.unexpected else []
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


class RawCheckpoint(NamedTuple):
    """A file read but not yet loaded: its ``kind`` (one of :data:`aum.checkpoint.load.KINDS`), ``state_dict``
    (in the names of our model of that ``family``), the config fields it implies (``None`` for Vision Mamba) and
    our user metadata (empty for foreign files)."""

    kind: str
    state_dict: dict[str, torch.Tensor]
    config: dict | None
    metadata: dict
    path: str
    features: dict | None = None    # our files: the feature-preset record (:func:`aum.audio.features.preset_record`)
    family: str = "aum"             # the encoder family: "aum" (AuMConfig fields) or "dass" (DASSConfig fields)


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], allow_missing=(),
                            allow_unexpected=(), strict: bool = True) -> LoadReport:
    """Load ``state_dict`` into ``model`` and report missing / unexpected keys by name.

    Raises :class:`CheckpointMismatchError` on any shape mismatch (naming the key and both shapes) and, when
    ``strict``, on missing or unexpected keys not matched by ``allow_missing`` / ``allow_unexpected``
    (exact names or ``fnmatch`` patterns such as ``"head.*"``). Nothing is loaded when it raises.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointMismatchError("shape mismatch:\n  " + "\n  ".join(bad))
    bad_missing = [k for k in missing if not any(fnmatch.fnmatchcase(k, p) for p in allow_missing)]
    bad_unexpected = [k for k in unexpected if not any(fnmatch.fnmatchcase(k, p) for p in allow_unexpected)]
    if strict and (bad_missing or bad_unexpected):
        raise CheckpointMismatchError(
            "state_dict does not match the model" + (f"\n  missing keys: {bad_missing}" if bad_missing else "")
            + (f"\n  unexpected keys: {bad_unexpected}" if bad_unexpected else "")
            + "\n(pass strict=False, or allow these keys, to load the rest)")
    loaded = [k for k in state_dict if k in own]
    model.load_state_dict({k: state_dict[k] for k in loaded}, strict=False)
    for what, keys, bad in (("missing (left at their initialisation)", missing, bad_missing),
                            ("unexpected (ignored)", unexpected, bad_unexpected)):
        if keys:
            log.log(logging.WARNING if bad else logging.INFO, "checkpoint keys %s: %s", what, keys)
    return LoadReport(loaded=loaded, missing=missing, unexpected=unexpected)


_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "aum.")


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a leading ``prefix`` (DataParallel's ``module.`` by default) from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def unwrap(obj) -> dict[str, torch.Tensor]:
    """The state_dict inside a training checkpoint: follows ``'model'``/``'state_dict'``/``'module'`` keys
    until a dict of tensors remains. Raises ``ValueError`` when there is none."""
    for _ in range(4):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        key = next((k for k in ("model", "state_dict", "module") if isinstance(obj, dict)
                    and isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    raise ValueError("not a state_dict: expected a dict of tensors, possibly under 'model', 'state_dict' "
                     "or 'module'")


def normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` everywhere, and a wrapper prefix (``model.``, ``backbone.``, ...) shared by ALL keys."""
    sd = strip_prefix(sd, "module.")
    for prefix in _WRAPPER_PREFIXES[1:]:
        if sd and all(k.startswith(prefix) for k in sd):
            return strip_prefix(sd, prefix)
    return sd
