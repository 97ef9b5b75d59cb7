"""Audio I/O and waveform checks.

Files are read with ``soundfile`` (never ``torchaudio.load``), downmixed by averaging the channels and
resampled with ``torchaudio.functional.resample``. Every error names the file or clip it is about.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

__all__ = ["AudioDecodeError", "load_audio", "resample", "validate_waveform"]


class AudioDecodeError(ValueError):
    """A file that exists but cannot be decoded as audio; the message names the file and the reason."""


def _check_rate(sr, what: str) -> int:
    try:
        ok = not isinstance(sr, bool) and int(sr) == sr and sr > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} must be a positive integer sample rate, got {sr!r}")
    return int(sr)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample ``wave`` (any shape, time on the last axis) from ``orig_sr`` to ``new_sr`` Hz.

    Uses ``torchaudio.functional.resample`` (windowed-sinc, band-limited). Returns ``wave`` unchanged when
    the two rates are equal. Integer rates only, e.g. ``resample(x, 44100, 16000)``.
    """
    orig_sr = _check_rate(orig_sr, "orig_sr")
    new_sr = _check_rate(new_sr, "new_sr")
    wave = torch.as_tensor(wave)
    if orig_sr == new_sr:
        return wave
    if not wave.is_floating_point():
        raise ValueError(f"resample needs a floating-point waveform, got dtype {wave.dtype}")
    return AF.resample(wave, orig_sr, new_sr)


def validate_waveform(wave, name: str = "clip") -> torch.Tensor:
    """Check one mono waveform and return it as a 1-D floating tensor ``[n_samples]``.

    Accepts a tensor or numpy array of shape ``[n]`` or ``[1, n]`` with floating samples (nominally in
    [-1, 1]); float64 is kept, other floats become float32. Raises ``ValueError`` naming ``name`` when the
    waveform is empty, is integer-typed, has a multichannel ``[C, n]`` (C > 1) or >2-D shape, or contains
    NaN/Inf values.
    """
    if not isinstance(wave, torch.Tensor):
        try:
            wave = torch.as_tensor(np.asarray(wave))
        except Exception as e:  # noqa: BLE001 - re-raised with the clip's name
            raise ValueError(f"{name}: cannot convert waveform to a tensor ({e})") from e
    if wave.dim() == 0:
        raise ValueError(f"{name}: waveform is a scalar; expected shape [n_samples] or [1, n_samples]")
    if wave.dim() > 2:
        raise ValueError(
            f"{name}: waveform has {wave.dim()} dims {tuple(wave.shape)}; expected one mono clip of shape "
            f"[n_samples] or [1, n_samples] (pass batches one clip at a time)")
    if wave.dim() == 2:
        if wave.shape[0] != 1:
            hint = ("downmix first, e.g. wave.mean(dim=0)" if wave.shape[0] <= wave.shape[1] else
                    "this looks like a (samples, channels) array: downmix with wave.mean(dim=1)")
            raise ValueError(
                f"{name}: waveform has shape {tuple(wave.shape)} (multichannel); expected mono [n_samples] "
                f"or [1, n_samples]: {hint}")
        wave = wave[0]
    if wave.numel() == 0:
        raise ValueError(f"{name}: waveform is empty (0 samples)")
    if wave.dtype == torch.bool or not (wave.is_floating_point() or wave.is_complex()):
        raise ValueError(
            f"{name}: waveform has integer dtype {wave.dtype}; convert to float in [-1, 1] first "
            f"(e.g. int16 samples / 32768)")
    if wave.is_complex():
        raise ValueError(f"{name}: waveform is complex ({wave.dtype}); expected real samples")
    if wave.dtype != torch.float64:
        wave = wave.to(torch.float32)
    finite = torch.isfinite(wave)
    if not bool(finite.all()):
        if bool(torch.isnan(wave).all()):
            raise ValueError(f"{name}: waveform is all NaN")
        bad = int((~finite).sum())
        raise ValueError(f"{name}: waveform has {bad} non-finite (NaN/Inf) of {wave.numel()} samples")
    return wave


def load_audio(path: str | os.PathLike, sample_rate: int | None = 16000, mono: bool = True) -> torch.Tensor:
    """Read an audio file with soundfile and return float32 samples at ``sample_rate`` Hz.

    ``mono=True`` (default) averages the channels and returns ``[n_samples]``; ``mono=False`` returns
    ``[channels, n_samples]``. The file is resampled when its rate differs from ``sample_rate``
    (``sample_rate=None`` keeps the file's own rate).

    Raises ``FileNotFoundError`` for a missing file, ``AudioDecodeError`` (a ``ValueError``) when soundfile
    cannot decode it (the message names the file and soundfile's reason), and ``ValueError`` naming the
    file when it holds no samples or non-finite values.
    """
    path = Path(path)
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate, "sample_rate")
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"expected an audio file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"audio file {path} is empty (0 bytes)")
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioDecodeError(f"cannot decode audio file {path}: {e}") from e
    if data.size == 0:
        raise ValueError(f"audio file {path} is empty (0 samples)")
    if not np.isfinite(data).all():
        raise ValueError(f"audio file {path} contains non-finite (NaN/Inf) samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # [channels, n]
    if mono:
        wave = wave.mean(dim=0)
    if sample_rate is not None and file_sr != sample_rate:
        wave = resample(wave, file_sr, sample_rate)
    return wave.contiguous()
