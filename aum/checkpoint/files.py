"""What a checkpoint file is and how its tensors are read safely: safetensors, or a torch pickle that only ever
loads with ``torch.load(weights_only=True)`` (objects refused; the one class allowed besides tensors and plain
containers is ``argparse.Namespace``, the training arguments Vision Mamba / DeiT-style checkpoints store beside
their weights: it only holds attribute values, which the same restricted unpickler reads). Every failure names
the file.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import torch
from safetensors import safe_open

from aum.checkpoint.state_dict import CheckpointError, unwrap

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")   # the weights file of a Hugging Face folder


def head_format(head: bytes) -> str | None:
    """``"safetensors"``, ``"pickle"`` (a torch file) or None, from the first 9 bytes of a file."""
    if head[8:9] == b"{":                       # u64 header length, then the JSON header
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":   # torch zip archive / legacy pickle
        return "pickle"
    return None


def sniff_format(path: Path) -> str:
    """``"safetensors"`` or ``"pickle"`` (a torch file), by the first bytes of ``path``; anything else raises
    :class:`CheckpointError` naming the file."""
    with open(path, "rb") as fh:
        kind = head_format(fh.read(9))
    if kind is None:
        raise CheckpointError(f"{path}: not a checkpoint we can read (neither safetensors nor a torch pickle)")
    return kind


def read_tensors(path: Path, map_location) -> tuple[dict, dict]:
    """``(state_dict, safetensors metadata)`` of a file, pickles through ``weights_only=True`` only. The keys are
    the file's own (a training checkpoint's state_dict unwrapped, no prefix stripped: see
    :func:`aum.checkpoint.state_dict.normalize_keys`), so the layout can be told from them."""
    if sniff_format(path) == "safetensors":
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                sd, meta = {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
        return sd, meta
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle: it holds objects other than tensors and plain "
                              f"containers (weights_only=True). If you trust the file, extract its state_dict "
                              f"yourself and pass that instead. Detail: {str(e).splitlines()[0]}") from e
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read torch checkpoint ({type(e).__name__}: {e})") from e
    try:
        return unwrap(obj), {}
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
