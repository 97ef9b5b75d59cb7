"""Fitting a read checkpoint to a model built for another task: the position grid resized to the model's patch
grid (AuM), the head re-initialised for another class count (AuM and DASS), Vision Mamba ImageNet weights
converted first; only the head may be left out, every other missing or unexpected key is an error, and so is a
file of the other encoder family.
"""
from __future__ import annotations

import torch

from aum.checkpoint.official_aum import HEAD_KEYS, POS_KEY, vim_to_aum
from aum.checkpoint.official_dass import HEAD_KEYS as DASS_HEAD_KEYS
from aum.checkpoint.state_dict import CheckpointMismatchError, LoadReport, RawCheckpoint, load_state_dict_checked
from aum.models.aum import AuM, AuMConfig, resize_pos_grid
from aum.models.dass import DASS

_HEAD_KEYS = {"aum": HEAD_KEYS, "dass": DASS_HEAD_KEYS}     # per family


def drop_other_head(sd: dict[str, torch.Tensor], model: AuM | DASS) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(sd without the head, notes)`` when ``model`` has no head or another class count than ``sd``'s head;
    ``(sd, [])`` otherwise."""
    weight, bias = _HEAD_KEYS[model.family]
    classes = model.config.num_classes
    if weight not in sd or (classes and sd[weight].shape[0] == classes):
        return sd, []
    note = f"head of {sd[weight].shape[0]} classes dropped: the model has " + (f"{classes} classes" if classes
                                                                               else "no head")
    return {k: v for k, v in sd.items() if k not in (weight, bias)}, [note]


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
    sd, dropped = drop_other_head(sd, model)
    return sd, notes + dropped


def load_raw_into(model: AuM | DASS, raw: RawCheckpoint) -> LoadReport:
    """Convert and adapt a :class:`~aum.checkpoint.RawCheckpoint` for ``model`` and load it, checked: only the
    head may be missing (it then keeps its fresh initialisation); anything else raises, and so does a checkpoint
    of another encoder family (:class:`~aum.checkpoint.CheckpointMismatchError`)."""
    if raw.family != model.family:
        raise CheckpointMismatchError(f"{raw.path}: its encoder family is {raw.family!r} ({raw.kind} checkpoint), "
                                      f"the model's is {model.family!r} ({type(model).__name__}); one family's "
                                      f"weights cannot initialise the other's")
    sd, notes, source_grid = raw.state_dict, [], None
    if model.family == "dass":                   # no position grid: only the head can differ
        sd, more = drop_other_head(sd, model)
    else:
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
    head = _HEAD_KEYS[model.family]
    has_head = model.config.num_classes > 0
    report = load_state_dict_checked(model, sd, allow_missing=head if has_head else ())
    if has_head and head[0] in report.missing:
        more.append("head keeps its fresh initialisation (not in the checkpoint, or dropped above)")
    report.notes, report.source, report.kind = notes + more, raw.path, raw.kind
    return report
