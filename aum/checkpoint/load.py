"""Reading any supported checkpoint and loading it into a model: :func:`read_checkpoint` (detects our format,
the official AuM ``.pth``, the AuM Hugging Face folder, Vision Mamba ImageNet weights and the two released DASS
formats), :func:`load_checkpoint` (the model the file describes, of either family) and
:func:`init_from_pretrained` (an existing model initialised from a file). Each takes a path or a reference that
:func:`aum.checkpoint.hub.resolve` turns into one: a registered name (``aum-models``), ``hf://org/repo[/file]``
or a URL.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from aum.checkpoint.adapt import load_raw_into
from aum.audio.features import preset_record
from aum.checkpoint.files import HF_WEIGHTS, read_tensors
from aum.checkpoint.hub import is_reference, resolve
from aum.checkpoint.official_aum import OFFICIAL_OPTIONS, infer_config, read_official
from aum.checkpoint.official_dass import dass_format, read_dass
from aum.checkpoint.ours import FORMAT_VERSION, choose_features
from aum.checkpoint.pretrained import lookup
from aum.checkpoint.state_dict import CheckpointError, LoadReport, RawCheckpoint, normalize_keys
from aum.models.aum import AuM
from aum.models.dass import DASS
from aum.models.registry import FAMILIES, model_from_config

log = logging.getLogger(__name__)

KINDS = ("aum", "official", "hf", "vim", "dass_original", "dass_hf")
_DASS_KINDS = {"dass_original": "original", "dass_hf": "hf"}      # kind -> layout (official_dass.dass_format)


def _read_ours(sd: dict, meta: dict, path: Path) -> RawCheckpoint:
    version = int(meta.get("aum_format", 1))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version} is newer than this aum ({FORMAT_VERSION})")
    try:
        features = json.loads(meta["aum_features"]) if "aum_features" in meta else None
        config = json.loads(meta["aum_config"])
    except ValueError as e:
        raise CheckpointError(f"{path}: the aum_config / aum_features metadata is not valid JSON ({e})") from None
    family = config.pop("family", "aum")                 # files of format 1 hold AuM configs only
    if family not in FAMILIES:
        raise CheckpointError(f"{path}: records model family {family!r}; this aum knows {', '.join(FAMILIES)}")
    return RawCheckpoint("aum", sd, config, json.loads(meta.get("aum_metadata", "{}")), str(path), features, family)


def read_checkpoint(path: str | os.PathLike, map_location="cpu", kind: str = "auto",
                    hints: dict | None = None) -> RawCheckpoint:
    """Read any supported checkpoint into a :class:`RawCheckpoint` without building a model. ``path`` may be a
    registered name, ``hf://`` reference or URL (downloaded on first use, :func:`aum.checkpoint.hub.resolve`);
    a foreign file read by its registered name carries the entry's feature preset as its record (source
    ``registry: NAME``).

    ``kind="auto"`` detects: our safetensors (has ``aum_config``; AuM or DASS, as its config records); a DASS
    file by its keys (``dass_original``: the released ``.pth``, keys ``module.v.*``; ``dass_hf``: the Hugging
    Face port, keys ``dass.*`` and ``head.*``, its ``config.json`` read when beside the weights); an AuM
    Hugging Face folder, or a ``model.safetensors`` with a ``config.json`` beside it; a Vision Mamba ImageNet
    file (``pos_embed`` key / 3-channel patch conv); otherwise an official AuM plain state_dict. ``hints`` say
    what an official AuM or Hugging Face file's keys cannot (``cls_position``, or official options such as
    ``strides`` and ``if_devide_out``; they win over ``config.json``; see
    :func:`aum.checkpoint.official_aum.read_official`); other kinds ignore them.
    """
    if kind not in ("auto",) + KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose 'auto' or one of {KINDS}")
    entry = lookup(path) if is_reference(path) else None
    raw = _read(resolve(path), map_location, kind, hints)
    if entry is not None and entry.features and raw.features is None and raw.kind != "aum":
        frames = (raw.config or {}).get("target_frames")
        raw = raw._replace(features=preset_record(entry.features, f"registry: {entry.name}", frames))
    return raw


def _read(path: Path, map_location, kind: str, hints: dict | None) -> RawCheckpoint:
    """:func:`read_checkpoint` of a local path."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}"
                                + ("" if path.is_absolute() or len(path.parts) > 1 else
                                   " (neither a file nor a registered name: aum-models lists the names)"))
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        path = next((folder / n for n in HF_WEIGHTS if (folder / n).is_file()), None)
        if path is None:
            raise CheckpointError(f"{folder}: folder holds none of {HF_WEIGHTS}")
    sd, meta = read_tensors(path, map_location)
    if "aum_config" in meta and kind in ("auto", "aum"):
        return _read_ours(sd, meta, path)
    if kind == "aum":
        raise CheckpointError(f"{path}: not an aum checkpoint (no 'aum_config' metadata)")
    layout = dass_format(sd)
    if kind in _DASS_KINDS or (kind == "auto" and layout in ("original", "hf")):
        want = _DASS_KINDS.get(kind, layout)
        if layout != want:
            raise CheckpointError(f"{path}: not a {kind} checkpoint: its keys have "
                                  + (f"the DASS {layout!r} layout" if layout else "no DASS layout"))
        config_file = folder / "config.json" if want == "hf" and (folder / "config.json").is_file() else None
        sd, config = read_dass(sd, path, want, config_file)
        return RawCheckpoint(f"dass_{want}", sd, config, {}, str(path), None, "dass")
    if layout == "aum" and kind == "auto":
        raise CheckpointError(f"{path}: a bare DASS state_dict in aum's names, without the config that rebuilds "
                              f"it; write the model with aum.checkpoint.save_checkpoint instead")
    sd = normalize_keys(sd)
    is_vim = "pos_embed" in sd or sd.get("patch_embed.proj.weight", torch.empty(0, 1)).shape[1] == 3
    if kind == "vim" or (kind == "auto" and is_vim):
        return RawCheckpoint("vim", sd, None, {}, str(path))
    config_file, hf_file = None, path.name in HF_WEIGHTS or kind == "hf"
    if hf_file and (folder / "config.json").is_file() and kind in ("auto", "hf"):
        config_file, kind = folder / "config.json", "hf"
    sd, config = read_official(sd, path, config_file, hints)
    return RawCheckpoint("hf" if kind == "hf" else "official", sd, config, {}, str(path))


def load_checkpoint(path: str | os.PathLike, map_location="cpu", **config_overrides) -> AuM | DASS:
    """Build the :class:`AuM` or :class:`DASS` a supported checkpoint holds (see :func:`read_checkpoint`; a
    registered name, ``hf://`` reference or URL works as the path), in eval mode.

    The config comes from the file (ours, with its family), ``config.json`` (Hugging Face) or the tensor shapes
    (official, Vision Mamba, DASS without ``config.json``); ``config_overrides`` (fields of that family's config)
    win. Overrides that change the patch grid or the class count are adapted as in :func:`init_from_pretrained`
    (position grid resized, head re-initialised).
    For official AuM / Hugging Face files, ``cls_position`` and the official options
    (:data:`aum.checkpoint.official_aum.OFFICIAL_OPTIONS`, e.g. ``strides=(10, 10)``, ``if_devide_out=False``)
    describe the file (``hints`` of :func:`read_checkpoint`).
    The model carries ``feature_preset`` and ``feature_preset_source``: how to feed it (see
    :func:`feature_preset_of`; a file without a record gets its registry entry's preset when read by name, else
    the default and one warning).
    """
    official = {k: config_overrides.pop(k) for k in OFFICIAL_OPTIONS if k in config_overrides}
    raw = read_checkpoint(path, map_location=map_location,
                          hints={**{k: config_overrides[k] for k in ("cls_position",) if k in config_overrides},
                                 **official})
    if official and raw.kind not in ("official", "hf"):
        raise CheckpointError(f"{raw.path}: {sorted(official)} describe official AuM files; this is a {raw.kind} "
                              f"checkpoint")
    feature_preset, feature_source = choose_features(raw)     # before building: a bad record fails fast
    if raw.kind == "vim":
        base = {k: v for k, v in raw.state_dict.items() if k != "pos_embed" and not k.startswith("head.")}
        config = infer_config(base, **config_overrides)
    else:
        config = {**raw.config, **config_overrides}
    try:
        model = model_from_config(raw.family, config)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{raw.path}: cannot build the model ({e})") from e
    report = load_raw_into(model, raw)
    log.info("%s", report)
    model.feature_preset, model.feature_preset_source = feature_preset, feature_source
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()



def init_from_pretrained(model: AuM | DASS, path: str | os.PathLike, kind: str = "auto",
                         map_location="cpu", hints: dict | None = None) -> LoadReport:
    """Initialise ``model`` in place from a checkpoint of any ``kind`` (``"auto"`` or one of :data:`KINDS`) and
    return the :class:`~aum.checkpoint.LoadReport`.

    The weights are converted (Vision Mamba, official options, DASS layouts) and adapted (AuM: position grid;
    both: head) to the model; a file of the other family is refused. The load is then strict except for the
    head, so a mixer, depth or width mismatch raises
    :class:`~aum.checkpoint.CheckpointMismatchError` naming the keys instead of loading partially. ``hints``
    describe an official file as in :func:`read_official`; an official file's class token is taken to sit where
    the model's does unless they say otherwise.
    """
    hints = {**({"cls_position": model.config.cls_position} if model.has_cls else {}), **(hints or {})}
    return load_raw_into(model, read_checkpoint(path, map_location=map_location, kind=kind, hints=hints))
