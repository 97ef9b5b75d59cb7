"""Checkpoints: our single-file safetensors format, safe reading of foreign files, checked loading.

Our format is one ``.safetensors`` file: the weights, and in its ``__metadata__`` the JSON of
``AuMConfig.to_dict()`` (``aum_config``), a format version (``aum_format``) and optional user metadata
(``aum_metadata``), so :func:`load_checkpoint` rebuilds the model from the file alone. Foreign files
(official ``.pth``, the Hugging Face re-upload, Vision Mamba ImageNet weights) are read here too; pickles only
ever with ``torch.load(weights_only=True)``. Conversions live in :mod:`aum.convert`.
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

from aum.models.aum import AuM, AuMConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KINDS = ("aum", "official", "hf", "vim")
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


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(model: AuM, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``model`` to ``path`` as one safetensors file carrying its config (and JSON ``metadata``).

    Atomic: the file is written to a temporary name in the same folder, fsynced and renamed over ``path``;
    on any error the temporary file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    with torch.device("meta"):  # the stored config must rebuild exactly these tensors, or the file is useless
        expected = {k: v.shape for k, v in AuM(AuMConfig.from_dict(model.config.to_dict())).state_dict().items()}
    if expected != {k: v.shape for k, v in model.state_dict().items()}:
        raise CheckpointMismatchError(f"not saving {path}: model.config no longer describes the model's tensors")
    meta = {"format": "pt", "aum_format": str(FORMAT_VERSION), "aum_config": json.dumps(model.config.to_dict())}
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

    ``target_frames`` assumes ``num_mel_bins`` (128) and ``patch_stride`` (the patch size) unless given in
    ``overrides``: 512 patches of 16x16 -> 1024 frames, 64 -> 128.
    """
    sd = state_dict
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
        (pf, pt), mel = cfg["patch_size"], cfg.get("num_mel_bins", 128)
        sf, stt = cfg.get("patch_stride", cfg["patch_size"])
        rows = (mel - pf) // sf + 1
        n = sd["pos_embed.pos_embed"].shape[1] - int(cfg["cls_position"] != "none")
        if n % rows:
            raise CheckpointMismatchError(f"pos_embed.pos_embed holds {n} patches, not a multiple of the {rows} "
                                          f"frequency rows of {mel} mel bins; pass target_frames=")
        cfg["target_frames"] = (n // rows - 1) * stt + pt
    return cfg


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


def read_checkpoint(path: str | os.PathLike, map_location="cpu", kind: str = "auto") -> RawCheckpoint:
    """Read any supported checkpoint into a :class:`RawCheckpoint` without building a model.

    ``kind="auto"`` detects: our safetensors (has ``aum_config``); a Hugging Face folder, or a
    ``model.safetensors`` with a ``config.json`` beside it; a Vision Mamba ImageNet file (``pos_embed``
    key / 3-channel patch conv); otherwise an official plain state_dict.
    """
    from aum.convert import hf_config_to_aum
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
        return RawCheckpoint("aum", sd, json.loads(meta["aum_config"]),
                             json.loads(meta.get("aum_metadata", "{}")), str(path))
    if kind == "aum":
        raise CheckpointError(f"{path}: not an aum checkpoint (no 'aum_config' metadata)")
    is_vim = "pos_embed" in sd or sd.get("patch_embed.proj.weight", torch.empty(0, 1)).shape[1] == 3
    if kind == "vim" or (kind == "auto" and is_vim):
        return RawCheckpoint("vim", sd, None, {}, str(path))
    hints, hf_file = {}, path.name in _HF_WEIGHTS or kind == "hf"
    if hf_file and (folder / "config.json").is_file() and kind in ("auto", "hf"):
        try:
            hints = hf_config_to_aum(json.loads((folder / "config.json").read_text()))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{folder / 'config.json'}: unreadable config ({e})") from e
        kind = "hf"
    try:
        config = infer_config(sd, **hints)
    except CheckpointMismatchError as e:
        raise CheckpointError(f"{path}: not an AuM state_dict ({e})") from e
    return RawCheckpoint("hf" if kind == "hf" else "official", sd, config, {}, str(path))


def load_checkpoint(path: str | os.PathLike, map_location="cpu", **config_overrides) -> AuM:
    """Build an :class:`AuM` from any supported checkpoint (see :func:`read_checkpoint`), in eval mode.

    The config comes from the file (ours), ``config.json`` (Hugging Face) or the tensor shapes (official,
    Vision Mamba); ``config_overrides`` win. Overrides that change the patch grid or the class count are
    adapted as in :func:`aum.convert.init_from_pretrained` (position grid resized, head re-initialised).
    """
    from aum.convert import load_raw_into
    raw = read_checkpoint(path, map_location=map_location)
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
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()

