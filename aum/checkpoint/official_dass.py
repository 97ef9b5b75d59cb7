"""State_dicts of the released DASS checkpoints, converted to :class:`aum.models.dass.DASS` names.

Two formats (``docs/checkpoints.md`` lists their keys and shapes):

* the original ``.pth`` (``DataParallel(DASS)``): every key starts with ``module.v.``; after that prefix the
  names and shapes are our own, so conversion is the prefix and a full check;
* the Hugging Face port (``DASSForAudioClassification``): backbone under ``dass.`` with renamed stem /
  downsample / final norm, ``head.*`` at top level, and the per-direction projections stored flat
  (``op.x_proj.weight [4(R+2N), C]``, ``op.dt_projs.weight [4C, R]``).

Both converters refuse a partial or foreign file: every key must map and every tensor of the model must be
there with its shape (:class:`aum.checkpoint.CheckpointMismatchError`, naming the keys).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from aum.checkpoint.state_dict import CheckpointError, CheckpointMismatchError
from aum.models.dass import K_DIRECTIONS, DASS, DASSConfig
from aum.models.registry import DASS_PRESETS

ORIGINAL_PREFIX = "module.v."
HEAD_KEYS = ("classifier.head.weight", "classifier.head.bias")    # our DASS head (re-initialised for new classes)
_HF_RENAMES = (                                   # (HF pattern, our replacement), applied to the first match
    (r"^dass\.patch_embeddings\.projection\.0\.", "patch_embed.0."),
    (r"^dass\.patch_embeddings\.projection\.1\.", "patch_embed.2."),
    (r"^dass\.patch_embeddings\.projection\.3\.", "patch_embed.5."),
    (r"^dass\.patch_embeddings\.projection\.4\.", "patch_embed.7."),
    (r"^dass\.layers\.(\d+)\.downsample\.down\.", r"layers.\1.downsample.1."),
    (r"^dass\.layers\.(\d+)\.downsample\.norm\.", r"layers.\1.downsample.3."),
    (r"^dass\.layers\.(\d+)\.blocks\.(\d+)\.op\.x_proj\.weight$", r"layers.\1.blocks.\2.op.x_proj_weight"),
    (r"^dass\.layers\.(\d+)\.blocks\.(\d+)\.op\.dt_projs\.weight$", r"layers.\1.blocks.\2.op.dt_projs_weight"),
    (r"^dass\.layers\.", "layers."),
    (r"^dass\.norm\.", "classifier.norm."),
    (r"^head\.", "classifier.head."),
)


def _mismatch(message: str) -> Exception:
    return CheckpointMismatchError(message)


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def dass_format(state_dict: dict) -> str | None:
    """Which DASS layout a state_dict has, by its keys: ``"original"`` (``module.v.`` .pth), ``"hf"``
    (``dass.`` port), ``"aum"`` (our names), or ``None`` (not DASS)."""
    keys = set(state_dict)
    if any(k.startswith(ORIGINAL_PREFIX + "layers.") for k in keys) and any(".op.x_proj_weight" in k for k in keys):
        return "original"
    if any(k.startswith("dass.layers.") for k in keys) and any(".op.x_proj.weight" in k for k in keys):
        return "hf"
    if any(k.startswith("layers.") and k.endswith(".op.x_proj_weight") for k in keys):
        return "aum"
    return None


def dass_config_from_state_dict(state_dict: dict, **overrides) -> DASSConfig:
    """The :class:`DASSConfig` implied by the shapes of a state_dict in our names (stage widths and block
    counts, N, conv size, MLP ratio, head classes; drop-path from the preset with these sizes, if any);
    ``overrides`` win."""
    blocks: dict[int, int] = {}
    for key in state_dict:
        if m := re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.", key):
            i, j = int(m[1]), int(m[2])
            blocks[i] = max(blocks.get(i, 0), j + 1)
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise _mismatch(f"not a DASS state_dict: blocks found for stages {sorted(blocks)}, expected 0, 1, ...")
    try:
        dims = [state_dict[f"layers.{i}.blocks.0.norm.weight"].shape[0] for i in sorted(blocks)]
        op = "layers.0.blocks.0.op."
        rank, n2 = state_dict[op + "dt_projs_weight"].shape[-1], state_dict[op + "x_proj_weight"].shape[1]
        d_conv = state_dict[op + "conv2d.weight"].shape[-1]
        hidden = state_dict["layers.0.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise _mismatch(f"DASS state_dict lacks {err.args[0]}, needed to infer the architecture") from None
    depths = [blocks[i] for i in sorted(blocks)]
    head = state_dict.get("classifier.head.weight")
    cfg = {"dims": dims, "depths": depths, "d_state": (n2 - rank) // 2, "d_conv": d_conv,
           "mlp_ratio": hidden / dims[0], "num_classes": 0 if head is None else head.shape[0]}
    preset = next((p for p in DASS_PRESETS.values() if list(p["dims"]) == dims and list(p["depths"]) == depths), None)
    if preset is not None:
        cfg["drop_path_rate"] = preset["drop_path_rate"]
    return DASSConfig.from_dict({**cfg, **overrides})


def dass_config_from_hf(hf_config: dict) -> DASSConfig:
    """Our :class:`DASSConfig` from an HF ``config.json`` dict (``depths``, ``dims``, ``drop_path_rate``,
    ``num_classes`` or ``id2label``, ``num_mel_bins``, ``max_length``; the SSM settings are fixed there)."""
    if not isinstance(hf_config, dict) or "depths" not in hf_config:
        raise _mismatch(f"HF DASS config must be a dict with 'depths' (and 'dims'); got {hf_config!r:.200}")
    base = DASSConfig()
    classes = hf_config.get("num_classes", len(hf_config.get("id2label", {})) or 527)
    return DASSConfig(dims=hf_config.get("dims", base.dims), depths=hf_config["depths"],
                      drop_path_rate=hf_config.get("drop_path_rate", base.drop_path_rate),
                      num_classes=int(classes), num_mel_bins=hf_config.get("num_mel_bins", base.num_mel_bins),
                      target_frames=hf_config.get("max_length", base.target_frames))


def check_dass_state_dict(state_dict: dict, config: DASSConfig, source: str = "checkpoint") -> None:
    """Raise :class:`aum.checkpoint.CheckpointMismatchError` unless ``state_dict`` (our names) holds exactly
    the tensors of ``DASS(config)`` with their shapes; the message names ``source`` and the keys."""
    with torch.device("meta"):
        own = {k: v.shape for k, v in DASS(config).state_dict().items()}
    missing, unexpected = set(own) - set(state_dict), set(state_dict) - set(own)
    bad = [f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(own[k])}"
           for k in sorted(set(own) & set(state_dict)) if tuple(state_dict[k].shape) != tuple(own[k])]
    if missing or unexpected or bad:
        raise _mismatch(
            f"{source} does not fit DASS dims={list(config.dims)} depths={list(config.depths)}"
            + (f"\n  missing keys: {_names(missing)}" if missing else "")
            + (f"\n  unexpected keys: {_names(unexpected)}" if unexpected else "")
            + (f"\n  shape mismatch: {'; '.join(bad[:8])}" if bad else ""))


def _as_config(config, state_dict: dict) -> DASSConfig:
    if config is None:
        return dass_config_from_state_dict(state_dict)
    if isinstance(config, DASSConfig):
        return config
    ours = {f.name for f in dataclasses.fields(DASSConfig)}
    return DASSConfig.from_dict(config) if set(config) <= ours else dass_config_from_hf(config)


def dass_state_dict_from_original(state_dict: dict, config: DASSConfig | dict | None = None) -> dict:
    """Convert an official DASS ``.pth`` state_dict (keys ``module.v.*``) to our names and check it against
    ``config`` (a :class:`DASSConfig` or its dict; default: inferred from the shapes)."""
    foreign = [k for k in state_dict if not k.startswith(ORIGINAL_PREFIX)]
    if foreign:
        raise _mismatch(f"original DASS checkpoint: keys without the '{ORIGINAL_PREFIX}' prefix: {_names(foreign)}")
    out = {k[len(ORIGINAL_PREFIX):]: v for k, v in state_dict.items()}
    check_dass_state_dict(out, _as_config(config, out), "original DASS checkpoint")
    return out


def dass_state_dict_from_hf(state_dict: dict, config: DASSConfig | dict | None = None) -> dict:
    """Convert a Hugging Face DASS state_dict (``dass.*`` backbone, ``head.*``) to our names: renames, and the
    flat ``x_proj.weight [4(R+2N), C]`` / ``dt_projs.weight [4C, R]`` viewed per direction as ``[4, R+2N, C]``
    / ``[4, C, R]``. ``config``: a :class:`DASSConfig`, its dict, or the HF ``config.json`` dict (default:
    inferred from the shapes); the result is checked against it."""
    out, unmapped = {}, []
    for key, value in state_dict.items():
        new = next((re.sub(p, r, key) for p, r in _HF_RENAMES if re.match(p, key)), None)
        if new is None:
            unmapped.append(key)
            continue
        if new.endswith(".op.x_proj_weight") or new.endswith(".op.dt_projs_weight"):
            if value.dim() != 2 or value.shape[0] % K_DIRECTIONS:
                raise _mismatch(f"HF DASS checkpoint: {key} has shape {tuple(value.shape)}; expected a 2-D "
                                f"weight whose first size is a multiple of {K_DIRECTIONS}")
            value = value.reshape(K_DIRECTIONS, value.shape[0] // K_DIRECTIONS, value.shape[1])
        out[new] = value
    if unmapped:
        raise _mismatch(f"HF DASS checkpoint: keys outside the DASS layout: {_names(unmapped)}")
    check_dass_state_dict(out, _as_config(config, out), "HF DASS checkpoint")
    return out


def read_dass(state_dict: dict, path, layout: str, config_file=None) -> tuple[dict, dict]:
    """``(state_dict in our names, DASSConfig fields)`` of a released DASS file at ``path`` whose keys have
    ``layout`` (``"original"`` or ``"hf"``, see :func:`dass_format`). ``config_file``: the Hugging Face
    ``config.json`` beside the weights, when there is one; otherwise the architecture comes from the shapes.
    Every failure is a :class:`aum.checkpoint.CheckpointError` naming the file (a partial or foreign file a
    :class:`~aum.checkpoint.CheckpointMismatchError` naming the keys)."""
    hf_config = None
    if config_file is not None:
        try:
            hf_config = json.loads(Path(config_file).read_text())
            if not isinstance(hf_config, dict):
                raise ValueError("expected a JSON object")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{config_file}: unreadable config ({e})") from e
    try:
        if layout == "original":
            sd = dass_state_dict_from_original(state_dict)
            config = dass_config_from_state_dict(sd)
        elif layout == "hf":
            config = dass_config_from_hf(hf_config) if hf_config is not None else None
            sd = dass_state_dict_from_hf(state_dict, config)
            config = config or dass_config_from_state_dict(sd)
        else:
            raise ValueError(f"unknown DASS layout {layout!r}; expected 'original' or 'hf'")
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{path}: {e}" + (f" (architecture from {config_file})" if hf_config else "")
                                      ) from None
    return sd, config.to_dict()


__all__ = ["HEAD_KEYS", "ORIGINAL_PREFIX", "check_dass_state_dict", "dass_config_from_hf",
           "dass_config_from_state_dict", "dass_format", "dass_state_dict_from_hf", "dass_state_dict_from_original",
           "read_dass"]
