"""Foreign weights -> our AuM (in the spirit of timm's ``checkpoint_filter_fn``).

* :func:`vim_to_aum`: Vision Mamba ImageNet state_dict -> AuM layout (reference section 4).
* :func:`adapt_to_model`: fit an AuM-layout state_dict to a model of another patch grid / class count.
* :func:`init_from_pretrained`: initialise an existing model (e.g. a 35-class fine-tuning model) from any
  supported checkpoint, refusing silently-partial loads: only the head may be left out.
* :func:`read_official`: an official / Hugging Face file with the official constructor options its keys cannot
  tell (``config.json`` or caller hints): supported ones converted, the others refused by name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

import torch

from aum.checkpoint import (CheckpointError, CheckpointMismatchError, LoadReport, RawCheckpoint, infer_config,
                            load_state_dict_checked, read_checkpoint)
from aum.models.aum import AuM, AuMConfig, resize_pos_grid

POS_KEY = "pos_embed.pos_embed"
HEAD_KEYS = ("head.weight", "head.bias")
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "aum.")
# Options of the official ``AudioMamba`` constructor that change how a file's weights are used; its state_dict
# keys do not record them. Read from a Hugging Face ``config.json``, or passed by the caller as hints.
OFFICIAL_OPTIONS = ("bimamba_type", "strides", "spectrogram_size", "if_cls_token", "use_middle_cls_token",
                    "use_end_cls_token", "use_double_cls_token", "transpose_token_sequence", "if_devide_out")
_UNSUPPORTED = {"transpose_token_sequence": "tokens in time-major order",
                "use_double_cls_token": "a class token at each end, cls_token_head and cls_token_tail"}
_CLS_WARNED: set[str] = set()       # files already warned about (one warning per file and process)


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


def hf_config_to_aum(cfg: dict) -> dict:
    """AuMConfig fields from a Hugging Face ``config.json``: the re-upload's official names
    (``bimamba_type``, ``strides``, ``spectrogram_size``, ...), AuMConfig names, or ``{"aum_config": {...}}``."""
    if "aum_config" in cfg:
        return dict(cfg["aum_config"])
    ours = {f.name: cfg[f.name] for f in dataclasses.fields(AuMConfig) if f.name in cfg}
    names = {"bimamba_type": "mixer", "strides": "patch_stride", "patch_size": "patch_size"}
    ours.update({new: cfg[old] for old, new in names.items() if cfg.get(old) is not None})
    if cfg.get("spectrogram_size"):
        ours["num_mel_bins"], ours["target_frames"] = cfg["spectrogram_size"]
    if "cls_position" in ours:
        return ours
    if cfg.get("if_cls_token") is False:
        ours["cls_position"] = "none"
    elif "use_middle_cls_token" in cfg or "use_end_cls_token" in cfg:
        # as the official forward decides: middle first (its default is true), then end, else head
        ours["cls_position"] = ("middle" if cfg.get("use_middle_cls_token", True)
                                else "tail" if cfg.get("use_end_cls_token") else "head")
    return ours


def fold_direction_sum(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A v2 state_dict of an official model built with ``if_devide_out=False`` (its two directions SUMMED before
    ``out_proj``) in our averaging layout: every ``mixer.out_proj.weight`` doubled. Exact in floating point:
    ``(2 W) ((f + b) / 2) == W (f + b)`` (``out_proj`` has no bias)."""
    return {k: (v * 2 if k.endswith("mixer.out_proj.weight") else v) for k, v in sd.items()}


def read_official(sd: dict[str, torch.Tensor], path, config_file=None,
                  hints: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict in our layout, AuMConfig fields)`` of an official-layout file at ``path``.

    ``config_file`` (a Hugging Face ``config.json``) and ``hints`` (the caller's, which win) give what the keys
    cannot: AuMConfig names (``cls_position``) or :data:`OFFICIAL_OPTIONS` (``strides``, ``if_devide_out``, ...).
    ``if_devide_out=False`` on a v2 model is folded into ``out_proj`` (:func:`fold_direction_sum`); the options
    aum cannot reproduce (``transpose_token_sequence``, ``use_double_cls_token``) are refused by name. A ``.pth``
    with a class token and no stated position is read as ``middle`` with a warning saying how to override.
    """
    options, fields = {}, {}
    if config_file is not None:
        try:
            options = json.loads(Path(config_file).read_text())
            if not isinstance(options, dict):
                raise ValueError("expected a JSON object")
            fields = hf_config_to_aum(options)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{config_file}: unreadable config ({e})") from e
    hints = dict(hints or {})
    options, fields = {**options, **hints}, {**fields, **hf_config_to_aum(hints)}
    for name, what in _UNSUPPORTED.items():
        if options.get(name):
            source = "the caller" if hints.get(name) else config_file
            raise CheckpointError(f"{path}: the official option {name}=True ({what}, set by {source}) is not "
                                  f"supported by aum, so this file cannot be loaded; if the file was not trained "
                                  f"with it, pass {name}=False")
    if "cls_token_head" in sd or "cls_token_tail" in sd:
        raise CheckpointError(f"{path}: holds cls_token_head / cls_token_tail, so it was trained with the official "
                              f"option use_double_cls_token=True ({_UNSUPPORTED['use_double_cls_token']}); aum "
                              f"models have one class token and cannot load this file")
    try:
        config = infer_config(sd, **fields)
    except CheckpointMismatchError as e:
        raise CheckpointError(f"{path}: cannot read it as an AuM state_dict: {e}") from e
    if config_file is None and "cls_token" in sd and "cls_position" not in fields \
            and os.path.abspath(path) not in _CLS_WARNED:
        _CLS_WARNED.add(os.path.abspath(path))
        warnings.warn(f"{path}: an official .pth does not record where its class token sat; loading it as "
                      f"'middle' (the official default). If it was trained with another position, pass "
                      f"cls_position='head' or 'tail' to load_checkpoint (hints={{'cls_position': ...}} for "
                      f"read_checkpoint)", stacklevel=3)
    if options.get("if_devide_out") is False and config["mixer"] == "v2":
        sd = fold_direction_sum(sd)
    return sd, config


def vim_to_aum(vim_sd: dict[str, torch.Tensor], target_grid: tuple[int, int] = (8, 64),
               n_prefix: int = 1) -> dict[str, torch.Tensor]:
    """Convert a Vision Mamba (middle class token) state_dict to the AuM layout.

    ``pos_embed`` -> ``pos_embed.pos_embed``; RGB patch weights averaged to one channel; the middle
    class-token position (index ``N // 2`` of the ``N`` patches, 98 for 14x14) moved to index 0 (dropped when
    ``n_prefix == 0``); the square patch grid resized bilinearly with antialiasing to ``target_grid``
    (image height -> frequency, width -> time); ``head.*`` and ``rope.*`` dropped.
    """
    if n_prefix not in (0, 1):
        raise ValueError(f"n_prefix must be 0 or 1, got {n_prefix}")
    sd = {k: v for k, v in vim_sd.items() if not k.startswith(("head.", "rope."))}
    pos = sd.pop("pos_embed", None)
    pos = sd.pop(POS_KEY) if pos is None else pos
    w = sd["patch_embed.proj.weight"]
    if w.shape[1] != 1:
        sd["patch_embed.proj.weight"] = w.mean(1, keepdim=True)
    has_cls = "cls_token" in sd
    n = pos.shape[1] - int(has_cls)
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"Vision Mamba pos_embed has {n} patch positions, not a square grid")
    if has_cls:
        mid = n // 2
        cls_pos, patches = pos[:, mid:mid + 1], torch.cat([pos[:, :mid], pos[:, mid + 1:]], dim=1)
    else:
        cls_pos, patches = None, pos
    if n_prefix and cls_pos is None:
        raise ValueError("the model has a class token but the Vision Mamba weights have none")
    patches = resize_pos_grid(patches, (side, side), tuple(target_grid))
    sd[POS_KEY] = (torch.cat([cls_pos, patches], dim=1) if n_prefix else patches).contiguous()
    return sd


def adapt_to_model(sd: dict[str, torch.Tensor], model: AuM,
                   source_grid: tuple[int, int] | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fit an AuM-layout ``sd`` to ``model``: ``(adapted state_dict, notes)``.

    A position embedding of another patch grid is resized to the model's grid (``source_grid`` defaults to
    the model's number of frequency rows, e.g. 512 patches -> 8x64 into an 8x8 Speech-Commands model); the head
    is dropped when the model has none or another class count. Other differences are left for the checked
    load to report.
    """
    sd, notes = dict(sd), []
    grid, n_prefix = model.pos_embed.grid, model.pos_embed.n_prefix
    want = model.pos_embed.pos_embed.shape[1]
    if POS_KEY in sd and sd[POS_KEY].shape[1] != want:
        if int("cls_token" in sd) != n_prefix:
            raise CheckpointMismatchError(f"{POS_KEY}: the checkpoint {'has' if n_prefix == 0 else 'lacks'} a "
                                          f"class token that the model {'lacks' if n_prefix == 0 else 'has'}")
        pos = sd[POS_KEY]
        n = pos.shape[1] - n_prefix
        if source_grid is None and n % grid[0] == 0:
            source_grid = (grid[0], n // grid[0])
        if source_grid is None or source_grid[0] * source_grid[1] != n:
            raise CheckpointMismatchError(f"{POS_KEY}: cannot place {n} patch positions on a grid "
                                          f"{source_grid or ''} to resize them to {grid}")
        sd[POS_KEY] = torch.cat([pos[:, :n_prefix], resize_pos_grid(pos[:, n_prefix:], source_grid, grid)], 1)
        notes.append(f"position embedding resized from grid {tuple(source_grid)} to {tuple(grid)}")
    classes = model.config.num_classes
    if "head.weight" in sd and (classes == 0 or sd["head.weight"].shape[0] != classes):
        notes.append(f"head of {sd['head.weight'].shape[0]} classes dropped: the model has "
                     + (f"{classes} classes" if classes else "no head"))
        for k in HEAD_KEYS:
            sd.pop(k, None)
    return sd, notes


def load_raw_into(model: AuM, raw: RawCheckpoint) -> LoadReport:
    """Convert and adapt a :class:`~aum.checkpoint.RawCheckpoint` for ``model`` and load it, checked: only the
    head may be missing (it then keeps its fresh initialisation); anything else raises."""
    sd, notes, source_grid = raw.state_dict, [], None
    if raw.kind == "vim":
        sd = vim_to_aum(sd, model.pos_embed.grid, model.pos_embed.n_prefix)
        source_grid = model.pos_embed.grid
        notes.append(f"Vision Mamba weights: RGB patch conv averaged, class-token position moved to slot 0, "
                     f"14x14 position grid resized to {model.pos_embed.grid}, ImageNet head dropped")
    elif raw.config:
        try:
            cfg = AuMConfig.from_dict(raw.config)
            source_grid = cfg.grid(cfg.target_frames)
        except (KeyError, ValueError, TypeError):
            source_grid = None
    sd, more = adapt_to_model(sd, model, source_grid)
    has_head = isinstance(model.head, torch.nn.Linear)
    report = load_state_dict_checked(model, sd, allow_missing=HEAD_KEYS if has_head else ())
    if has_head and "head.weight" in report.missing:
        more.append("head keeps its fresh initialisation (not in the checkpoint, or dropped above)")
    report.notes, report.source, report.kind = notes + more, raw.path, raw.kind
    return report


def init_from_pretrained(model: AuM, path: str | os.PathLike, kind: str = "auto",
                         map_location="cpu", hints: dict | None = None) -> LoadReport:
    """Initialise ``model`` in place from a checkpoint of any ``kind`` (``"auto"``, ``"aum"``, ``"official"``,
    ``"vim"``, ``"hf"``) and return the :class:`~aum.checkpoint.LoadReport`.

    The weights are converted (Vision Mamba, official options) and adapted (position grid, head) to the model;
    the load is then strict except for the head, so a mixer, depth or width mismatch raises
    :class:`~aum.checkpoint.CheckpointMismatchError` naming the keys instead of loading partially. ``hints``
    describe an official file as in :func:`read_official`; an official file's class token is taken to sit where
    the model's does unless they say otherwise.
    """
    hints = {**({"cls_position": model.config.cls_position} if model.has_cls else {}), **(hints or {})}
    return load_raw_into(model, read_checkpoint(path, map_location=map_location, kind=kind, hints=hints))
