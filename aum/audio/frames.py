"""Frame arithmetic of the two feature front ends: how many feature frames a clip gives, and back.

Kaldi fbank (AST / AuM): 16 kHz, a 25 ms window (:data:`WINDOW_SAMPLES` = 400 samples) every 10 ms
(:data:`HOP_SAMPLES` = 160), ``snip_edges``: only whole windows count, so ``n`` samples give
``1 + (n - 400) // 160`` frames and fewer than 400 samples give none.

EPIC-Sounds log-mel: 24 kHz, a centred STFT with a 10 ms window (:data:`EPIC_WINDOW_SAMPLES` = 240) every 5 ms
(:data:`EPIC_HOP_SAMPLES` = 120), padded at both ends, so ``n`` samples give ``1 + n // 120`` frames.

The front ends themselves are in :mod:`aum.audio.features`; this module is the one place their sizes are written.
"""
from __future__ import annotations

import math

__all__ = ["KALDI_SAMPLE_RATE", "EPIC_SAMPLE_RATE", "FRAME_LENGTH_MS", "FRAME_SHIFT_MS", "WINDOW_SAMPLES",
           "HOP_SAMPLES", "EPIC_WINDOW_SAMPLES", "EPIC_HOP_SAMPLES", "frames_for_samples", "samples_for_frames"]

KALDI_SAMPLE_RATE = 16000
EPIC_SAMPLE_RATE = 24000
FRAME_LENGTH_MS = 25.0           # Kaldi window
FRAME_SHIFT_MS = 10.0            # Kaldi hop
WINDOW_SAMPLES = 400             # 25 ms at 16 kHz
HOP_SAMPLES = 160                # 10 ms at 16 kHz
EPIC_WINDOW_SAMPLES = 240        # 10 ms at 24 kHz
EPIC_HOP_SAMPLES = 120           # 5 ms at 24 kHz
_RATES = {"kaldi": KALDI_SAMPLE_RATE, "epic": EPIC_SAMPLE_RATE}


def _rate(kind: str) -> int:
    if kind not in _RATES:
        raise ValueError(f"unknown front end {kind!r}; expected one of {list(_RATES)}")
    return _RATES[kind]


def frames_for_samples(n: int, kind: str = "kaldi") -> int:
    """Feature frames of ``n`` samples at the front end's own rate (16 kHz ``"kaldi"``, 24 kHz ``"epic"``):
    ``1 + (n - 400) // 160`` for Kaldi (0 below one 400-sample window), ``1 + n // 120`` for EPIC."""
    _rate(kind)
    n = int(n)
    if n < 0:
        raise ValueError(f"a clip cannot have {n} samples")
    if kind == "epic":
        return 1 + n // EPIC_HOP_SAMPLES
    return 0 if n < WINDOW_SAMPLES else 1 + (n - WINDOW_SAMPLES) // HOP_SAMPLES


def samples_for_frames(frames: int, kind: str = "kaldi", sample_rate: int | None = None) -> int:
    """The fewest samples whose features have ``frames`` frames: ``400 + (frames - 1) * 160`` at 16 kHz for
    Kaldi, ``(frames - 1) * 120`` at 24 kHz for EPIC. With ``sample_rate`` (the rate of the audio before the
    front end resamples it), that many samples at ``sample_rate``, rounded up."""
    native = _rate(kind)
    if int(frames) < 1:
        raise ValueError(f"frames must be a positive integer, got {frames!r}")
    n = (WINDOW_SAMPLES + (int(frames) - 1) * HOP_SAMPLES if kind == "kaldi"
         else (int(frames) - 1) * EPIC_HOP_SAMPLES)
    return n if sample_rate is None or int(sample_rate) == native else math.ceil(n * int(sample_rate) / native)
