"""Waveforms in, embeddings out: audio checks, features in chunks, timestamped columns and scene vectors."""
from __future__ import annotations

import math
from typing import Literal

import torch

from aum.audio.features import get_preset, normalize
from aum.audio.frames import FRAME_LENGTH_MS, FRAME_SHIFT_MS, KALDI_SAMPLE_RATE, samples_for_frames
from aum.checkpoint import feature_preset_of
from aum.embed.pooling import check_pooling, scene_from_features
from aum.embed.windows import (Combine, column_embeddings, fbank_frames, interpolate_columns, pad_value_for,
                               shifted_column_embeddings, time_geometry)


def check_audio_batch(wave, name: str = "audio", allow_empty: bool = False) -> tuple[torch.Tensor, bool]:
    """Check waveforms ``[n_samples]`` or ``[n_sounds, n_samples]`` and return ``(batch [n_sounds, n_samples],
    was_1d)``, the samples unchanged (no scaling, no cast, no padding).

    Raises ``ValueError`` naming ``name`` when the audio is not 1-D or 2-D; has an integer, boolean or complex
    dtype (int16 PCM must be scaled to [-1, 1] first: it is never rescaled here); has zero samples per sound
    (unless ``allow_empty``: the embedding functions of this module accept them as all-padding clips, the HEAR
    API does not); has shape ``(n, 1)`` with ``n > 1`` (one sample per sound: almost always a ``[n_samples, 1]``
    column that should be transposed); or holds NaN/Inf, counted over the sound's own samples. An empty batch
    ``(0, n_samples)`` is allowed.
    """
    w = torch.as_tensor(wave)
    single = w.dim() == 1
    if single:
        w = w[None]
    if w.dim() != 2:
        raise ValueError(f"{name}: expected audio [n_samples] or [n_sounds, n_samples], got shape {tuple(w.shape)}")
    if w.dtype == torch.bool or not w.is_floating_point():
        kind = "complex" if w.is_complex() else "integer" if w.dtype != torch.bool else "boolean"
        raise ValueError(f"{name}: audio has {kind} dtype {w.dtype}; expected real float samples in [-1, 1] "
                         f"(int16 PCM: divide by 32768 first; it is not rescaled here)")
    n_sounds, n_samples = w.shape
    if n_sounds == 0:
        return w, single
    if n_samples == 0 and not allow_empty:
        raise ValueError(f"{name}: zero-length audio (shape {tuple(w.shape)}): every sound needs samples")
    if n_samples == 1 and n_sounds > 1:
        raise ValueError(f"{name}: audio of shape {tuple(w.shape)} is {n_sounds} sounds of 1 sample each; a "
                         f"[n_samples, 1] column? pass [n_sounds, n_samples] (e.g. audio.T)")
    bad = (~torch.isfinite(w)).sum(dim=1)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        others = int((bad > 0).sum()) - 1
        raise ValueError(f"{name}: sound {first} has {int(bad[first])} non-finite (NaN/Inf) of its {n_samples} "
                         f"samples" + (f" ({others} more sound(s) have some)" if others else ""))
    return w, single


def _features(waves: torch.Tensor, preset, pad_left: int, pad_right: int, chunk_frames: int) -> torch.Tensor:
    cfg = get_preset(preset)
    if cfg.kind != "kaldi":
        raise ValueError(f"preset {cfg.name!r} uses the {cfg.kind} front end; column embeddings support the "
                         f"16 kHz Kaldi presets only")
    feats = []
    for i in range(waves.shape[0]):
        w = torch.nn.functional.pad(waves[i].to(torch.float32), (pad_left, pad_right))
        f = fbank_frames(w, KALDI_SAMPLE_RATE, chunk_frames=chunk_frames, name=f"clip {i}")
        feats.append(normalize(f, cfg.mean, cfg.std) if cfg.mean is not None else f)
    return torch.stack(feats)


def _preset_for(model, preset):
    """``preset`` when given (it wins, silently), else the model's own (:func:`aum.checkpoint.feature_preset_of`:
    what :func:`aum.checkpoint.load_checkpoint` found in the file; ``audioset`` for a model built in memory)."""
    return get_preset(preset) if preset is not None else feature_preset_of(model)


def _at_16k(wave, sample_rate: int) -> tuple[torch.Tensor, bool]:
    waves, single = check_audio_batch(wave, allow_empty=True)
    if sample_rate != KALDI_SAMPLE_RATE:
        from aum.audio.io import resample
        waves = resample(waves.to(torch.float32), sample_rate, KALDI_SAMPLE_RATE)
    return waves, single


def embed_waveform(model, wave, sample_rate: int = KALDI_SAMPLE_RATE, preset=None, hop_ms: float = 40.0,
                   method: Literal["shift", "interp", "native"] = "shift", window_frames: int | None = None,
                   hop_frames: int | None = None, layer: int | None = None, combine: Combine = "mean",
                   batch_size: int = 8, pad_to_window: bool = True, chunk_frames: int = 6000):
    """Timestamped embeddings of waveforms of any length: ``(embeddings, timestamps_ms)``.

    ``wave``: ``[n_samples]`` or ``[n_sounds, n_samples]`` (same length) at ``sample_rate`` (resampled to
    16 kHz when different), on the model's device. Timestamps are ``0, hop, 2 hop, ...`` ms up to the end of
    the audio (``m * hop <= duration``; at least one, ``0``), the same for every sound. The encoder's column
    step at ``layer`` (:func:`aum.embed.time_geometry`: 160 ms for 16-frame AuM patches, 320 ms for DASS's last
    stage) is the native hop. ``method``:

    * ``"shift"``: each timestamp is the centre of a genuine column (:func:`shifted_column_embeddings`,
      ``native / hop_ms`` encoder passes; ``hop_ms`` must be 10 ms times a divisor of the step in frames:
      10, 20, 40, 80 or 160 for 16-frame patches);
    * ``"interp"``: one pass; the native columns are linearly interpolated to the ``hop_ms`` grid (any hop);
    * ``"native"``: one pass on the native hop; ``hop_ms`` is ignored.

    The waveform is padded with zeros at the start so that a column centre falls on 0 ms (87.5 ms for
    16-frame patches) and at the end so that the last timestamp has a full column. The other arguments are
    those of :func:`column_embeddings`; features use the normalisation ``preset`` (default: the model's own
    ``feature_preset``, set by :func:`aum.checkpoint.load_checkpoint`, else ``audioset``). Returns
    ``embeddings`` float32 ``[n_sounds, n, D']`` (``[n, D']`` for 1-D input) and ``timestamps_ms`` float64
    ``[n]``.
    """
    waves, single = _at_16k(wave, sample_rate)
    pt, st = time_geometry(model, layer)
    native_ms = st * FRAME_SHIFT_MS
    if method == "native":
        hop_ms = native_ms
    elif method == "shift":
        shifts = native_ms / float(hop_ms)
        if abs(shifts - round(shifts)) > 1e-9 or round(shifts) < 1 or st % round(shifts):
            raise ValueError(f"method='shift' needs hop_ms = {native_ms:g} / k with k dividing {st}; got {hop_ms}")
        shifts = int(round(shifts))
    elif method != "interp":
        raise ValueError(f"method must be 'shift', 'interp' or 'native', got {method!r}")
    if not hop_ms > 0:
        raise ValueError(f"hop_ms must be positive, got {hop_ms}")
    n = waves.shape[-1]
    duration_ms = 1000.0 * n / KALDI_SAMPLE_RATE
    n_out = int(math.floor(duration_ms / hop_ms + 1e-9)) + 1
    times = torch.arange(n_out, dtype=torch.float64) * hop_ms
    centre_ms = ((pt - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 2.0
    pad_left = int(round(centre_ms * KALDI_SAMPLE_RATE / 1000.0))
    last_ms = float(times[-1])
    if method == "interp":
        last_ms = math.ceil(last_ms / native_ms - 1e-9) * native_ms
    frames_needed = int(round(last_ms / FRAME_SHIFT_MS)) + pt
    samples_needed = samples_for_frames(frames_needed)
    pad_right = max(0, samples_needed - pad_left - n)
    preset = _preset_for(model, preset)
    feats = _features(waves, preset, pad_left, pad_right, chunk_frames)
    kw = dict(window_frames=window_frames, hop_frames=hop_frames, layer=layer, combine=combine,
              batch_size=batch_size, pad_value=pad_value_for(preset), pad_to_window=pad_to_window)
    if method == "shift":
        emb, t = shifted_column_embeddings(model, feats, shifts=shifts, **kw)
    else:
        emb, t = column_embeddings(model, feats, **kw)
    t = t - centre_ms                                   # column centres in the time of the unpadded input
    if method == "interp":
        emb = interpolate_columns(emb, t, times)
    else:
        if emb.shape[1] < n_out:
            raise RuntimeError(f"internal: {emb.shape[1]} columns for {n_out} timestamps")
        emb, t = emb[:, :n_out], t[:n_out]
        if not torch.allclose(t, times, atol=1e-6):
            raise RuntimeError("internal: column centres do not match the timestamp grid")
    emb = emb.to(torch.float32)
    return (emb[0] if single else emb), times


def scene_embedding(model, wave, sample_rate: int = KALDI_SAMPLE_RATE, preset=None,
                    pooling: str = "mean", window_frames: int | None = None,
                    hop_frames: int | None = None, layer: int | list[int] | None = None, combine: Combine = "mean",
                    batch_size: int = 8, pad_to_window: bool = True, chunk_frames: int = 6000):
    """One vector per clip (float32 ``[n_sounds, D'']``, or ``[D'']`` for 1-D input), for clips of any length;
    a list of ``layer`` values gives a list of such tensors, one per layer, from one pass.

    The clip's features (no alignment padding; padded to a window as in training when shorter) go through
    :func:`aum.embed.scene_from_features`; ``pooling`` names one or more of ``"mean"`` (average of the clip's
    columns, ``D'`` values, see ``combine``), ``"max"`` (their element-wise maximum, ``D'`` values) and
    ``"cls"`` (the class-token output, window-weighted mean for long clips; ``D`` values; needs a class token),
    joined by ``+`` and concatenated in that order: ``"mean+max"`` is the pooling of the HEAR naive baselines.
    ``preset`` as in :func:`embed_waveform` (default: the model's own).
    """
    check_pooling(model, pooling)
    waves, single = _at_16k(wave, sample_rate)
    preset = _preset_for(model, preset)
    feats = _features(waves, preset, 0, 0, chunk_frames)
    outs = scene_from_features(model, feats, pooling, layer, window_frames, hop_frames, combine, batch_size,
                               pad_value_for(preset), pad_to_window)
    if single:
        return [o[0] for o in outs] if isinstance(layer, (list, tuple)) else outs[0]
    return outs
