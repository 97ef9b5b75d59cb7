"""Checkpoints: our single-file safetensors format, safe reading of foreign files, checked loading.

Our format is one ``.safetensors`` file: the weights, and in its ``__metadata__`` the JSON of
``AuMConfig.to_dict()`` (``aum_config``), a format version (``aum_format``) and optional user metadata
(``aum_metadata``), so :func:`load_checkpoint` rebuilds the model from the file alone. Foreign files
(official ``.pth``, the Hugging Face re-upload, Vision Mamba ImageNet weights) are read here too; pickles only
ever with ``torch.load(weights_only=True)``. Conversions live in :mod:`aum.convert`.

Every file we write also says how to feed the model: ``aum_features`` holds the JSON of the feature preset it
was trained with (:func:`aum.features.preset_record`: name, sample_rate, num_mel_bins, mean, std,
target_frames, and its ``source``, e.g. ``pretrain:<out_dir>`` or ``finetune:<benchmark>``). :func:`load_checkpoint` puts it on the
model as ``model.feature_preset`` (a :class:`aum.features.FbankConfig`) and ``model.feature_preset_source``;
:func:`feature_preset_of` is what consumers ask. A checkpoint without one (official, Hugging Face, Vision
Mamba, files of older aum versions) gets :data:`DEFAULT_FEATURE_PRESET` (``audioset``) and one logged warning
per file naming it. A preset the caller passes explicitly wins over the recorded one, with a warning when the
two differ.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors import torch as st

from aum.features import FbankConfig, UnknownPresetError, get_preset, preset_from_record, preset_record
from aum.models.aum import AuM, AuMConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KINDS = ("aum", "official", "hf", "vim")
DEFAULT_FEATURE_PRESET = "audioset"   # what a checkpoint that records no feature preset is fed
_DEFAULT_WARNED: set[str] = set()     # checkpoints already warned about (one warning per file and process)
_LEGACY_KEYS = ("features", "preset", "feature_preset")   # user-metadata names of a preset in older files
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


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
    """A file read but not yet loaded: its ``kind`` (one of :data:`KINDS`), ``state_dict``, the AuMConfig
    fields it implies (``None`` for Vision Mamba) and our user metadata (empty for foreign files)."""

    kind: str
    state_dict: dict[str, torch.Tensor]
    config: dict | None
    metadata: dict
    path: str
    features: dict | None = None    # our files: the feature-preset record (:func:`aum.features.preset_record`)


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(model: AuM, path: str | os.PathLike, metadata: dict | None = None,
                    feature_preset: str | FbankConfig | None = None, feature_source: str | None = None) -> Path:
    """Write ``model`` to ``path`` as one safetensors file carrying its config, its feature preset (and JSON
    ``metadata``).

    ``feature_preset`` is the preset the model was trained with and ``feature_source`` where that came from
    (e.g. ``"pretrain:runs/x"``); without them, the model's own ``feature_preset`` (set by
    :func:`load_checkpoint`) is kept, else :data:`DEFAULT_FEATURE_PRESET` is written with the source
    ``"default: none given when saved"`` and a warning is logged. The record's ``target_frames`` is the
    model's ``config.target_frames`` (the length it was trained on).

    Atomic: the file is written to a temporary name in the same folder, fsynced and renamed over ``path``;
    on any error the temporary file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    with torch.device("meta"):  # the stored config must rebuild exactly these tensors, or the file is useless
        expected = {k: v.shape for k, v in AuM(AuMConfig.from_dict(model.config.to_dict())).state_dict().items()}
    if expected != {k: v.shape for k, v in model.state_dict().items()}:
        raise CheckpointMismatchError(f"not saving {path}: model.config no longer describes the model's tensors")
    if feature_preset is None and getattr(model, "feature_preset", None) is not None:
        feature_preset = model.feature_preset
        feature_source = feature_source or getattr(model, "feature_preset_source", None)
    if feature_preset is None:
        log.warning("%s: no feature preset given; recording the default %r (pass feature_preset= to "
                    "save_checkpoint)", path, DEFAULT_FEATURE_PRESET)
        feature_preset, feature_source = DEFAULT_FEATURE_PRESET, "default: none given when saved"
    features = preset_record(feature_preset, feature_source or "unspecified", model.config.target_frames)
    meta = {"format": "pt", "aum_format": str(FORMAT_VERSION), "aum_config": json.dumps(model.config.to_dict()),
            "aum_features": json.dumps(features)}
    if metadata:
        meta["aum_metadata"] = json.dumps(metadata)
    tensors, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        tensors[k] = v.clone(memory_format=torch.contiguous_format) if ptr in seen else v.contiguous()
        seen.add(ptr)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        st.save_file(tensors, tmp, metadata=meta)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (not every platform can fsync a folder)
        _fsync(path.parent)
    return path


def _recorded_features(checkpoint) -> tuple[FbankConfig | None, str, str]:
    """``(recorded preset or None, name of the checkpoint for messages, source of the record)`` of a path,
    RawCheckpoint or model."""
    if isinstance(checkpoint, torch.nn.Module):
        return (getattr(checkpoint, "feature_preset", None), type(checkpoint).__name__,
                getattr(checkpoint, "feature_preset_source", ""))
    if isinstance(checkpoint, RawCheckpoint):
        record, legacy, where = checkpoint.features, checkpoint.metadata, checkpoint.path
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        if path.is_dir():                                    # named as read_checkpoint names it (its weights)
            path = next((path / n for n in _HF_WEIGHTS if (path / n).is_file()), path)
        record, legacy, where = None, {}, str(path)
        if path.is_file() and _sniff(path) == "safetensors":       # the header only; pickles are never ours
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
    return None, where, ""


def feature_preset_of(checkpoint, explicit: str | FbankConfig | None = None) -> FbankConfig:
    """The feature preset to feed ``checkpoint`` with (a path, a :class:`RawCheckpoint` or a loaded model).

    ``explicit`` (a caller's choice) wins; a warning is logged when it differs from the recorded preset.
    Otherwise the preset the checkpoint records; a file that records none (official, Hugging Face, Vision
    Mamba, older aum files) gets :data:`DEFAULT_FEATURE_PRESET` with one warning per file naming it. A model
    built in memory without ``feature_preset`` gets the default silently. Only a safetensors header is read.
    """
    return _choose_features(checkpoint, explicit)[0]


def _choose_features(checkpoint, explicit=None) -> tuple[FbankConfig, str]:
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
    """Hex sha256 of a file's bytes, streamed (of every file's relative name and bytes for a folder)."""
    path, h = Path(path), hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


def infer_config(state_dict: dict[str, torch.Tensor], **overrides) -> dict:
    """AuMConfig fields implied by the tensor shapes of an official-layout state_dict; ``overrides`` win.

    Unless ``overrides`` give ``target_frames``, the length and patch stride come from the position embedding
    (``num_mel_bins`` 128 unless given): with ``patch_stride`` given, its patch count fixes the length; else the
    (square) strides and the power-of-two lengths the official loader tries (64 .. 2**19 frames) are searched,
    the patch size as stride first: 512 patches of 16x16 -> stride 16, 1024 frames; 1212 -> stride 10, 1024
    frames (overlapping patches, the official ``run.py`` default); 64 -> stride 16, 128 frames. Several other
    strides fitting is an error asking for ``strides=``; no power-of-two fit falls back to the patch stride.
    """
    sd = state_dict
    if "cls_token_head" in sd or "cls_token_tail" in sd:
        raise CheckpointMismatchError("cls_token_head / cls_token_tail: the official option use_double_cls_token="
                                      "True (a class token at each end) is not supported by aum")
    for key in ("patch_embed.proj.weight", "layers.0.mixer.in_proj.weight", "layers.0.mixer.A_log"):
        if key not in sd:
            raise CheckpointMismatchError(f"cannot infer the AuM config: no {key!r} in the state_dict")
    proj = sd["patch_embed.proj.weight"]
    dim = proj.shape[0]
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("layers.") and k.split(".")[1].isdigit()}
    m = "layers.0.mixer."
    cfg = {
        "embed_dim": dim,
        "depth": max(layers) + 1,
        "mixer": "v2" if m + "conv1d_b.weight" in sd else "v1" if m + "A_b_log" in sd else "none",
        "d_state": sd[m + "A_log"].shape[1],
        "d_conv": sd[m + "conv1d.weight"].shape[-1] if m + "conv1d.weight" in sd else 4,
        "expand": sd[m + "in_proj.weight"].shape[0] // 2 // dim,
        "num_classes": sd["head.weight"].shape[0] if "head.weight" in sd else 0,
        "cls_position": "middle" if "cls_token" in sd else "none",
        "patch_size": list(proj.shape[-2:]),
    }
    cfg.update(overrides)
    if "pos_embed.pos_embed" in sd and "target_frames" not in overrides:
        n = sd["pos_embed.pos_embed"].shape[1] - int(cfg["cls_position"] != "none")
        stride, cfg["target_frames"] = _infer_stride(n, tuple(cfg["patch_size"]), cfg.get("num_mel_bins", 128),
                                                     cfg.get("patch_stride"))
        if stride != tuple(AuMConfig.patch_stride):
            cfg["patch_stride"] = list(stride)
    return cfg


def _infer_stride(n: int, patch: tuple[int, int], mel: int, stride=None) -> tuple[tuple[int, int], int]:
    """``(patch stride, frames)`` of a position embedding of ``n`` patches (see :func:`infer_config`)."""
    (pf, pt) = patch
    strides = [tuple(stride)] if stride is not None else [patch] + [(s, s) for s in range(min(patch) - 1, 0, -1)]
    fits = {}
    for s in strides:
        for frames in (2 ** k for k in range(6, 20)):
            if frames >= pt and ((mel - pf) // s[0] + 1) * ((frames - pt) // s[1] + 1) == n:
                fits.setdefault(s, frames)
    if patch in fits or len(fits) == 1:
        stride = patch if patch in fits else next(iter(fits))
        return stride, fits[stride]
    if stride is not None:
        (sf, st_), rows = stride, (mel - pf) // stride[0] + 1
        if n % rows:
            raise CheckpointMismatchError(f"pos_embed.pos_embed holds {n} patches, which do not fit patch stride "
                                          f"{tuple(stride)} ({rows} frequency rows of {mel} mel bins)")
        return (sf, st_), (n // rows - 1) * st_ + pt
    if fits:
        raise CheckpointMismatchError(
            f"pos_embed.pos_embed holds {n} patches, which fit several patch strides: "
            + ", ".join(f"{s} at {f} frames" for s, f in fits.items())
            + "; pass the file's stride as strides=(f, t) (the official option)")
    rows = (mel - pf) // pf + 1
    if n % rows:
        raise CheckpointMismatchError(f"pos_embed.pos_embed holds {n} patches, which fit neither a square patch "
                                      f"stride at the power-of-two lengths the official loader tries nor stride "
                                      f"{patch} at any length; pass the file's stride as strides=(f, t) "
                                      f"(the official option)")
    return patch, (n // rows - 1) * pt + pt


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


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[8:9] == b"{":                       # u64 header length, then the JSON header
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":   # torch zip archive / legacy pickle
        return "pickle"
    raise CheckpointError(f"{path}: not a checkpoint we can read (neither safetensors nor a torch pickle)")


def _read_tensors(path: Path, map_location) -> tuple[dict, dict]:
    """``(state_dict, safetensors metadata)`` of a file, pickles through ``weights_only=True`` only."""
    from aum.convert import normalize_keys, unwrap
    if _sniff(path) == "safetensors":
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                sd, meta = {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
        return (sd if "aum_config" in meta else normalize_keys(sd)), meta
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle: it holds objects other than tensors and plain "
                              f"containers (weights_only=True). If you trust the file, extract its state_dict "
                              f"yourself and pass that instead. Detail: {str(e).splitlines()[0]}") from e
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read torch checkpoint ({type(e).__name__}: {e})") from e
    try:
        return normalize_keys(unwrap(obj)), {}
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def read_checkpoint(path: str | os.PathLike, map_location="cpu", kind: str = "auto",
                    hints: dict | None = None) -> RawCheckpoint:
    """Read any supported checkpoint into a :class:`RawCheckpoint` without building a model.

    ``kind="auto"`` detects: our safetensors (has ``aum_config``); a Hugging Face folder, or a
    ``model.safetensors`` with a ``config.json`` beside it; a Vision Mamba ImageNet file (``pos_embed``
    key / 3-channel patch conv); otherwise an official plain state_dict. ``hints`` say what an official or
    Hugging Face file's keys cannot (``cls_position``, or official options such as ``strides`` and
    ``if_devide_out``; they win over ``config.json``; see :func:`aum.convert.read_official`); other kinds
    ignore them.
    """
    from aum.convert import read_official
    path = Path(path)
    if kind not in ("auto",) + KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose 'auto' or one of {KINDS}")
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        path = next((folder / n for n in _HF_WEIGHTS if (folder / n).is_file()), None)
        if path is None:
            raise CheckpointError(f"{folder}: folder holds none of {_HF_WEIGHTS}")
    sd, meta = _read_tensors(path, map_location)
    if "aum_config" in meta and kind in ("auto", "aum"):
        version = int(meta.get("aum_format", 1))
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: format version {version} is newer than this aum ({FORMAT_VERSION})")
        try:
            features = json.loads(meta["aum_features"]) if "aum_features" in meta else None
        except ValueError as e:
            raise CheckpointError(f"{path}: the aum_features metadata is not valid JSON ({e})") from None
        return RawCheckpoint("aum", sd, json.loads(meta["aum_config"]),
                             json.loads(meta.get("aum_metadata", "{}")), str(path), features)
    if kind == "aum":
        raise CheckpointError(f"{path}: not an aum checkpoint (no 'aum_config' metadata)")
    is_vim = "pos_embed" in sd or sd.get("patch_embed.proj.weight", torch.empty(0, 1)).shape[1] == 3
    if kind == "vim" or (kind == "auto" and is_vim):
        return RawCheckpoint("vim", sd, None, {}, str(path))
    config_file, hf_file = None, path.name in _HF_WEIGHTS or kind == "hf"
    if hf_file and (folder / "config.json").is_file() and kind in ("auto", "hf"):
        config_file, kind = folder / "config.json", "hf"
    sd, config = read_official(sd, path, config_file, hints)
    return RawCheckpoint("hf" if kind == "hf" else "official", sd, config, {}, str(path))


def load_checkpoint(path: str | os.PathLike, map_location="cpu", **config_overrides) -> AuM:
    """Build an :class:`AuM` from any supported checkpoint (see :func:`read_checkpoint`), in eval mode.

    The config comes from the file (ours), ``config.json`` (Hugging Face) or the tensor shapes (official,
    Vision Mamba); ``config_overrides`` win. Overrides that change the patch grid or the class count are
    adapted as in :func:`aum.convert.init_from_pretrained` (position grid resized, head re-initialised).
    For official / Hugging Face files, ``cls_position`` and the official options
    (:data:`aum.convert.OFFICIAL_OPTIONS`, e.g. ``strides=(10, 10)``, ``if_devide_out=False``) describe the file
    (``hints`` of :func:`read_checkpoint`).
    The model carries ``feature_preset`` and ``feature_preset_source``: how to feed it (see
    :func:`feature_preset_of`; a file without a record gets the default and one warning).
    """
    from aum.convert import OFFICIAL_OPTIONS, load_raw_into
    official = {k: config_overrides.pop(k) for k in OFFICIAL_OPTIONS if k in config_overrides}
    raw = read_checkpoint(path, map_location=map_location,
                          hints={**{k: config_overrides[k] for k in ("cls_position",) if k in config_overrides},
                                 **official})
    if official and raw.kind not in ("official", "hf"):
        raise CheckpointError(f"{raw.path}: {sorted(official)} describe official AuM files; this is a {raw.kind} "
                              f"checkpoint")
    feature_preset, feature_source = _choose_features(raw)     # before building: a bad record fails fast
    if raw.kind == "vim":
        base = {k: v for k, v in raw.state_dict.items() if k != "pos_embed" and not k.startswith("head.")}
        config = infer_config(base, **config_overrides)
    else:
        config = {**raw.config, **config_overrides}
    try:
        model = AuM(AuMConfig.from_dict(config))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{raw.path}: cannot build the model ({e})") from e
    report = load_raw_into(model, raw)
    log.info("%s", report)
    model.feature_preset, model.feature_preset_source = feature_preset, feature_source
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()

