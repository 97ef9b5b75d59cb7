"""Haystacks of the needle-in-a-haystack test (:mod:`eval.niah`), built in feature space in bounded memory, and
the two ways of running the long input through a classifier.

A *needle* is a labelled clip's normalised features (cut to the classifier's training length); a *haystack* fills
the rest of a long input of an exact number of frames, and the needle's frames are inserted at a relative
position. Three haystacks (docs/niah.md):

- ``zeros``: all-zero frames **in normalised feature space**, as the DASS paper's default (not silence, and not
  the padding value of training);
- ``white``: Gaussian white noise, and ``babble:DIR``: a loop of several speech clips from ``DIR`` talking at
  once, tiled. Both are waveforms at an SNR relative to the needle (RMS of the needle's samples over RMS of the
  haystack's, both with their mean removed), featurised with the checkpoint's preset
  ``chunk_frames`` frames at a time, so a 60-minute haystack never exists as a waveform.

Everything random comes from ``numpy.random.default_rng`` seeded with ``[seed, stream, ...]``: the same seed
gives the same haystack, whatever the chunk size; ``stream`` (a stable number per needle) gives each needle its
own noise. Position ``p`` puts ``round(p * (total - needle))`` haystack frames before the needle: ``0`` start,
``0.5`` centred, ``1`` flush with the end; the needle never overruns the end (the paper's script mishandles that
case; docs/niah.md).

Run modes: :func:`whole_scores` (the whole input in one encoder pass) and :func:`window_scores` (windows of the
training length, pooled: max of probabilities by default).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aum.audio.features import fbank, get_preset, normalize, pad_to_one_frame
from aum.audio.frames import HOP_SAMPLES, KALDI_SAMPLE_RATE, samples_for_frames
from aum.embed.windows import window_starts

__all__ = ["HAYSTACK_KINDS", "FRAMES_PER_SECOND", "Haystack", "parse_haystack", "parse_length", "format_length",
           "parse_position", "needle_start", "insert_needle", "rms", "WhiteNoise", "LoopNoise", "babble_loop",
           "noise_gain", "noise_waveform", "noise_features", "haystack_features", "needle_features", "stream_of",
           "RUN_MODES", "POOLS", "probabilities", "whole_scores", "window_scores"]

HAYSTACK_KINDS = ("zeros", "white", "babble")
FRAMES_PER_SECOND = 100               # Kaldi fbank: one frame every 10 ms
NOISE_BLOCK = 1 << 16                 # white noise comes in blocks of this many samples, block k from [seed, stream, k]
BABBLE_VOICES = 6                     # talkers at once in a babble loop
BABBLE_LOOP_S = 60.0                  # length of the babble loop, tiled over the haystack
_UNITS = {"f": 1, "s": FRAMES_PER_SECOND, "m": 60 * FRAMES_PER_SECOND, "h": 3600 * FRAMES_PER_SECOND}
_POSITIONS = {"start": 0.0, "middle": 0.5, "end": 1.0}
RUN_MODES = ("whole", "window")
POOLS = ("max", "mean")


@dataclass(frozen=True)
class Haystack:
    """One kind of haystack: ``zeros``, ``white`` or ``babble`` (with the ``folder`` of speech clips)."""

    kind: str
    folder: str | None = None

    @property
    def name(self) -> str:
        """The name in records, tables and file names: ``zeros``, ``white``, ``babble-<folder name>``."""
        if self.kind != "babble":
            return self.kind
        return "babble-" + re.sub(r"[^A-Za-z0-9.]+", "-", Path(self.folder).resolve().name).strip("-")

    @property
    def noise(self) -> bool:
        """Whether the haystack is a waveform at an SNR (``white``, ``babble``) rather than feature zeros."""
        return self.kind != "zeros"


def parse_haystack(text: str) -> Haystack:
    """``"zeros"``, ``"white"`` or ``"babble:DIR"`` (a folder of speech clips, searched recursively) as a
    :class:`Haystack`; ``ValueError`` saying what is wrong otherwise (the folder is checked when it is read)."""
    kind, _, folder = str(text).partition(":")
    if kind not in HAYSTACK_KINDS:
        raise ValueError(f"unknown haystack {text!r}; choose zeros, white or babble:DIR")
    if (kind == "babble") != bool(folder):
        raise ValueError(f"haystack {text!r}: babble needs a folder of speech clips (babble:DIR); "
                         f"zeros and white take none")
    return Haystack(kind, folder or None)


def parse_length(text) -> int:
    """An input length in frames (10 ms each): ``"5s"``, ``"30s"``, ``"1m"``, ``"1.5m"``, ``"2h"``, ``"512f"``
    (frames), or a bare number of seconds; rounded to whole frames. ``ValueError`` for a malformed or
    non-positive length."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([fsmh]?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"cannot read length {text!r}: expected e.g. 5s, 30s, 10m, 1h or 512f")
    frames = round(float(m.group(1)) * _UNITS[m.group(2) or "s"])
    if frames < 1:
        raise ValueError(f"length {text!r} is less than one frame (10 ms)")
    return int(frames)


def format_length(frames: int) -> str:
    """``frames`` as the shortest exact label: ``"1h"``, ``"10m"``, ``"30s"``, ``"0.7s"`` (whole tenths of a
    second), else ``"512f"``."""
    for unit in ("h", "m", "s"):
        if frames % _UNITS[unit] == 0:
            return f"{frames // _UNITS[unit]}{unit}"
    return f"{frames / FRAMES_PER_SECOND:g}s" if frames % 10 == 0 else f"{frames}f"


def parse_position(text) -> float:
    """A relative needle position in [0, 1] (``start``, ``middle`` and ``end`` are 0, 0.5 and 1)."""
    key = str(text).strip().lower()
    try:
        p = _POSITIONS[key] if key in _POSITIONS else float(key)
    except ValueError:
        raise ValueError(f"cannot read position {text!r}: expected a number in [0, 1], start, middle or end") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"position {text!r} is outside [0, 1]")
    return p


def needle_start(total: int, needle: int, position: float) -> int:
    """First frame of a ``needle``-frame needle in a ``total``-frame input at relative ``position``:
    ``round(position * (total - needle))``, so the needle always ends by frame ``total`` (``ValueError`` when it
    is longer than the input or the position is outside [0, 1])."""
    if needle > total:
        raise ValueError(f"a needle of {needle} frames does not fit in an input of {total} frames")
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    return int(round(position * (total - needle)))


def insert_needle(haystack: torch.Tensor, needle: torch.Tensor, position: float) -> tuple[torch.Tensor, int]:
    """``(input [H + n, mel], start)``: ``needle [n, mel]`` inserted into ``haystack [H, mel]`` so that
    ``input[start:start + n] == needle`` with ``start = needle_start(H + n, n, position)``; the haystack's frames
    keep their order around it."""
    if haystack.dim() != 2 or needle.dim() != 2 or haystack.shape[1] != needle.shape[1]:
        raise ValueError(f"haystack {tuple(haystack.shape)} and needle {tuple(needle.shape)} must be [frames, mel] "
                         f"with the same mel bins")
    start = needle_start(haystack.shape[0] + needle.shape[0], needle.shape[0], position)
    return torch.cat([haystack[:start], needle.to(haystack.dtype), haystack[start:]]), start


def rms(wave) -> float:
    """Root mean square of a waveform after removing its mean (float64)."""
    w = np.asarray(wave, dtype=np.float64).reshape(-1)
    return float(np.sqrt(np.mean((w - w.mean()) ** 2))) if w.size else 0.0


def stream_of(text: str) -> int:
    """A stable 32-bit number of ``text`` (e.g. a needle's path): its noise stream."""
    import hashlib
    return int.from_bytes(hashlib.sha1(str(text).encode()).digest()[:4], "big")


class WhiteNoise:
    """Unit-variance Gaussian noise, sample ``i`` fixed by ``(seed, stream)`` whatever range is asked."""

    def __init__(self, seed: int, stream: int = 0):
        self.seed, self.stream = int(seed), int(stream)

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` (float64)."""
        first, last = start // NOISE_BLOCK, max(start, stop - 1) // NOISE_BLOCK
        blocks = [np.random.default_rng([self.seed, self.stream, k]).standard_normal(NOISE_BLOCK)
                  for k in range(first, last + 1)]
        return np.concatenate(blocks)[start - first * NOISE_BLOCK:stop - first * NOISE_BLOCK]


class LoopNoise:
    """A loop (``[n]`` samples) tiled without end, read from a fixed ``offset`` into it."""

    def __init__(self, loop: np.ndarray, offset: int = 0):
        self.loop = np.asarray(loop, dtype=np.float64)
        if self.loop.size == 0:
            raise ValueError("the noise loop is empty")
        self.offset = int(offset) % self.loop.size

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` of the tiled loop (float64)."""
        return np.take(self.loop, (self.offset + np.arange(start, stop)) % self.loop.size)


def babble_loop(folder, seed: int = 0, voices: int = BABBLE_VOICES, seconds: float = BABBLE_LOOP_S) -> np.ndarray:
    """A ``seconds``-long babble loop (float64 at 16 kHz): ``voices`` talkers at once, each a chain of clips drawn
    (with replacement, from ``numpy.random.default_rng([seed, 7, voice])``) from the audio files under ``folder``,
    every clip with its mean removed and scaled to unit RMS (silent clips skipped), the chain rotated by a random
    offset (clips of equal length would otherwise pause in step); the talkers are summed and divided by
    ``sqrt(voices)``. ``ValueError`` / ``FileNotFoundError`` naming the folder or file when there are
    no usable clips."""
    from aum.data.datasets import scan_audio
    from aum.audio.io import load_audio
    files = scan_audio(folder)
    n = int(round(seconds * KALDI_SAMPLE_RATE))
    cache: dict[int, np.ndarray | None] = {}

    def clip(i: int) -> np.ndarray | None:
        if i not in cache:
            w = load_audio(files[i], KALDI_SAMPLE_RATE).numpy().astype(np.float64)
            r = rms(w)
            cache[i] = (w - w.mean()) / r if r > 1e-8 else None
        return cache[i]

    mix = np.zeros(n)
    for v in range(int(voices)):
        rng, parts, have, tries = np.random.default_rng([int(seed), 7, v]), [], 0, 0
        while have < n:
            piece = clip(int(rng.integers(len(files))))
            tries += 1
            if piece is None:
                if tries > 20 * len(files) and not parts:
                    raise ValueError(f"babble folder {folder}: every clip tried is silent")
                continue
            parts.append(piece)
            have += piece.size
        mix += np.roll(np.concatenate(parts)[:n], int(rng.integers(n)))    # talkers out of step with each other
    return mix / math.sqrt(voices)


def _moments(source, n: int, chunk: int) -> tuple[float, float]:
    """``(mean, RMS after removing the mean)`` of samples ``[0, n)`` of ``source``, read ``chunk`` at a time."""
    total, squares = 0.0, 0.0
    for a in range(0, n, chunk):
        x = source.samples(a, min(n, a + chunk))
        total, squares = total + float(x.sum()), squares + float(np.dot(x, x))
    mean = total / n
    return mean, math.sqrt(max(squares / n - mean * mean, 0.0))


def noise_gain(source, n_samples: int, needle_rms: float, snr_db: float, chunk: int = 1 << 20) -> tuple[float, float]:
    """``(mean, gain)`` that put samples ``[0, n_samples)`` of ``source`` at ``snr_db`` below ``needle_rms``:
    ``(x - mean) * gain`` has RMS ``needle_rms / 10 ** (snr_db / 20)``."""
    mean, r = _moments(source, n_samples, chunk)
    if r == 0.0:
        raise ValueError("the noise source is constant over the haystack; it cannot be set to an SNR")
    return mean, needle_rms / 10.0 ** (snr_db / 20.0) / r


def noise_waveform(source, n_samples: int, needle_rms: float, snr_db: float) -> torch.Tensor:
    """The whole haystack waveform (float32 ``[n_samples]``) at ``snr_db`` below ``needle_rms``; for short
    haystacks and tests (:func:`noise_features` never builds it)."""
    mean, gain = noise_gain(source, n_samples, needle_rms, snr_db)
    return torch.from_numpy(((source.samples(0, n_samples) - mean) * gain).astype(np.float32))


def noise_features(source, frames: int, needle_rms: float, snr_db: float, preset, chunk_frames: int = 6000,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised features ``[frames, 128]`` of the haystack waveform of :func:`noise_waveform`, computed
    ``chunk_frames`` frames at a time (the same frames as the fbank of the whole waveform: Kaldi frames are
    independent; each chunk reads the samples its frames cover)."""
    cfg = get_preset(preset)
    if cfg.kind != "kaldi":
        raise ValueError(f"feature preset {cfg.name!r} is not a 16 kHz Kaldi preset; noise haystacks need one")
    out = torch.empty(frames, 128) if out is None else out
    if frames == 0:
        return out
    mean, gain = noise_gain(source, samples_for_frames(frames), needle_rms, snr_db)
    for a in range(0, frames, chunk_frames):
        b = min(frames, a + chunk_frames)
        seg = (source.samples(a * HOP_SAMPLES, samples_for_frames(b)) - mean) * gain
        f = fbank(torch.from_numpy(seg.astype(np.float32)), KALDI_SAMPLE_RATE, name="haystack")
        out[a:b] = normalize(f, cfg.mean, cfg.std) if cfg.mean is not None else f
    return out


def haystack_features(haystack: Haystack, frames: int, preset, needle_rms: float = 1.0, snr_db: float = 10.0,
                      seed: int = 0, stream: int = 0, babble: np.ndarray | None = None,
                      chunk_frames: int = 6000) -> torch.Tensor:
    """``frames`` haystack frames ``[frames, 128]`` (float32, normalised with ``preset``): zeros, or white /
    babble noise of ``(seed, stream)`` at ``snr_db`` below ``needle_rms``. ``babble`` is the loop of
    :func:`babble_loop` (built from ``haystack.folder`` when not given); each stream starts at its own offset
    into it, drawn from ``default_rng([seed, stream])``."""
    if frames < 0:
        raise ValueError(f"a haystack cannot have {frames} frames")
    if haystack.kind == "zeros":
        return torch.zeros(frames, 128)
    if haystack.kind == "white":
        source = WhiteNoise(seed, stream)
    elif haystack.kind == "babble":
        loop = babble_loop(haystack.folder, seed) if babble is None else babble
        source = LoopNoise(loop, int(np.random.default_rng([int(seed), int(stream)]).integers(len(loop))))
    else:
        raise ValueError(f"unknown haystack kind {haystack.kind!r}")
    return noise_features(source, frames, needle_rms, snr_db, preset, chunk_frames)


def needle_features(wave: torch.Tensor, preset, max_frames: int | None, name: str = "needle"):
    """``(features [n, 128], rms)`` of one needle clip (16 kHz mono): its fbank cut to ``max_frames`` (the
    classifier's training length; ``None``: whole) and normalised with ``preset`` (no padding), and the RMS of the
    samples those frames cover (mean removed: the reference of the haystack's SNR)."""
    cfg = get_preset(preset)
    if cfg.kind != "kaldi":
        raise ValueError(f"feature preset {cfg.name!r} is not a 16 kHz Kaldi preset; the needle test needs one")
    wave = pad_to_one_frame(torch.as_tensor(wave, dtype=torch.float32).reshape(-1), KALDI_SAMPLE_RATE, cfg)
    feats = fbank(wave, KALDI_SAMPLE_RATE, name=name)
    if max_frames is not None:
        feats = feats[:int(max_frames)]
    feats = normalize(feats, cfg.mean, cfg.std) if cfg.mean is not None else feats
    return feats, rms(wave[:samples_for_frames(feats.shape[0])].numpy())


def probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Class probabilities of logits ``[.., C]``: sigmoid (multi-label) or softmax (single-label), float32."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def whole_scores(model, x: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Probabilities ``[C]`` of the whole input ``x [T, mel]`` in one encoder pass (no grad)."""
    with torch.no_grad():
        return probabilities(model(x[None].to(_device(model)))[0], multi_label).cpu()


def window_scores(model, x: torch.Tensor, window: int, hop: int, multi_label: bool, pool: str = "max",
                  batch_size: int = 8, pad_value: float = 0.0, needle: tuple[int, int] | None = None,
                  constant: bool = False, cache: dict | None = None) -> tuple[torch.Tensor, int]:
    """``(pooled probabilities [C], windows)`` of ``x [T, mel]`` over windows of ``window`` frames every ``hop``
    (the last aligned with the end; an input no longer than a window is padded with ``pad_value`` to one window,
    as in training). ``pool``: ``max`` (each class's largest window probability) or ``mean`` (probabilities of the
    mean logits).

    ``needle=(a, b)``: the needle's frames; a window clear of them is haystack alone, from haystack frame ``s`` (before
    the needle) or ``s - (b - a)`` (after it), and its logits are kept in ``cache`` under that offset, so inputs that
    share a haystack (the positions of one needle) run each haystack window once. ``constant``: every haystack window
    is the same input (zeros), run once. Share ``cache`` only between inputs with the same haystack."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    n = x.shape[0]
    if n <= window:
        x = torch.nn.functional.pad(x, (0, 0, 0, window - n), value=pad_value)
        starts = [0]
    else:
        starts = window_starts(n, window, hop)
    cache = {} if cache is None else cache
    keys = {}
    for s in starts:
        if needle is not None and (s + window <= needle[0] or s >= needle[1]):
            offset = s if s < needle[0] else s - (needle[1] - needle[0])      # in haystack frames
            keys[s] = (window, "constant") if constant else (window, offset)
    logits = {}
    todo = [s for s in starts if s not in keys]
    todo += list({keys[s]: s for s in starts if s in keys and keys[s] not in cache}.values())   # one per new key
    with torch.no_grad():
        for i in range(0, len(todo), max(1, batch_size)):
            chunk = todo[i:i + batch_size]
            out = model(torch.stack([x[s:s + window] for s in chunk]).to(_device(model))).float().cpu()
            logits.update(zip(chunk, out))
    for s in todo:
        if s in keys:
            cache[keys[s]] = logits[s]
    rows = torch.stack([cache[keys[s]] if s in keys else logits[s] for s in starts])
    pooled = probabilities(rows, multi_label).max(dim=0).values if pool == "max" else \
        probabilities(rows.mean(dim=0), multi_label)
    return pooled, len(starts)


def _device(model) -> torch.device:
    return next(model.parameters()).device
