"""Clip pooling: the one vocabulary (``mean``, ``max``, ``cls``, joined by ``+``) and the one implementation,
used by :func:`aum.embed.scene_embedding`, :mod:`hear_api` and :mod:`eval.embeddings` alike."""
from __future__ import annotations

import torch

from aum.embed.windows import Combine, column_width, encode_columns, read_out_layers

POOLINGS = ("mean", "max", "cls")
POOLING_ALIASES = {"both": "cls+mean"}           # the older name of eval.probe's --embedding


def parse_pooling(pooling: str) -> list[str]:
    """``"mean+max"`` -> ``["mean", "max"]`` (``"both"`` is an alias of ``"cls+mean"``); raises ``ValueError``
    naming the valid names for anything else (an unknown or repeated name, an empty string)."""
    text = str(pooling).strip()
    names = [p.strip() for p in POOLING_ALIASES.get(text, text).split("+")]
    if not names or any(n not in POOLINGS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"pooling must be one or more of {POOLINGS} joined by '+' (e.g. 'mean+max'), "
                         f"got {pooling!r}")
    return names


def check_pooling(model, pooling: str) -> list[str]:
    """:func:`parse_pooling`, and a ``ValueError`` when it asks for ``cls`` of an encoder without a class token."""
    names = parse_pooling(pooling)
    if "cls" in names and not model.has_cls:
        raise ValueError(f"pooling={pooling!r} needs an encoder with a class token, but this "
                         f"{getattr(model, 'family', 'encoder')} encoder has none; use 'mean' and/or 'max'")
    return names


def pooled_width(model, pooling: str, layer: int | None = None, combine: Combine = "mean") -> int:
    """Values per clip of :func:`pool_columns` with ``pooling`` at read-out ``layer``: each ``mean`` / ``max``
    part a column (:func:`aum.embed.column_width`), each ``cls`` part the token width."""
    col = column_width(model, layer, combine)
    return sum(int(model.layer_dim(layer)) if name == "cls" else col for name in parse_pooling(pooling))


def pool_columns(columns: torch.Tensor, cls: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Pool column embeddings ``[.., n, D']`` (and the class-token output ``[.., D]``) to one float32 vector
    per clip: the ``pooling`` parts (:func:`parse_pooling`) concatenated in their order: ``mean`` and ``max``
    over the columns, ``cls`` the class token (an error when ``cls`` is ``None``)."""
    names = parse_pooling(pooling)
    if "cls" in names and cls is None:
        raise ValueError(f"pooling={pooling!r} needs an encoder with a class token (cls_position != 'none')")
    parts = {"cls": lambda: cls, "mean": lambda: columns.mean(dim=-2), "max": lambda: columns.amax(dim=-2)}
    return torch.cat([parts[name]() for name in names], dim=-1).to(torch.float32)


def scene_from_features(model, feats: torch.Tensor, pooling: str = "mean", layer: int | list[int] | None = None,
                        window_frames: int | None = None, hop_frames: int | None = None,
                        combine: Combine = "mean", batch_size: int = 8, pad_value: float = 0.0,
                        pad_to_window: bool = True):
    """One pooled vector per clip of normalised features ``[T, mel]`` / ``[B, T, mel]`` of any length (float32
    ``[D'']`` / ``[B, D'']``): the clip's columns (:func:`aum.embed.encode_columns`, same arguments) pooled by
    :func:`pool_columns`. A list of ``layer`` values gives a list of such tensors from one pass, also for
    layers of different time steps (DASS stages)."""
    check_pooling(model, pooling)
    single = feats.dim() == 2
    many = isinstance(layer, (list, tuple))
    embs, _, cls = encode_columns(model, feats[None] if single else feats, read_out_layers(model, layer),
                                  window_frames, hop_frames, combine, batch_size, pad_value, pad_to_window)
    outs = [pool_columns(e, c, pooling) for e, c in zip(embs, cls)]
    outs = [o[0] if single else o for o in outs]
    return outs if many else outs[0]
