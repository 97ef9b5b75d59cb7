"""Input features for AuM: Kaldi-compatible log-mel filterbanks and the EPIC-Sounds log-mel.

The one call most users need is :func:`waveform_to_features`::

    wave = load_audio("dog.wav")                                   # 16 kHz mono float32
    x = waveform_to_features(wave, 16000, preset="audioset")       # [1024, 128], normalised

Pipeline (AST / AuM): 16 kHz mono -> DC removed -> ``torchaudio.compliance.kaldi.fbank`` (HTK-compatible,
Hanning window, 25 ms / 10 ms, 128 mel bins, no dither, no energy) -> zero-pad at the end or cut to the
preset's frame count -> ``(fbank - mean) / (2 * std)`` with the dataset's statistics.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Literal

import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi

from aum.audio.frames import (EPIC_HOP_SAMPLES, EPIC_SAMPLE_RATE, EPIC_WINDOW_SAMPLES, FRAME_LENGTH_MS,
                              FRAME_SHIFT_MS, KALDI_SAMPLE_RATE, WINDOW_SAMPLES, samples_for_frames)
from aum.audio.io import resample, validate_waveform
from aum.config import UnknownPresetError

__all__ = [
    "FbankConfig", "NORM_PRESETS", "get_preset", "fbank", "pad_or_cut", "normalize",
    "waveform_to_features", "epic_logmel", "pad_to_one_frame", "NUM_MEL_BINS", "preset_record", "preset_from_record",
]

NUM_MEL_BINS = 128
_EPIC_EPS = 1e-6


@dataclass(frozen=True)
class FbankConfig:
    """One feature preset: dataset statistics, default length and which front end to use.

    ``mean``/``std`` are ``None`` for presets without normalisation; ``target_frames`` ``None`` keeps each
    clip's own length; ``kind`` is ``'kaldi'`` (16 kHz Kaldi fbank) or ``'epic'`` (24 kHz STFT log-mel);
    ``pad_mode`` is ``'zeros'`` (AST/AuM) or ``'edge'`` (EPIC-Sounds repeats the last frame).
    """

    name: str
    mean: float | None
    std: float | None
    target_frames: int | None
    sample_rate: int = KALDI_SAMPLE_RATE
    kind: Literal["kaldi", "epic"] = "kaldi"
    pad_mode: Literal["zeros", "edge"] = "zeros"

    @property
    def normalized(self) -> bool:
        """True when features are mean/std normalised."""
        return self.mean is not None


NORM_PRESETS: dict[str, FbankConfig] = {p.name: p for p in (
    FbankConfig("audioset", -4.2677393, 4.5689974, 1024),
    FbankConfig("audioset20k", -4.2677393, 4.5689974, 1024),
    FbankConfig("vggsound", -5.0767093, 4.4533687, 1024),
    FbankConfig("voxceleb", -3.7614744, 4.2011642, 1024),
    FbankConfig("speechcommands", -6.845978, 5.5654526, 128),
    FbankConfig("epic_sounds", None, None, 1024, EPIC_SAMPLE_RATE, "epic", "edge"),
    FbankConfig("none", None, None, None),
)}


def get_preset(name: str | FbankConfig) -> FbankConfig:
    """Return the :class:`FbankConfig` called ``name`` (case-insensitive; ``-`` is read as ``_``).

    A ``FbankConfig`` passes through unchanged. Unknown names raise :class:`UnknownPresetError` (a
    ``KeyError`` and a ``ValueError``) listing the valid names.
    """
    if isinstance(name, FbankConfig):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in NORM_PRESETS:
        raise UnknownPresetError(f"unknown feature preset {name!r}; valid presets: {', '.join(NORM_PRESETS)}")
    return NORM_PRESETS[key]


def preset_record(preset: str | FbankConfig, source: str, target_frames: int | None = None) -> dict:
    """JSON-ready record of a preset, as checkpoints store it (``aum_features``): ``name``, ``sample_rate``,
    ``num_mel_bins``, ``mean``, ``std``, ``target_frames`` (the given length the model was trained on, else
    the preset's) and ``source`` (where the choice came from, e.g. ``"pretrain:runs/x"``)."""
    cfg = get_preset(preset)
    return {"name": cfg.name, "sample_rate": cfg.sample_rate, "num_mel_bins": NUM_MEL_BINS, "mean": cfg.mean,
            "std": cfg.std, "target_frames": cfg.target_frames if target_frames is None else int(target_frames),
            "source": str(source)}


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def preset_from_record(record) -> FbankConfig:
    """The :class:`FbankConfig` a :func:`preset_record` describes: the named preset with the record's ``mean``,
    ``std`` and ``target_frames`` (missing fields keep the preset's). Raises ``ValueError`` saying what is
    wrong when the record is not an object with a known ``name``, has another ``sample_rate`` or
    ``num_mel_bins`` than that preset's front end produces, or ill-typed statistics or length."""
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise ValueError(f"feature preset record must be a JSON object with a 'name', got {record!r}")
    base = get_preset(record["name"])
    for key, want in (("sample_rate", base.sample_rate), ("num_mel_bins", NUM_MEL_BINS)):
        if record.get(key, want) != want:
            raise ValueError(f"feature preset {base.name!r} records {key} {record[key]!r}, but its front end "
                             f"produces {want}")
    mean, std, frames = (record.get(k, getattr(base, k)) for k in ("mean", "std", "target_frames"))
    if base.mean is None:
        if mean is not None or std is not None:
            raise ValueError(f"feature preset {base.name!r} is not normalised, but records mean {mean!r}, std {std!r}")
    elif not (_finite_number(mean) and _finite_number(std) and std > 0):
        raise ValueError(f"feature preset {base.name!r} records mean {mean!r}, std {std!r}: expected finite "
                         f"numbers, std > 0")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames <= 0):
        raise ValueError(f"feature preset {base.name!r} records target_frames {frames!r}: expected a positive "
                         f"integer or null")
    return dataclasses.replace(base, mean=None if mean is None else float(mean),
                               std=None if std is None else float(std), target_frames=frames)


def _to_rate(wave: torch.Tensor, sample_rate: int, target_sr: int) -> torch.Tensor:
    return resample(wave, sample_rate, target_sr) if sample_rate != target_sr else wave


def fbank(wave, sample_rate: int = KALDI_SAMPLE_RATE, name: str = "clip") -> torch.Tensor:
    """Raw Kaldi log-mel filterbank ``[T, 128]`` (float32) of one mono clip, as in AST/AuM.

    ``wave`` is ``[n]`` or ``[1, n]`` at ``sample_rate`` Hz (resampled to 16 kHz when different). The DC
    offset is removed, then ``torchaudio.compliance.kaldi.fbank`` runs with htk_compat=True,
    window_type='hanning', 25 ms window, 10 ms shift, 128 mel bins, dither=0, use_energy=False.
    ``T = 1 + (n_16k - 400) // 160``, e.g. 98 frames for 1 s. No padding and no normalisation here.
    Raises ``ValueError`` naming ``name`` for invalid waveforms or clips shorter than 25 ms.
    """
    wave = validate_waveform(wave, name)
    wave = _to_rate(wave, sample_rate, KALDI_SAMPLE_RATE)
    if wave.numel() < WINDOW_SAMPLES:
        raise ValueError(
            f"{name}: {wave.numel()} samples at 16 kHz is shorter than one 25 ms fbank window "
            f"({WINDOW_SAMPLES} samples); pad the clip first")
    wave = wave - wave.mean()
    feats = kaldi.fbank(
        wave[None], htk_compat=True, sample_frequency=KALDI_SAMPLE_RATE, use_energy=False,
        window_type="hanning", num_mel_bins=NUM_MEL_BINS, dither=0.0, frame_shift=FRAME_SHIFT_MS,
        frame_length=FRAME_LENGTH_MS)
    return feats.to(torch.float32)


def pad_or_cut(feats: torch.Tensor, target_frames: int | None,
               pad_mode: Literal["zeros", "edge"] = "zeros") -> torch.Tensor:
    """Zero-pad at the end or cut ``feats`` ``[T, F]`` to ``target_frames`` frames.

    ``target_frames=None`` returns ``feats`` unchanged. ``pad_mode='edge'`` repeats the last frame instead
    of padding with zeros (the EPIC-Sounds convention).
    """
    if target_frames is None:
        return feats
    try:
        frames = operator.index(target_frames)
    except TypeError:
        frames = 0
    if isinstance(target_frames, bool) or frames <= 0:
        raise ValueError(f"target_frames must be a positive integer or None, got {target_frames!r}")
    if feats.dim() != 2:
        raise ValueError(f"expected features of shape [T, F], got {tuple(feats.shape)}")
    n, target_frames = feats.shape[0], frames
    if n >= target_frames:
        return feats[:target_frames]
    if pad_mode == "zeros":
        return torch.nn.functional.pad(feats, (0, 0, 0, target_frames - n))
    if pad_mode == "edge":
        if n == 0:
            raise ValueError("cannot edge-pad features with 0 frames")
        return torch.cat([feats, feats[-1:].expand(target_frames - n, -1)], dim=0)
    raise ValueError(f"pad_mode must be 'zeros' or 'edge', got {pad_mode!r}")


def normalize(feats: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """AST/AuM normalisation ``(feats - mean) / (2 * std)`` with dataset statistics ``mean``, ``std``."""
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    return (feats - mean) / (2.0 * std)


def epic_logmel(wave, sample_rate: int = EPIC_SAMPLE_RATE, name: str = "clip") -> torch.Tensor:
    """EPIC-Sounds log-mel ``[T, 128]`` (float32) of one mono clip; no padding, no normalisation.

    The clip is resampled to 24 kHz when needed; then a centred STFT (n_fft 2048, Hann window of 240
    samples = 10 ms, hop 120 samples = 5 ms, zero padding at the edges), magnitude (power 1), 128 HTK mel
    bins over 0-12 kHz without area normalisation, and ``log(mel + 1e-6)``. ``T = 1 + n_24k // 120``.
    """
    wave = validate_waveform(wave, name)
    wave = _to_rate(wave, sample_rate, EPIC_SAMPLE_RATE).to(torch.float32)
    melspec = torchaudio.transforms.MelSpectrogram(
        sample_rate=EPIC_SAMPLE_RATE, n_fft=2048, win_length=EPIC_WINDOW_SAMPLES, hop_length=EPIC_HOP_SAMPLES,
        f_min=0.0, f_max=EPIC_SAMPLE_RATE / 2, n_mels=NUM_MEL_BINS, window_fn=torch.hann_window, power=1.0,
        center=True, pad_mode="constant", norm=None, mel_scale="htk").to(wave.device)
    return torch.log(melspec(wave) + _EPIC_EPS).T.contiguous()


def pad_to_one_frame(wave: torch.Tensor, sample_rate: int, preset: str | FbankConfig = "audioset") -> torch.Tensor:
    """``wave`` ``[n]`` zero-padded at the end to at least the samples (at ``sample_rate``) of one feature frame
    of ``preset``'s front end (one 25 ms window for Kaldi; EPIC needs none), so that a too-short clip gives one
    frame instead of an error; longer clips are returned unchanged."""
    short = samples_for_frames(1, get_preset(preset).kind, sample_rate) - wave.numel()
    return torch.nn.functional.pad(wave, (0, short)) if short > 0 else wave


def waveform_to_features(wave, sample_rate: int, preset: str | FbankConfig = "audioset",
                         target_frames: int | None | Literal["preset"] = "preset",
                         name: str = "clip") -> torch.Tensor:
    """Model-ready features ``[target_frames, 128]`` for one mono clip.

    ``preset`` picks the front end and statistics (see :data:`NORM_PRESETS`): Kaldi fbank for the 16 kHz
    presets, :func:`epic_logmel` for ``'epic_sounds'``. ``target_frames='preset'`` uses the preset's length
    (1024, or 128 for speechcommands); an int overrides it; ``None`` keeps the clip's own length. The clip
    is resampled from ``sample_rate`` as needed. ``name`` appears in error messages.
    """
    cfg = get_preset(preset)
    if cfg.kind == "kaldi":
        feats = fbank(wave, sample_rate, name=name)
    elif cfg.kind == "epic":
        feats = epic_logmel(wave, sample_rate, name=name)
    else:
        raise ValueError(f"preset {cfg.name!r} has unknown kind {cfg.kind!r}")
    frames = cfg.target_frames if isinstance(target_frames, str) and target_frames == "preset" else target_frames
    feats = pad_or_cut(feats, frames, cfg.pad_mode)
    if cfg.mean is not None:
        feats = normalize(feats, cfg.mean, cfg.std)
    return feats
