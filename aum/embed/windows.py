"""Column embeddings of spectrograms of any length: sliding windows over any encoder, stitched by ownership.

The encoder describes its own time geometry (``token_frames(layer)``: the frames one token stands for,
``frame_multiple(layer)``: the frames between tokens, ``token_grid(frames, mel, layer)``: how many it gives), so
the same code serves AuM (16-frame patches, stride 16 or 10) and DASS (32-frame cells at its last stage, with a
partial last cell padded: ``ceil``). Windows are whole numbers of columns of the coarsest layer read.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from aum.audio.features import fbank, get_preset, normalize
from aum.audio.frames import (FRAME_LENGTH_MS, FRAME_SHIFT_MS, HOP_SAMPLES, KALDI_SAMPLE_RATE, WINDOW_SAMPLES,
                              frames_for_samples, samples_for_frames)

Combine = Literal["mean", "concat"]


def time_geometry(model, layer: int | None = None) -> tuple[int, int]:
    """``(frames per column, frames between columns)`` of ``model`` at read-out ``layer`` (default the last),
    from the encoder's own description (``token_frames``, ``frame_multiple``)."""
    return int(model.token_frames(layer)), int(model.frame_multiple(layer))


def column_width(model, layer: int | None = None, combine: Combine = "mean") -> int:
    """Values per column embedding at read-out ``layer``: the token width (``combine="mean"``), or it times
    the number of frequency rows (``"concat"``)."""
    if combine not in ("mean", "concat"):
        raise ValueError(f"combine must be 'mean' or 'concat', got {combine!r}")
    rows = model.token_grid(model.token_frames(layer), None, layer)[0] if combine == "concat" else 1
    return int(model.layer_dim(layer)) * int(rows)


def read_out_layers(model, layer) -> list[int]:
    """``layer`` (``None``, an int, or a list of them) as a list of read-out indices (``None`` = the last)."""
    many = isinstance(layer, (list, tuple))
    return [model.num_layers if n is None else int(n) for n in (layer if many else [layer])]


def column_times_ms(n_columns: int, patch_frames: int = 16, stride_frames: int = 16, first_frame: float = 0.0,
                    start_ms: float = 0.0) -> torch.Tensor:
    """Centres (ms, float64) of ``n_columns`` columns whose first column starts at frame ``first_frame``.

    Column ``j`` covers frames ``first_frame + j * stride_frames ...`` ``+ patch_frames - 1``, i.e. the audio
    ``[10 * f0, 10 * (f0 + patch_frames - 1) + 25)`` ms; its time is the centre of that span, plus ``start_ms``.
    """
    j = torch.arange(n_columns, dtype=torch.float64)
    first = (first_frame + j * stride_frames) * FRAME_SHIFT_MS
    return start_ms + first + ((patch_frames - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 2.0


def window_starts(n_columns: int, window_columns: int, hop_columns: int) -> list[int]:
    """Start columns of the sliding windows over ``n_columns``: ``0, hop, 2 hop, ...`` and a last window
    aligned with the end (every window is full; one window when the clip fits)."""
    if window_columns < 1 or hop_columns < 1:
        raise ValueError(f"window and hop must be at least one column, got {window_columns}, {hop_columns}")
    if n_columns <= window_columns:
        return [0]
    last = n_columns - window_columns
    return sorted(set(range(0, last, hop_columns)) | {last})


def _owned_ranges(starts: list[int], window_columns: int, n_columns: int) -> list[tuple[int, int]]:
    """For each window, the columns ``[a, b)`` it is most central for (nearest window centre; ties go to
    the later window). The ranges tile ``[0, n_columns)``."""
    bounds = [0]
    for s0, s1 in zip(starts[:-1], starts[1:]):
        # column c belongs to the earlier window iff c - centre0 < centre1 - c, centres s + (W - 1) / 2
        bounds.append(math.ceil((s0 + s1 + window_columns - 1) / 2.0))
    bounds.append(n_columns)
    return [(max(a, s), min(b, s + window_columns)) for a, b, s in zip(bounds[:-1], bounds[1:], starts)]


def pad_value_for(preset) -> float:
    """The padding value of normalised features of ``preset``: an all-zero log-mel frame after
    normalisation, as ``pad_or_cut`` pads before normalising in AST/AuM training."""
    cfg = get_preset(preset)
    return 0.0 if cfg.mean is None else float(normalize(torch.zeros(()), cfg.mean, cfg.std))


def fbank_frames(wave: torch.Tensor, sample_rate: int = KALDI_SAMPLE_RATE, chunk_frames: int = 6000,
                 name: str = "clip") -> torch.Tensor:
    """Kaldi fbank ``[T, 128]`` of one (long) mono waveform, computed ``chunk_frames`` frames at a time.

    Same frames as :func:`aum.audio.features.fbank` (Kaldi frames are independent and each removes its own DC
    offset), but peak memory is that of one chunk (about 60 s by default) instead of the whole clip.
    A clip shorter than one 25 ms window is zero-padded to one window (one frame).
    """
    if sample_rate != KALDI_SAMPLE_RATE:
        from aum.audio.io import resample
        wave = resample(torch.as_tensor(wave), sample_rate, KALDI_SAMPLE_RATE)
    wave = torch.as_tensor(wave)
    if wave.dim() == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.dim() != 1:
        raise ValueError(f"{name}: expected one mono waveform [n_samples], got shape {tuple(wave.shape)}")
    if wave.numel() < WINDOW_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, WINDOW_SAMPLES - wave.numel()))
    n_frames = frames_for_samples(wave.numel())
    if n_frames <= chunk_frames:
        return fbank(wave, KALDI_SAMPLE_RATE, name=name)
    parts = []
    for a in range(0, n_frames, chunk_frames):
        b = min(n_frames, a + chunk_frames)
        seg = wave[a * HOP_SAMPLES:samples_for_frames(b)]
        parts.append(fbank(seg, KALDI_SAMPLE_RATE, name=name))
    return torch.cat(parts, dim=0)


def _combine_columns(tokens: torch.Tensor, grid: tuple[int, int], combine: str) -> torch.Tensor:
    """``[n, F'*T', D]`` frequency-major tokens -> ``[n, T', D]`` (mean) or ``[n, T', F'*D]`` (concat)."""
    n, _, d = tokens.shape
    f, t = grid
    x = tokens.reshape(n, f, t, d)
    if combine == "mean":
        return x.mean(dim=1)
    if combine == "concat":
        return x.permute(0, 2, 1, 3).reshape(n, t, f * d)
    raise ValueError(f"combine must be 'mean' or 'concat', got {combine!r}")


def _pad_frames(x: torch.Tensor, frames: int, value: float) -> torch.Tensor:
    """``x [B, T, mel]`` cut or padded (with ``value``) to ``frames`` frames."""
    if x.shape[1] >= frames:
        return x[:, :frames]
    return torch.nn.functional.pad(x, (0, 0, 0, frames - x.shape[1]), value=value)


def encode_columns(model, x: torch.Tensor, layers: list[int], window_frames: int | None = None,
                   hop_frames: int | None = None, combine: Combine = "mean", batch_size: int = 8,
                   pad_value: float = 0.0, pad_to_window: bool = True):
    """The engine of :func:`column_embeddings` for a batch ``x [B, T, mel]`` and a list of read-out ``layers``
    in one pass per window batch, each layer on its own time geometry (a DASS read-out in stage 1 has 4 times
    the columns of one in stage 3). Windows are whole columns of the coarsest layer read; the time steps of
    the others must divide its step. Returns three lists, one item per layer: columns ``[B, n, D']``, their
    centres ``[n]`` (ms, float64) and the class-token output averaged over windows ``[B, D]`` (weighted by the
    columns each window contributes; ``None`` without a class token)."""
    if x.dim() != 3:
        raise ValueError(f"expected features [B, T, mel], got {tuple(x.shape)}")
    geometry = [time_geometry(model, n) for n in layers]
    coarse = max(range(len(layers)), key=lambda j: geometry[j][1])
    pt, st = geometry[coarse]
    if any(st % s for _, s in geometry):
        raise ValueError(f"layers {layers} have time steps {[s for _, s in geometry]} frames; each must divide "
                         f"the largest")
    n_batch, n_frames, mel = x.shape
    n_frames = max(n_frames, pt)                           # shorter clips: padded to one column
    n_cols = model.token_grid(n_frames, mel, layers[coarse])[1]
    span = (n_cols - 1) * st + pt                          # frames of the clip's whole columns (DASS: padded up)
    window_frames = int(window_frames or model.config.target_frames)
    win_cols = max(1, model.token_grid(max(window_frames, pt), mel, layers[coarse])[1])
    win_frames = (win_cols - 1) * st + pt
    hop_cols = max(1, (int(hop_frames) // st) if hop_frames else win_cols // 2)
    starts = [s * st for s in window_starts(n_cols, win_cols, hop_cols)]     # in frames
    if len(starts) == 1:                                  # one window: the whole clip (padded, or as it is)
        win_frames = win_frames if pad_to_window else n_frames
    x = _pad_frames(x, win_frames if len(starts) == 1 else span, pad_value)
    plans = []                                            # per layer: columns, window starts, owned ranges
    for n, (_, s) in zip(layers, geometry):
        cols_l = model.token_grid(n_frames, mel, n)[1]
        starts_l = [f // s for f in starts]
        plans.append((cols_l, starts_l, _owned_ranges(starts_l, model.token_grid(win_frames, mel, n)[1], cols_l)))
    jobs = [(b, k) for b in range(n_batch) for k in range(len(starts))]
    out, cls_sum = [None] * len(layers), [None] * len(layers)
    step = max(1, int(batch_size))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(jobs), step):
                chunk = jobs[i:i + step]
                windows = torch.stack([x[b, starts[k]:starts[k] + win_frames] for b, k in chunk])
                for j, res in enumerate(model.forward_layers(windows, layers)):
                    cols = _combine_columns(res.tokens, res.grid, combine)
                    n_l, starts_l, owned = plans[j]
                    if out[j] is None:
                        out[j] = cols.new_empty(n_batch, n_l, cols.shape[-1])
                        if res.cls is not None:
                            cls_sum[j] = res.cls.new_zeros(n_batch, res.cls.shape[-1])
                    for r, (b, k) in enumerate(chunk):
                        a, e = owned[k]
                        out[j][b, a:e] = cols[r, a - starts_l[k]:e - starts_l[k]]
                        if cls_sum[j] is not None:
                            cls_sum[j][b] += res.cls[r] * ((e - a) / n_l)
    finally:
        model.train(was_training)
    times = [column_times_ms(plan[0], *geo) for plan, geo in zip(plans, geometry)]
    return out, times, cls_sum


def column_embeddings(model, fbank_: torch.Tensor, window_frames: int | None = None,
                      hop_frames: int | None = None, layer: int | list[int] | None = None, combine: Combine = "mean",
                      batch_size: int = 8, pad_value: float = 0.0, pad_to_window: bool = True,
                      return_cls: bool = False):
    """One embedding per time column of a spectrogram of any length, in bounded memory, for any encoder that
    describes itself (AuM, DASS: :func:`time_geometry`).

    ``fbank_``: normalised features ``[T, mel]`` or a batch ``[B, T, mel]`` (on the model's device). Clips
    shorter than one column are padded with ``pad_value`` to one column. The encoder runs on windows of
    ``window_frames`` frames (default: the model's ``target_frames``; rounded to whole columns) with a hop of
    ``hop_frames`` (default half a window), ``batch_size`` windows at a time; each output column comes from
    the window where it is most central. With ``pad_to_window`` (default), a clip shorter than a window is
    padded with ``pad_value`` to the full window, as in AuM training (the position embedding is then used as
    trained) and only its own columns are returned; without it, the clip is encoded at its own length (DASS:
    its last partial 32-frame cell padded to whole, as the encoder itself does). ``layer`` reads an
    intermediate layer (``forward_features(layer=...)``); a list of layers of the same time step reads them
    all in one pass and returns a list (one item per layer) in place of each embedding / class-token tensor
    below (layers of different steps: :func:`encode_columns`).

    Returns ``(embeddings, times_ms)``: ``embeddings`` ``[n_columns, D']`` (or ``[B, n_columns, D']``) with
    ``D' = D`` for ``combine="mean"`` and ``F' * D`` for ``"concat"``, in the model's dtype;
    ``times_ms`` ``[n_columns]`` float64 column centres (:func:`column_times_ms`) relative to the first frame.
    With ``return_cls`` a third item: the class-token output ``[B, D]`` averaged over windows, weighted by
    the columns each window contributes (``None`` for an encoder without a class token).
    """
    single = fbank_.dim() == 2
    x = fbank_[None] if single else fbank_
    if x.dim() != 3:
        raise ValueError(f"expected features [T, mel] or [B, T, mel], got {tuple(fbank_.shape)}")
    many = isinstance(layer, (list, tuple))
    layers = read_out_layers(model, layer)
    steps = {time_geometry(model, n) for n in layers}
    if len(steps) > 1:
        raise ValueError(f"layers {layers} have different time geometries {sorted(steps)} (frames per column, "
                         f"step); their columns have different times: ask for them one at a time")
    embs, times, cls = encode_columns(model, x, layers, window_frames, hop_frames, combine, batch_size, pad_value,
                                      pad_to_window)
    emb = [o[0] if single else o for o in embs]
    cls = [None if c is None else (c[0] if single else c) for c in cls]
    if not many:
        emb, cls = emb[0], cls[0]
    return (emb, times[0], cls) if return_cls else (emb, times[0])


def shifted_column_embeddings(model, fbank_: torch.Tensor, shifts: int = 4, **kwargs):
    """Column embeddings on a hop of ``step / shifts`` frames (e.g. 4 frames = 40 ms for 16-frame AuM patches,
    8 frames = 80 ms for DASS's 32-frame cells).

    Runs :func:`column_embeddings` (``kwargs`` passed on; one ``layer``) on ``shifts`` copies of the
    spectrogram that start ``k * step / shifts`` frames later (``k = 0 .. shifts-1``) and interleaves the
    columns, so every output vector is a genuine column of the encoder at its trained size (cost: ``shifts``
    passes). The step must be divisible by ``shifts``. Returns ``(embeddings [.., n, D'], times_ms [n])`` with
    ``n = (T - column) // (step / shifts) + 1`` regularly spaced whole columns.
    """
    if isinstance(kwargs.get("layer"), (list, tuple)):
        raise ValueError("shifted_column_embeddings reads one layer; pass an int (or None) as layer")
    pt, st = time_geometry(model, kwargs.get("layer"))
    if shifts < 1 or st % shifts:
        raise ValueError(f"shifts must divide the time stride {st}, got {shifts}")
    if kwargs.get("return_cls"):
        raise ValueError("return_cls is not supported with shifts; use column_embeddings")
    step = st // shifts
    n_frames = max(fbank_.shape[-2], pt)
    n_total = (n_frames - pt) // step + 1
    single = fbank_.dim() == 2
    x = fbank_[None] if single else fbank_
    x = _pad_frames(x, n_frames, kwargs.get("pad_value", 0.0))
    out = None
    for k in range(shifts):
        n_k = len(range(k, n_total, shifts))
        if n_k == 0:
            continue
        emb, _ = column_embeddings(model, x[:, k * step:], **kwargs)
        if out is None:
            out = emb.new_empty(x.shape[0], n_total, emb.shape[-1])
        out[:, k::shifts] = emb[:, :n_k]
    times = column_times_ms(n_total, pt, step)
    return (out[0] if single else out), times


def interpolate_columns(emb: torch.Tensor, times_ms: torch.Tensor, new_times_ms: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of column embeddings ``[.., n, D]`` at ``times_ms`` (increasing) to
    ``new_times_ms``; times outside the range take the nearest end column. Returns ``[.., m, D]``."""
    t = times_ms.to(torch.float64).cpu()
    q = new_times_ms.to(torch.float64).cpu()
    if t.numel() == 1:
        idx = torch.zeros(q.numel(), dtype=torch.long)
        return emb[..., idx, :]
    q = q.clamp(t[0], t[-1])
    hi = torch.searchsorted(t, q, right=False).clamp(1, t.numel() - 1)
    lo = hi - 1
    w = ((q - t[lo]) / (t[hi] - t[lo])).to(emb.dtype).to(emb.device)[:, None]
    lo, hi = lo.to(emb.device), hi.to(emb.device)
    return emb[..., lo, :] * (1 - w) + emb[..., hi, :] * w
