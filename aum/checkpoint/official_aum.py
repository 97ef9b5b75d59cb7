"""Foreign weights -> our AuM (in the spirit of timm's ``checkpoint_filter_fn``).

* :func:`vim_to_aum`: Vision Mamba ImageNet state_dict -> AuM layout (docs/checkpoints.md).
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

from aum.checkpoint.state_dict import CheckpointError, CheckpointMismatchError
from aum.models.aum import AuMConfig, resize_pos_grid

POS_KEY = "pos_embed.pos_embed"
HEAD_KEYS = ("head.weight", "head.bias")
# Options of the official ``AudioMamba`` constructor that change how a file's weights are used; its state_dict
# keys do not record them. Read from a Hugging Face ``config.json``, or passed by the caller as hints.
OFFICIAL_OPTIONS = ("bimamba_type", "strides", "spectrogram_size", "if_cls_token", "use_middle_cls_token",
                    "use_end_cls_token", "use_double_cls_token", "transpose_token_sequence", "if_devide_out")
_UNSUPPORTED = {"transpose_token_sequence": "tokens in time-major order",
                "use_double_cls_token": "a class token at each end, cls_token_head and cls_token_tail"}
_CLS_WARNED: set[str] = set()       # files already warned about (one warning per file and process)


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
                      f"read_checkpoint)", stacklevel=4)
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
