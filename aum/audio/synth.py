"""Deterministic procedural sounds at 16 kHz: the built-in default data of the project.

Seven sound classes (:data:`SOUND_CLASSES`) are drawn from a ``numpy.random.Generator``; clips mix a few
enveloped events over a low background noise. Everything is fully determined by an integer seed, so the
same seed always gives bit-identical audio, in any process or DataLoader worker. Generation is numpy only.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import soundfile as sf
import torch

__all__ = ["SOUND_CLASSES", "SOUND_NAMES", "tone", "chirp", "harmonic", "noise_burst", "click_train",
           "am_tone", "fm_tone", "make_event", "background_noise", "finish_mix", "generate_clip",
           "generate_labelled_clip", "SynthDataset", "write_clips"]

DEFAULT_SR = 16000


def _n(duration: float, sr: int) -> int:
    return max(1, int(round(float(duration) * sr)))


def _t(duration: float, sr: int) -> np.ndarray:
    return np.arange(_n(duration, sr)) / float(sr)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _fmax(sr: int) -> float:
    return 0.45 * sr


def _peak_norm(x: np.ndarray, peak: float = 1.0) -> np.ndarray:
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (peak / m) if m > 0 and np.isfinite(m) else np.zeros_like(x)).astype(np.float32)


def _colored_noise(rng: np.random.Generator, n: int, sr: int, color: str = "white", band=None) -> np.ndarray:
    """White/pink/brown noise shaped in the FFT domain, optionally band-passed (smooth-edged mask)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    alpha = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]
    spec *= np.maximum(f, 10.0) ** -alpha
    if band is not None:
        lo, hi = band
        lf = np.log(np.maximum(f, 1.0))
        spec *= 1.0 / (1.0 + np.exp(-(lf - math.log(lo)) * 12.0)) / (1.0 + np.exp((lf - math.log(hi)) * 12.0))
    return _peak_norm(np.fft.irfft(spec, n))


# --- sound classes: f(rng, duration, sr, **overrides) -> float32 [n], peak 1 ------------------------------

def tone(rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR, freq: float | None = None) -> np.ndarray:
    """A pure sine; ``freq`` (Hz) defaults to a log-uniform draw in 80-4000 Hz, phase is random."""
    freq = _loguniform(rng, 80.0, 4000.0) if freq is None else float(freq)
    phase = rng.uniform(0, 2 * math.pi)
    return np.sin(2 * math.pi * min(freq, _fmax(sr)) * _t(duration, sr) + phase).astype(np.float32)


def chirp(rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR, f0: float | None = None,
          f1: float | None = None, method: str | None = None) -> np.ndarray:
    """A sine sweep from ``f0`` to ``f1`` Hz (random, up or down, at least an octave apart by default);
    ``method`` is ``'linear'`` or ``'exponential'`` (random by default)."""
    top = min(6000.0, _fmax(sr))
    if f0 is None or f1 is None:
        a = _loguniform(rng, 100.0, top / 2.0)
        b = min(top, a * _loguniform(rng, 2.0, 16.0))
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        f0 = a if f0 is None else f0
        f1 = b if f1 is None else f1
    method = ("linear" if rng.random() < 0.5 else "exponential") if method is None else method
    t = _t(duration, sr)
    frac = t / max(float(duration), 1e-9)
    if method == "linear":
        f = f0 + (f1 - f0) * frac
    elif method == "exponential":
        f = f0 * (f1 / f0) ** frac
    else:
        raise ValueError(f"chirp method must be 'linear' or 'exponential', got {method!r}")
    phase = 2 * math.pi * np.cumsum(np.minimum(f, _fmax(sr))) / sr + rng.uniform(0, 2 * math.pi)
    return np.sin(phase).astype(np.float32)


def harmonic(rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR, f0: float | None = None,
             tilt_db: float | None = None, vibrato: bool | None = None) -> np.ndarray:
    """A harmonic stack on ``f0`` (60-800 Hz) with a spectral tilt of ``tilt_db`` dB/octave (-12..-3) and,
    half the time by default, a 4-7 Hz vibrato of 0.5-3 % depth."""
    f0 = _loguniform(rng, 60.0, 800.0) if f0 is None else float(f0)
    tilt_db = rng.uniform(-12.0, -3.0) if tilt_db is None else float(tilt_db)
    vibrato = bool(rng.random() < 0.5) if vibrato is None else bool(vibrato)
    t = _t(duration, sr)
    inst = np.full_like(t, f0)
    if vibrato:
        inst = f0 * (1.0 + rng.uniform(0.005, 0.03) * np.sin(2 * math.pi * rng.uniform(4, 7) * t
                                                              + rng.uniform(0, 2 * math.pi)))
    base = 2 * math.pi * np.cumsum(inst) / sr
    fmax = _fmax(sr) / (1.03 if vibrato else 1.0)
    n_harm = int(max(1, min(40, fmax // f0)))
    out = np.zeros_like(t)
    for k in range(1, n_harm + 1):
        out += 10 ** (tilt_db * math.log2(k) / 20.0) * np.sin(k * base + rng.uniform(0, 2 * math.pi))
    return _peak_norm(out)


def noise_burst(rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR, color: str | None = None,
                band: tuple[float, float] | None = None) -> np.ndarray:
    """White, pink or brown noise band-passed by FFT masking to ``band`` (Hz, random by default), under an
    attack (1-50 ms) / exponential-decay envelope."""
    color = ("white", "pink", "brown")[int(rng.integers(3))] if color is None else color
    if band is None:
        lo = _loguniform(rng, 50.0, 4000.0)
        band = (lo, min(_fmax(sr), lo * _loguniform(rng, 1.5, 16.0)))
    n = _n(duration, sr)
    x = _colored_noise(rng, n, sr, color, band).astype(np.float64)
    t = _t(duration, sr)
    ta, td = rng.uniform(0.001, 0.05), _loguniform(rng, 0.05, max(0.06, 2.0 * float(duration)))
    return _peak_norm(x * (1.0 - np.exp(-t / ta)) * np.exp(-t / td))


def click_train(rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR,
                rate: float | None = None) -> np.ndarray:
    """Periodic impulses at ``rate`` Hz (2-50 Hz by default), each ringing a damped resonance
    (500-5000 Hz, 1-10 ms decay); the period is ``sr / rate`` samples."""
    rate = _loguniform(rng, 2.0, 50.0) if rate is None else float(rate)
    n, period = _n(duration, sr), sr / rate
    x = np.zeros(n)
    pos = np.round(np.arange(rng.uniform(0, min(period, n)), n, period)).astype(int)
    x[pos[pos < n]] = 1.0
    tau = min(_loguniform(rng, 0.001, 0.01), period / sr / 4.0)
    tk = np.arange(max(2, min(int(5 * tau * sr), int(period)))) / sr
    kern = np.exp(-tk / tau) * np.sin(2 * math.pi * min(_loguniform(rng, 500.0, 5000.0), _fmax(sr)) * tk + 0.5)
    m = n + len(kern)
    y = np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(kern, m), m)[:n]
    return _peak_norm(y)


def am_tone(rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR, carrier: float | None = None,
            mod_freq: float | None = None, depth: float | None = None) -> np.ndarray:
    """A sine carrier (150-4000 Hz) amplitude-modulated at ``mod_freq`` (2-40 Hz) with ``depth`` (0.3-1)."""
    carrier = _loguniform(rng, 150.0, 4000.0) if carrier is None else float(carrier)
    mod_freq = _loguniform(rng, 2.0, 40.0) if mod_freq is None else float(mod_freq)
    depth = rng.uniform(0.3, 1.0) if depth is None else float(depth)
    t = _t(duration, sr)
    env = (1.0 + depth * np.sin(2 * math.pi * mod_freq * t + rng.uniform(0, 2 * math.pi))) / (1.0 + depth)
    return (env * np.sin(2 * math.pi * min(carrier, _fmax(sr)) * t + rng.uniform(0, 2 * math.pi))).astype(np.float32)


def fm_tone(rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR, carrier: float | None = None,
            mod_freq: float | None = None, index: float | None = None) -> np.ndarray:
    """A sine carrier (150-3000 Hz) frequency-modulated at ``mod_freq`` (2-200 Hz) with modulation
    ``index`` (0.5-10); the index is capped so the Carson bandwidth stays under 0.45 * sr."""
    carrier = min(_loguniform(rng, 150.0, 3000.0) if carrier is None else float(carrier), _fmax(sr) / 2)
    mod_freq = _loguniform(rng, 2.0, 200.0) if mod_freq is None else float(mod_freq)
    index = rng.uniform(0.5, 10.0) if index is None else float(index)
    index = max(0.0, min(index, (_fmax(sr) - carrier) / mod_freq - 1.0))
    t = _t(duration, sr)
    mod = index * np.sin(2 * math.pi * mod_freq * t + rng.uniform(0, 2 * math.pi))
    return np.sin(2 * math.pi * carrier * t + mod + rng.uniform(0, 2 * math.pi)).astype(np.float32)


SOUND_CLASSES = {"tone": tone, "chirp": chirp, "harmonic": harmonic, "noise_burst": noise_burst,
                 "click_train": click_train, "am_tone": am_tone, "fm_tone": fm_tone}
SOUND_NAMES = tuple(SOUND_CLASSES)


# --- events and clips ---------------------------------------------------------------------------------

def make_event(kind: str, rng: np.random.Generator, duration: float, sr: int = DEFAULT_SR,
               min_duration: float = 0.2, max_duration: float = 5.0) -> np.ndarray:
    """One event of class ``kind``: a log-uniform random length in [min_duration, min(max_duration,
    duration)] seconds (never longer than the clip ``duration``), peak 1, under a raised-cosine attack
    (2 ms to 30 % of the event) and release (5 ms to 40 %). Returns float32 of the event's own length."""
    if kind not in SOUND_CLASSES:
        raise ValueError(f"unknown sound class {kind!r}; expected one of {list(SOUND_NAMES)}")
    lo = min(float(min_duration), float(duration))
    hi = max(lo, min(float(max_duration), float(duration)))
    ev_dur = lo * (hi / lo) ** rng.random() if lo > 0 else hi
    x = SOUND_CLASSES[kind](rng, ev_dur, sr).astype(np.float64)
    n = len(x)
    na = min(n, max(1, int(rng.uniform(0.002 * sr, max(0.002 * sr, 0.3 * n)))))
    nr = min(n, max(1, int(rng.uniform(0.005 * sr, max(0.005 * sr, 0.4 * n)))))
    env = np.ones(n)
    env[:na] *= 0.5 - 0.5 * np.cos(math.pi * (np.arange(na) + 1) / na)
    env[n - nr:] *= 0.5 + 0.5 * np.cos(math.pi * np.arange(nr) / nr)
    return _peak_norm(x * env)


def background_noise(rng: np.random.Generator, n: int, sr: int, noise_level: float) -> np.ndarray:
    """``n`` samples (float64) of white, pink or brown noise (drawn from ``rng``) at RMS ``noise_level``, the
    background of every generated clip; zeros when ``noise_level <= 0`` (nothing drawn from ``rng``)."""
    if noise_level <= 0:
        return np.zeros(n)
    x = _colored_noise(rng, n, sr, ("white", "pink", "brown")[int(rng.integers(3))]).astype(np.float64)
    return x * (noise_level / max(float(np.sqrt(np.mean(x ** 2))), 1e-12))


def finish_mix(mix: np.ndarray) -> np.ndarray:
    """A mixture of events and background as a clip: non-finite samples zeroed, peak-normalised to 0.9,
    float32 (all zeros stay zeros)."""
    mix = np.nan_to_num(mix, nan=0.0, posinf=0.0, neginf=0.0)
    return _peak_norm(mix, 0.9)


def generate_clip(seed: int, duration: float = 10.0, sample_rate: int = DEFAULT_SR, max_events: int = 4,
                  noise_level: float = 0.003) -> tuple[np.ndarray, list[dict]]:
    """A mixture of 1..``max_events`` events of random classes, onsets and levels over background noise.

    Event levels are drawn in -30..0 dB and shifted so the loudest event sits at 0 dB (peak 1); the
    background is coloured noise of RMS ``noise_level`` on that scale. The mix is peak-normalised to 0.9.
    Returns ``(wave float32 [n], events)`` where ``events`` is sorted by onset, each
    ``{"label", "start_s", "end_s", "level_db"}`` with ``0 <= start_s < end_s <= duration``.
    The output is fully determined by ``seed`` (bit-identical for the same arguments).
    """
    if max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    rng = np.random.default_rng(int(seed))
    n = _n(duration, sample_rate)
    k = int(rng.integers(1, max_events + 1))
    levels = rng.uniform(-30.0, 0.0, size=k)
    levels -= levels.max()
    mix, events = np.zeros(n), []
    for lvl in levels:
        kind = SOUND_NAMES[int(rng.integers(len(SOUND_NAMES)))]
        ev = make_event(kind, rng, n / sample_rate, sample_rate)
        start = int(rng.integers(0, n - len(ev) + 1))
        mix[start:start + len(ev)] += 10 ** (lvl / 20.0) * ev
        events.append({"label": kind, "start_s": start / sample_rate, "end_s": (start + len(ev)) / sample_rate,
                       "level_db": float(lvl)})
    mix += background_noise(rng, n, sample_rate, noise_level)
    events.sort(key=lambda e: (e["start_s"], e["label"]))
    return finish_mix(mix), events


def _labelled(seed: int, label: str, duration: float, sample_rate: int, noise_level: float):
    if label not in SOUND_CLASSES:
        raise ValueError(f"unknown label {label!r}; expected one of {list(SOUND_NAMES)}")
    rng = np.random.default_rng([int(seed), SOUND_NAMES.index(label) + 1])
    n = _n(duration, sample_rate)
    dur = n / sample_rate
    ev = make_event(label, rng, dur, sample_rate, min_duration=0.5 * dur, max_duration=dur)
    start = int(rng.integers(0, n - len(ev) + 1))
    mix = background_noise(rng, n, sample_rate, noise_level)
    mix[start:start + len(ev)] += ev
    events = [{"label": label, "start_s": start / sample_rate, "end_s": (start + len(ev)) / sample_rate,
               "level_db": 0.0}]
    return finish_mix(mix), events


def generate_labelled_clip(seed: int, label: str, duration: float = 10.0, sample_rate: int = DEFAULT_SR,
                           noise_level: float = 0.003) -> np.ndarray:
    """A clip whose single dominant event (covering 50-100 % of it, at 0 dB) is of class ``label``, over
    background noise of RMS ``noise_level``; peak-normalised to 0.9. Determined by ``(seed, label)``."""
    return _labelled(seed, label, duration, sample_rate, noise_level)[0]


class SynthDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``length`` synthetic clips; item ``i`` uses seed ``base_seed + i``.

    Yields ``(wave float32 tensor [n], info)`` with ``info = {"seed": int, "label": str ('' unless
    labelled), "label_idx": int (-1 unless labelled), "events": JSON string of the event list}`` -- all
    collatable by the default DataLoader collate. With ``labelled=True`` item ``i`` is a
    :func:`generate_labelled_clip` of class ``SOUND_NAMES[(base_seed + i) % 7]`` (balanced classes).
    The same index gives the same data in any worker.
    """

    def __init__(self, length: int = 10000, duration: float = 10.0, sample_rate: int = DEFAULT_SR,
                 base_seed: int = 0, labelled: bool = False, max_events: int = 4, noise_level: float = 0.003):
        self.length, self.duration, self.sample_rate = int(length), float(duration), int(sample_rate)
        self.base_seed, self.labelled = int(base_seed), bool(labelled)
        self.max_events, self.noise_level = int(max_events), float(noise_level)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for SynthDataset of length {self.length}")
        seed = self.base_seed + (int(i) % self.length)
        if self.labelled:
            label = SOUND_NAMES[seed % len(SOUND_NAMES)]
            wave, events = _labelled(seed, label, self.duration, self.sample_rate, self.noise_level)
        else:
            label = ""
            wave, events = generate_clip(seed, self.duration, self.sample_rate, self.max_events, self.noise_level)
        info = {"seed": seed, "label": label, "label_idx": SOUND_NAMES.index(label) if label else -1,
                "events": json.dumps(events)}
        return torch.from_numpy(wave), info


def write_clips(folder, n: int, duration: float = 10.0, seed: int = 0, labelled: bool = False,
                sample_rate: int = DEFAULT_SR) -> list[dict]:
    """Write ``n`` clips (seeds ``seed .. seed+n-1``, as :class:`SynthDataset`) as 16-bit PCM WAVs
    ``clip_00000.wav ...`` into ``folder`` plus ``meta.csv`` with columns ``filename, label, events``
    (label '' unless ``labelled``; events as JSON). Returns the meta rows."""
    os.makedirs(folder, exist_ok=True)
    ds = SynthDataset(n, duration, sample_rate, base_seed=seed, labelled=labelled)
    rows = []
    for i in range(n):
        wave, info = ds[i]
        name = f"clip_{i:05d}.wav"
        sf.write(os.path.join(folder, name), wave.numpy(), sample_rate, subtype="PCM_16")
        rows.append({"filename": name, "label": info["label"], "events": info["events"]})
    with open(os.path.join(folder, "meta.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["filename", "label", "events"])
        w.writeheader()
        w.writerows(rows)
    return rows
