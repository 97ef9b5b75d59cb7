"""Our checkpoint format: one ``.safetensors`` file that rebuilds its model and says how to feed it.

The file holds the weights and, in its ``__metadata__``, the JSON of the model's config (``aum_config``; a DASS
file's also names its ``"family": "dass"``, absent = AuM), a format version (``aum_format``), optional user
metadata (``aum_metadata``) and the feature preset the model was trained with (``aum_features``:
:func:`aum.audio.features.preset_record` - name, sample_rate, num_mel_bins, mean, std, target_frames and its
``source``, e.g. ``pretrain:<out_dir>`` or ``finetune:<benchmark>``).
:func:`feature_preset_of` is what consumers ask; a checkpoint without a record (official, Hugging Face, Vision
Mamba, files of older aum versions) gets :data:`DEFAULT_FEATURE_PRESET` (``audioset``) and one logged warning per
file naming it. A preset the caller passes explicitly wins over the recorded one, with a warning when they differ.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors import torch as st

from aum.atomic import atomic_write
from aum.config import UnknownPresetError
from aum.audio.features import FbankConfig, get_preset, preset_from_record, preset_record
from aum.checkpoint.files import HF_WEIGHTS, sniff_format
from aum.checkpoint.hub import is_reference, resolve
from aum.checkpoint.pretrained import lookup
from aum.checkpoint.state_dict import CheckpointError, CheckpointMismatchError, RawCheckpoint
from aum.models.aum import AuM
from aum.models.dass import DASS
from aum.models.registry import model_from_config

log = logging.getLogger(__name__)


FORMAT_VERSION = 2          # the newest format this aum reads and writes (2: ``aum_config`` names its family)


DEFAULT_FEATURE_PRESET = "audioset"   # what a checkpoint that records no feature preset is fed


_DEFAULT_WARNED: set[str] = set()     # checkpoints already warned about (one warning per file and process)


_LEGACY_KEYS = ("features", "preset", "feature_preset")   # user-metadata names of a preset in older files


def save_checkpoint(model: AuM | DASS, path: str | os.PathLike, metadata: dict | None = None,
                    feature_preset: str | FbankConfig | None = None, feature_source: str | None = None) -> Path:
    """Write ``model`` (AuM or DASS) to ``path`` as one safetensors file carrying its config (with its family),
    its feature preset (and JSON ``metadata``).

    ``feature_preset`` is the preset the model was trained with and ``feature_source`` where that came from
    (e.g. ``"pretrain:runs/x"``); without them, the model's own ``feature_preset`` (set by
    :func:`load_checkpoint`; a DASS has its family's, ``audioset``) is kept, else :data:`DEFAULT_FEATURE_PRESET`
    is written with the source ``"default: none given when saved"`` and a warning is logged. The record's
    ``target_frames`` is the model's ``config.target_frames`` (the length it was trained on).

    An AuM file is of format 1 (``aum_config`` holds the AuMConfig fields, as before families); any other
    family's is of format 2, its ``aum_config`` naming the ``family`` (older aum versions then say the file is
    newer than they are).

    Atomic (:func:`aum.atomic.atomic_write`): an existing ``path`` is replaced whole or left untouched, and a
    full disk says so, naming the file.
    """
    path = Path(path)
    config = model.config.to_dict()
    with torch.device("meta"):  # the stored config must rebuild exactly these tensors, or the file is useless
        expected = {k: v.shape for k, v in model_from_config(model.family, config).state_dict().items()}
    if expected != {k: v.shape for k, v in model.state_dict().items()}:
        raise CheckpointMismatchError(f"not saving {path}: model.config no longer describes the model's tensors")
    if feature_preset is None and getattr(model, "feature_preset", None) is not None:
        feature_preset = model.feature_preset
        feature_source = (feature_source or getattr(model, "feature_preset_source", None)
                          or f"default: the {type(model).__name__} family's")
    if feature_preset is None:
        log.warning("%s: no feature preset given; recording the default %r (pass feature_preset= to "
                    "save_checkpoint)", path, DEFAULT_FEATURE_PRESET)
        feature_preset, feature_source = DEFAULT_FEATURE_PRESET, "default: none given when saved"
    features = preset_record(feature_preset, feature_source or "unspecified", model.config.target_frames)
    version, config = (1, config) if model.family == "aum" else (FORMAT_VERSION, {"family": model.family, **config})
    meta = {"format": "pt", "aum_format": str(version), "aum_config": json.dumps(config),
            "aum_features": json.dumps(features)}
    if metadata:
        meta["aum_metadata"] = json.dumps(metadata)
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        tensors[k] = v.clone(memory_format=torch.contiguous_format) if ptr in seen else v.contiguous()
        seen.add(ptr)
    atomic_write(path, lambda f: f.write(st.save(tensors, metadata=meta)))
    return path


def _recorded_features(checkpoint) -> tuple[FbankConfig | None, str, str]:
    """``(recorded preset or None, name of the checkpoint for messages, source of the record)`` of a path,
    RawCheckpoint or model."""
    if isinstance(checkpoint, torch.nn.Module):
        preset = getattr(checkpoint, "feature_preset", None)        # a name on a model class (DASS: its family's)
        return (get_preset(preset) if isinstance(preset, str) else preset, type(checkpoint).__name__,
                getattr(checkpoint, "feature_preset_source", None) or f"default: the {type(checkpoint).__name__} "
                                                                       f"family's")
    if isinstance(checkpoint, RawCheckpoint):
        record, legacy, where, entry = checkpoint.features, checkpoint.metadata, checkpoint.path, None
    else:
        entry = lookup(checkpoint) if is_reference(checkpoint) else None
        path = resolve(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        if path.is_dir():                                    # named as read_checkpoint names it (its weights)
            path = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), path)
        record, legacy, where = None, {}, str(path)
        if path.is_file() and sniff_format(path) == "safetensors":       # the header only; pickles are never ours
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                record = json.loads(meta["aum_features"]) if "aum_features" in meta else None
                legacy = json.loads(meta.get("aum_metadata", "{}"))
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{path}: cannot read the metadata ({e})") from e
    if record is not None:
        try:
            cfg = preset_from_record(record)
        except ValueError as e:
            raise CheckpointError(f"{where}: {e}") from None
        base = get_preset(cfg.name)
        if (cfg.mean, cfg.std) != (base.mean, base.std):
            log.warning("%s: feature preset %r records mean %s, std %s; this aum's has %s, %s: using the "
                        "checkpoint's", where, cfg.name, cfg.mean, cfg.std, base.mean, base.std)
        return cfg, where, str(record.get("source", ""))
    # older files: the preset name as user metadata, e.g. metadata={"features": "voxceleb"}
    key = next((k for k in _LEGACY_KEYS if isinstance(legacy, dict) and isinstance(legacy.get(k), str)), None)
    if key is not None:
        try:
            return get_preset(legacy[key]), where, f"metadata {key!r}"
        except UnknownPresetError as e:
            raise CheckpointError(f"{where}: metadata {key!r}: {e}") from None
    if entry is not None and entry.features:
        return get_preset(entry.features), where, f"registry: {entry.name}"       # a released file, by its name
    return None, where, ""


def feature_preset_of(checkpoint, explicit: str | FbankConfig | None = None) -> FbankConfig:
    """The feature preset to feed ``checkpoint`` with (a path or any reference of
    :func:`aum.checkpoint.hub.resolve`, a :class:`RawCheckpoint` or a loaded model).

    ``explicit`` (a caller's choice) wins; a warning is logged when it differs from the recorded preset.
    Otherwise the preset the checkpoint records; a released file named by its registry name, the entry's; a
    file that records none (official, Hugging Face, Vision Mamba, older aum files) gets
    :data:`DEFAULT_FEATURE_PRESET` with one warning per file naming it. A model
    built in memory without ``feature_preset`` gets the default silently. Only a safetensors header is read.
    """
    return choose_features(checkpoint, explicit)[0]


def choose_features(checkpoint, explicit=None) -> tuple[FbankConfig, str]:
    """:func:`feature_preset_of` and where the choice came from."""
    recorded, where, source = _recorded_features(checkpoint)
    if explicit is not None:
        chosen = get_preset(explicit)
        if recorded is not None and (chosen.name, chosen.mean, chosen.std) != (recorded.name, recorded.mean,
                                                                              recorded.std):
            log.warning("%s was trained with feature preset %r; using the explicitly requested %r instead",
                        where, recorded.name, chosen.name)
        return chosen, "explicit"
    if recorded is not None:
        return recorded, source
    if not isinstance(checkpoint, torch.nn.Module):
        key = os.path.abspath(where)
        if key not in _DEFAULT_WARNED:
            _DEFAULT_WARNED.add(key)
            log.warning("%s records no feature preset: feeding it the default %r (pass a preset explicitly if it "
                        "was trained with other statistics)", where, DEFAULT_FEATURE_PRESET)
    return get_preset(DEFAULT_FEATURE_PRESET), f"default: {where} records none"


def content_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed (of every file's relative name and bytes for a folder); a
    registered name or URL is resolved (downloaded) first."""
    path, h = resolve(path), hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()
