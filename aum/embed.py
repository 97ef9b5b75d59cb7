"""Embeddings of audio of any length: one vector per time column of patches, in bounded memory.

The encoder sees a ``[frames, 128]`` spectrogram as a grid of patches; a *column* is the set of frequency
patches that share one time position (16 frames = 160 ms for 16x16 patches on the 10 ms Kaldi hop). This
module turns a clip of any length - 50 ms or 10 minutes - into column embeddings with timestamps:

* :func:`column_embeddings` runs the encoder over **sliding windows** (default: the model's training length,
  1024 frames for AudioSet models, with a hop of half a window) in batches of ``batch_size`` windows, so
  memory depends on the window, not on the clip. Windows overlap; each output column is taken from the
  window in which it is most central (nearest window centre), so every column has at least a quarter of a
  window of context on both sides except at the clip edges. A clip that fits in one window is one encoder
  pass over the whole clip (identical to ``model.forward_features``). The frequency patches of a column are
  combined by ``combine="mean"`` (``D`` values) or ``"concat"`` (``F' * D`` values, frequency-major).
* :func:`fbank_frames` computes the Kaldi fbank of long audio in chunks (exact: Kaldi frames are
  independent), :func:`shifted_column_embeddings` gives a finer hop by running the encoder on copies of
  the spectrogram shifted by a fraction of a patch in time and interleaving the columns, and
  :func:`interpolate_columns` resamples column embeddings to any time grid (linear).
* :func:`embed_waveform` puts it together for waveforms (what :mod:`hear_api` uses): timestamps in
  milliseconds at ``0, hop, 2 hop, ...`` up to the end of the audio, with ``method="shift"`` (default,
  40 ms hop: four shifted passes, 4x the encoder cost), ``"interp"`` (one pass, linear interpolation of
  the 160 ms columns) or ``"native"`` (one pass, 160 ms); :func:`scene_embedding` pools a clip to one
  vector.

Time convention: Kaldi frame ``i`` covers ``[10 i, 10 i + 25)`` ms of the input; a column covers the audio of
its frames, and its time is the centre of that span (``87.5 + 160 j`` ms for 16x16 patches). To put column
centres at ``0, hop, 2 hop, ...`` ms, :func:`embed_waveform` pads the waveform with ``87.5`` ms of zeros at the
start (and enough at the end for the last timestamp).
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from aum.checkpoint import feature_preset_of
from aum.audio.features import KALDI_SAMPLE_RATE, fbank, get_preset, normalize

__all__ = ["FRAME_SHIFT_MS", "FRAME_LENGTH_MS", "column_times_ms", "fbank_frames", "column_embeddings",
           "shifted_column_embeddings", "interpolate_columns", "embed_waveform", "scene_embedding",
           "window_starts", "pad_value_for", "check_audio_batch"]

FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0
_HOP_SAMPLES = 160           # 10 ms at 16 kHz
_WIN_SAMPLES = 400           # 25 ms at 16 kHz

Combine = Literal["mean", "concat"]


def _time_patch(model) -> tuple[int, int]:
    """``(patch frames, stride frames)`` of the model along time."""
    c = model.config
    return int(c.patch_size[1]), int(c.patch_stride[1])


def _freq_rows(model, mel: int | None = None) -> int:
    c = model.config
    mel = c.num_mel_bins if mel is None else mel
    return (mel - c.patch_size[0]) // c.patch_stride[0] + 1


def column_times_ms(n_columns: int, patch_frames: int = 16, stride_frames: int = 16, first_frame: float = 0.0,
                    start_ms: float = 0.0) -> torch.Tensor:
    """Centres (ms, float64) of ``n_columns`` patch columns whose first column starts at frame ``first_frame``.

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
    if wave.numel() < _WIN_SAMPLES:
        wave = torch.nn.functional.pad(wave, (0, _WIN_SAMPLES - wave.numel()))
    n_frames = 1 + (wave.numel() - _WIN_SAMPLES) // _HOP_SAMPLES
    if n_frames <= chunk_frames:
        return fbank(wave, KALDI_SAMPLE_RATE, name=name)
    parts = []
    for a in range(0, n_frames, chunk_frames):
        b = min(n_frames, a + chunk_frames)
        seg = wave[a * _HOP_SAMPLES:(b - 1) * _HOP_SAMPLES + _WIN_SAMPLES]
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


def column_embeddings(model, fbank_: torch.Tensor, window_frames: int | None = None,
                      hop_frames: int | None = None, layer: int | list[int] | None = None, combine: Combine = "mean",
                      batch_size: int = 8, pad_value: float = 0.0, pad_to_window: bool = True,
                      return_cls: bool = False):
    """One embedding per patch column of a spectrogram of any length, in bounded memory.

    ``fbank_``: normalised features ``[T, mel]`` or a batch ``[B, T, mel]`` (on the model's device). Clips
    shorter than one patch are padded with ``pad_value`` to one patch. The encoder runs on windows of
    ``window_frames`` frames (default: the model's ``target_frames``) with a hop of ``hop_frames`` (default
    half a window), ``batch_size`` windows at a time; each output column comes from the window where it is
    most central. With ``pad_to_window`` (default), a clip shorter than a window is padded with ``pad_value``
    to the full window, as in AuM training (the position embedding is then used as trained) and only its own
    columns are returned; without it, the clip is encoded at its own length. ``layer`` reads an intermediate
    layer (``forward_features(layer=...)``); a list of layers reads them all in one pass and returns a list
    (one item per layer) in place of each embedding / class-token tensor below.

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
    pt, st = _time_patch(model)
    n_batch, n_frames, mel = x.shape
    if n_frames < pt:
        x = torch.nn.functional.pad(x, (0, 0, 0, pt - n_frames), value=pad_value)
        n_frames = pt
    n_cols = (n_frames - pt) // st + 1
    window_frames = int(window_frames or model.config.target_frames)
    win_cols = max(1, (max(window_frames, pt) - pt) // st + 1)
    win_frames = (win_cols - 1) * st + pt
    hop_cols = max(1, (int(hop_frames) // st) if hop_frames else win_cols // 2)
    starts = window_starts(n_cols, win_cols, hop_cols)
    owned = _owned_ranges(starts, win_cols, n_cols)
    if len(starts) == 1:                                  # one window: the whole clip (padded, or as it is)
        span = win_frames if pad_to_window else (n_cols - 1) * st + pt
        x = x[:, :span] if x.shape[1] >= span else torch.nn.functional.pad(
            x, (0, 0, 0, span - x.shape[1]), value=pad_value)
        win_frames = span
    jobs = [(b, k) for b in range(n_batch) for k in range(len(starts))]
    many = isinstance(layer, (list, tuple))
    depth = model.config.depth
    layers = [depth if n is None else n for n in (layer if many else [layer])]
    out, cls_sum = [None] * len(layers), [None] * len(layers)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(jobs), max(1, int(batch_size))):
                chunk = jobs[i:i + max(1, int(batch_size))]
                windows = torch.stack([x[b, starts[k] * st:starts[k] * st + win_frames] for b, k in chunk])
                for j, res in enumerate(model.forward_layers(windows, layers)):
                    cols = _combine_columns(res.tokens, res.grid, combine)
                    if out[j] is None:
                        out[j] = cols.new_empty(n_batch, n_cols, cols.shape[-1])
                        if return_cls and res.cls is not None:
                            cls_sum[j] = res.cls.new_zeros(n_batch, res.cls.shape[-1])
                    for r, (b, k) in enumerate(chunk):
                        a, e = owned[k]
                        out[j][b, a:e] = cols[r, a - starts[k]:e - starts[k]]
                        if cls_sum[j] is not None:
                            cls_sum[j][b] += res.cls[r] * ((e - a) / n_cols)
    finally:
        model.train(was_training)
    times = column_times_ms(n_cols, pt, st)
    emb = [o[0] if single else o for o in out]
    cls = [None if c is None else (c[0] if single else c) for c in cls_sum]
    if not many:
        emb, cls = emb[0], cls[0]
    return (emb, times, cls) if return_cls else (emb, times)


def shifted_column_embeddings(model, fbank_: torch.Tensor, shifts: int = 4, **kwargs):
    """Column embeddings on a hop of ``stride / shifts`` frames (e.g. 4 frames = 40 ms for 16-frame patches).

    Runs :func:`column_embeddings` (``kwargs`` passed on) on ``shifts`` copies of the spectrogram that start
    ``k * stride / shifts`` frames later (``k = 0 .. shifts-1``) and interleaves the columns, so every output
    vector is a genuine patch column of the encoder at its trained patch size (cost: ``shifts`` passes).
    ``stride`` must be divisible by ``shifts``. Returns ``(embeddings [.., n, D'], times_ms [n])`` with
    ``n = (T - patch) // (stride / shifts) + 1`` regularly spaced columns.
    """
    pt, st = _time_patch(model)
    if shifts < 1 or st % shifts:
        raise ValueError(f"shifts must divide the time stride {st}, got {shifts}")
    if kwargs.get("return_cls"):
        raise ValueError("return_cls is not supported with shifts; use column_embeddings")
    step = st // shifts
    n_frames = max(fbank_.shape[-2], pt)
    n_total = (n_frames - pt) // step + 1
    single = fbank_.dim() == 2
    x = fbank_[None] if single else fbank_
    if x.shape[1] < pt:
        x = torch.nn.functional.pad(x, (0, 0, 0, pt - x.shape[1]), value=kwargs.get("pad_value", 0.0))
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


def embed_waveform(model, wave, sample_rate: int = KALDI_SAMPLE_RATE, preset=None, hop_ms: float = 40.0,
                   method: Literal["shift", "interp", "native"] = "shift", window_frames: int | None = None,
                   hop_frames: int | None = None, layer: int | None = None, combine: Combine = "mean",
                   batch_size: int = 8, pad_to_window: bool = True, chunk_frames: int = 6000):
    """Timestamped embeddings of waveforms of any length: ``(embeddings, timestamps_ms)``.

    ``wave``: ``[n_samples]`` or ``[n_sounds, n_samples]`` (same length) at ``sample_rate`` (resampled to
    16 kHz when different), on the model's device. Timestamps are ``0, hop, 2 hop, ...`` ms up to the end of
    the audio (``m * hop <= duration``; at least one, ``0``), the same for every sound. ``method``:

    * ``"shift"``: each timestamp is the centre of a genuine patch column (:func:`shifted_column_embeddings`,
      ``160 / hop_ms`` encoder passes; ``hop_ms`` must be 10 ms times a divisor of the patch stride:
      10, 20, 40, 80 or 160 for 16-frame patches);
    * ``"interp"``: one pass; the 160 ms columns are linearly interpolated to the ``hop_ms`` grid (any hop);
    * ``"native"``: one pass on the patch stride (160 ms); ``hop_ms`` is ignored.

    The waveform is padded with zeros at the start so that a column centre falls on 0 ms (87.5 ms for
    16-frame patches) and at the end so that the last timestamp has a full column. The other arguments are
    those of :func:`column_embeddings`; features use the normalisation ``preset`` (default: the model's own
    ``feature_preset``, set by :func:`aum.checkpoint.load_checkpoint`, else ``audioset``). Returns
    ``embeddings`` float32 ``[n_sounds, n, D']`` (``[n, D']`` for 1-D input) and ``timestamps_ms`` float64
    ``[n]``.
    """
    waves, single = check_audio_batch(wave, allow_empty=True)
    if sample_rate != KALDI_SAMPLE_RATE:
        from aum.audio.io import resample
        waves = resample(waves.to(torch.float32), sample_rate, KALDI_SAMPLE_RATE)
    pt, st = _time_patch(model)
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
    samples_needed = (frames_needed - 1) * _HOP_SAMPLES + _WIN_SAMPLES
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


POOLINGS = ("mean", "max", "cls")


def parse_pooling(pooling: str) -> list[str]:
    """``"mean+max"`` -> ``["mean", "max"]``; raises ``ValueError`` naming the valid names for anything else
    (an unknown or repeated name, an empty string)."""
    names = [p.strip() for p in str(pooling).split("+")]
    if not names or any(n not in POOLINGS for n in names) or len(set(names)) != len(names):
        raise ValueError(f"pooling must be one or more of {POOLINGS} joined by '+' (e.g. 'mean+max'), "
                         f"got {pooling!r}")
    return names


def scene_embedding(model, wave, sample_rate: int = KALDI_SAMPLE_RATE, preset=None,
                    pooling: str = "mean", window_frames: int | None = None,
                    hop_frames: int | None = None, layer: int | list[int] | None = None, combine: Combine = "mean",
                    batch_size: int = 8, pad_to_window: bool = True, chunk_frames: int = 6000):
    """One vector per clip (float32 ``[n_sounds, D'']``, or ``[D'']`` for 1-D input), for clips of any length;
    a list of ``layer`` values gives a list of such tensors, one per layer, from one pass.

    The clip's features (no alignment padding; padded to a window as in training when shorter) go through
    :func:`column_embeddings`; ``pooling`` names one or more of ``"mean"`` (average of the clip's columns,
    ``D'`` values, see ``combine``), ``"max"`` (their element-wise maximum, ``D'`` values) and ``"cls"`` (the
    class-token output, window-weighted mean for long clips; ``D`` values; needs a class token), joined by
    ``+`` and concatenated in that order: ``"mean+max"`` is the pooling of the HEAR naive baselines.
    ``preset`` as in :func:`embed_waveform` (default: the model's own).
    """
    parts_wanted = parse_pooling(pooling)
    waves, single = check_audio_batch(wave, allow_empty=True)
    if sample_rate != KALDI_SAMPLE_RATE:
        from aum.audio.io import resample
        waves = resample(waves.to(torch.float32), sample_rate, KALDI_SAMPLE_RATE)
    preset = _preset_for(model, preset)
    feats = _features(waves, preset, 0, 0, chunk_frames)
    emb, _, cls = column_embeddings(model, feats, window_frames=window_frames, hop_frames=hop_frames, layer=layer,
                                    combine=combine, batch_size=batch_size, pad_value=pad_value_for(preset),
                                    pad_to_window=pad_to_window, return_cls=True)
    many = isinstance(layer, (list, tuple))
    if "cls" in parts_wanted and (cls[0] if many else cls) is None:
        raise ValueError(f"pooling={pooling!r} needs an encoder with a class token (cls_position != 'none')")
    outs = [_pool(e, c, parts_wanted) for e, c in (zip(emb, cls) if many else [(emb, cls)])]
    outs = [o[0] if single else o for o in outs]
    return outs if many else outs[0]


def _pool(emb: torch.Tensor, cls: torch.Tensor | None, names: list[str]) -> torch.Tensor:
    parts = {"cls": lambda: cls, "mean": lambda: emb.mean(dim=1), "max": lambda: emb.amax(dim=1)}
    return torch.cat([parts[name]() for name in names], dim=-1).to(torch.float32)
