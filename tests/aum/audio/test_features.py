"""Tests for aum.audio.features: Kaldi fbank front end, presets, padding, normalisation and EPIC log-mel."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from aum.audio.io import load_audio
from aum.audio.features import (
    NORM_PRESETS, FbankConfig, epic_logmel, fbank, get_preset, normalize, pad_or_cut, waveform_to_features,
)

ESC10 = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "esc10"


def _sine(sr, seconds=1.0, freq=1000.0, amp=0.5):
    t = torch.arange(int(round(sr * seconds)), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * math.pi * freq * t)).to(torch.float32)


def _htk_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _kaldi_centres_hz(num_bins=128, low=20.0, high=8000.0):
    """Centre frequencies of Kaldi's mel bins: num_bins + 2 points equally spaced in HTK mel."""
    lo, hi = _htk_mel(low), _htk_mel(high)
    delta = (hi - lo) / (num_bins + 1)
    mel_centres = lo + delta * np.arange(1, num_bins + 1)
    return 700.0 * (np.exp(mel_centres / 1127.0) - 1.0)


# (a) exact equality with a direct torchaudio call -------------------------------------------------------

def test_fbank_matches_direct_kaldi_call():
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(24000, generator=g) + 0.05
    ours = fbank(wave, 16000)
    ref = torchaudio.compliance.kaldi.fbank(
        (wave - wave.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    assert ours.shape == ref.shape == (148, 128)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)


def test_dc_offset_is_removed():
    wave = _sine(16000, freq=440.0, amp=0.2)
    # float32 rounding of (wave + 0.3) leaves ~1e-8 noise that the log amplifies in near-empty bins
    torch.testing.assert_close(fbank(wave + 0.3), fbank(wave), atol=1e-3, rtol=1e-4)
    # the check is sensitive: with no DC removal at all (neither ours nor kaldi's per-frame one) the same
    # offset changes the low-frequency bins by far more than the tolerance above
    raw = torchaudio.compliance.kaldi.fbank(
        (wave + 0.3)[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10, remove_dc_offset=False)
    assert (raw[:, :5] - fbank(wave)[:, :5]).abs().max() > 1.0


# (b) independent hand check of the mel scale --------------------------------------------------------------

def test_1khz_sine_peaks_in_nearest_htk_bin():
    centres = _kaldi_centres_hz()
    expected = int(np.argmin(np.abs(centres - 1000.0)))
    feats = fbank(_sine(16000, freq=1000.0))
    assert int(feats.mean(0).argmax()) == expected


@pytest.mark.parametrize("bin_index", [10, 60, 110])
def test_sine_at_a_bin_centre_peaks_in_that_bin(bin_index):
    centre = float(_kaldi_centres_hz()[bin_index])
    feats = fbank(_sine(16000, freq=centre))
    assert int(feats.mean(0).argmax()) == bin_index


# (c) frame counts, pad and cut ------------------------------------------------------------------------------

def test_frame_count_and_lengths():
    wave = _sine(16000, seconds=1.0)
    raw = fbank(wave)
    assert raw.shape == (98, 128)  # 1 + (16000 - 400) // 160
    own = waveform_to_features(wave, 16000, "audioset", target_frames=None)
    assert own.shape == (98, 128)
    torch.testing.assert_close(own, normalize(raw, -4.2677393, 4.5689974))
    assert waveform_to_features(wave, 16000, "audioset").shape == (1024, 128)
    assert waveform_to_features(wave, 16000, "speechcommands").shape == (128, 128)
    assert waveform_to_features(wave, 16000, "audioset", target_frames=64).shape == (64, 128)
    # 2 s -> 198 frames, cut to speechcommands' 128
    long = waveform_to_features(_sine(16000, seconds=2.0), 16000, "speechcommands")
    torch.testing.assert_close(long, normalize(fbank(_sine(16000, seconds=2.0))[:128], -6.845978, 5.5654526))


def test_pad_or_cut_by_hand():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) + 1
    padded = pad_or_cut(x, 5)
    assert padded.shape == (5, 4)
    torch.testing.assert_close(padded[:3], x)
    assert torch.count_nonzero(padded[3:]) == 0
    torch.testing.assert_close(pad_or_cut(x, 2), x[:2])
    assert pad_or_cut(x, None) is x
    torch.testing.assert_close(pad_or_cut(x, 5, "edge")[3:], x[2:3].expand(2, 4))
    for bad in (0, -1, 2.5, "1024", True):
        with pytest.raises(ValueError, match="target_frames"):
            pad_or_cut(x, bad)


def test_padding_rows_after_normalisation():
    feats = waveform_to_features(_sine(16000), 16000, "audioset")
    pad_value = (0.0 - -4.2677393) / (2 * 4.5689974)
    torch.testing.assert_close(feats[98:], torch.full((1024 - 98, 128), pad_value))


# (d) normalisation numbers ------------------------------------------------------------------------------------

def test_normalize_numbers():
    x = torch.tensor([[-4.0, 0.0], [2.0, 6.0]])
    out = normalize(x, mean=2.0, std=2.0)  # (x - 2) / 4
    torch.testing.assert_close(out, torch.tensor([[-1.5, -0.5], [0.0, 1.0]]))
    out = normalize(torch.tensor([-4.2677393]), -4.2677393, 4.5689974)
    assert out.item() == 0.0
    with pytest.raises(ValueError, match="std"):
        normalize(x, 0.0, 0.0)


def test_presets_registry():
    assert get_preset("audioset") == FbankConfig("audioset", -4.2677393, 4.5689974, 1024)
    assert get_preset("AudioSet20K").mean == -4.2677393
    assert (get_preset("vggsound").mean, get_preset("vggsound").std) == (-5.0767093, 4.4533687)
    assert (get_preset("voxceleb").mean, get_preset("voxceleb").std) == (-3.7614744, 4.2011642)
    sc = get_preset("speechcommands")
    assert (sc.mean, sc.std, sc.target_frames) == (-6.845978, 5.5654526, 128)
    epic = get_preset("epic-sounds")
    assert (epic.mean, epic.kind, epic.sample_rate, epic.target_frames) == (None, "epic", 24000, 1024)
    assert set(NORM_PRESETS) == {"audioset", "audioset20k", "vggsound", "voxceleb", "speechcommands",
                                 "epic_sounds", "none"}
    for exc in (KeyError, ValueError):
        with pytest.raises(exc) as info:
            get_preset("audiosett")
        assert "audiosett" in str(info.value) and "speechcommands" in str(info.value)


def test_none_preset_is_raw_fbank():
    wave = _sine(16000, freq=500.0)
    torch.testing.assert_close(waveform_to_features(wave, 16000, "none"), fbank(wave), atol=0, rtol=0)


# (e) resampling -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sr", [44100, 8000])
def test_other_rates_give_close_features(sr, tmp_path):
    ref = fbank(_sine(16000))
    peak = int(ref.mean(0).argmax())
    strong = ref.mean(0) > ref.mean(0).max() - 5.0  # bins within ~22 dB of the peak

    direct = fbank(_sine(sr), sample_rate=sr)
    path = tmp_path / f"sine_{sr}.wav"
    sf.write(path, _sine(sr).numpy(), sr, subtype="FLOAT")
    loaded = fbank(load_audio(path, sample_rate=16000))
    for feats in (direct, loaded):
        assert feats.shape == ref.shape
        assert int(feats.mean(0).argmax()) == peak
        assert (feats.mean(0) - ref.mean(0))[strong].abs().max() < 0.05
    feats = waveform_to_features(_sine(sr), sr, "audioset", target_frames=None)
    assert int(feats.mean(0).argmax()) == peak


# (f) errors name the clip ------------------------------------------------------------------------------------

_BAD = [torch.zeros(0), torch.full((16000,), float("nan")), torch.zeros(2, 16000), torch.zeros(1, 1, 16000)]


@pytest.mark.parametrize("preset, wave", [("audioset", w) for w in _BAD] + [("epic_sounds", w) for w in _BAD]
                         + [("audioset", torch.zeros(100))])  # shorter than one 25 ms kaldi window
def test_bad_waveforms_name_the_clip(preset, wave):
    with pytest.raises(ValueError) as info:
        waveform_to_features(wave, 16000, preset, name="dog_bark_3.wav")
    assert "dog_bark_3.wav" in str(info.value)


# (h) EPIC-Sounds ----------------------------------------------------------------------------------------------

def test_epic_logmel_shape_and_no_normalisation():
    wave = _sine(24000, seconds=10.0)
    feats = epic_logmel(wave)
    assert feats.shape == (2001, 128)  # centred STFT: 1 + 240000 // 120
    model_in = waveform_to_features(wave, 24000, "epic_sounds")
    assert model_in.shape == (1024, 128)
    torch.testing.assert_close(model_in, feats[:1024], atol=0, rtol=0)  # first 1024 frames, untouched
    # silence is exactly log(1e-6): no mean/std anywhere
    silent = epic_logmel(torch.zeros(24000))
    torch.testing.assert_close(silent, torch.full_like(silent, math.log(1e-6)))
    # magnitude (power 1) spectrogram: doubling the amplitude adds log(2) at the peak
    peak = int(feats.mean(0).argmax())
    louder = epic_logmel(2 * wave)
    assert abs(float((louder - feats)[10:-10, peak].mean()) - math.log(2)) < 1e-3
    # short clips are edge-padded (the EPIC convention), not zero-padded
    short = waveform_to_features(_sine(24000, seconds=1.0), 24000, "epic_sounds")
    torch.testing.assert_close(short[201:], short[200:201].expand(1024 - 201, 128))


def test_epic_mel_peak_and_resampling():
    centre_hz = 700.0 * (np.exp(_htk_mel(12000.0) * 40 / 129 / 1127.0) - 1.0)  # HTK bin 39 over 0-12 kHz
    feats = epic_logmel(_sine(24000, seconds=1.0, freq=float(centre_hz)))
    assert int(feats.mean(0).argmax()) == 39
    from16k = epic_logmel(_sine(16000, seconds=1.0, freq=float(centre_hz)), sample_rate=16000)
    assert from16k.shape == feats.shape
    assert int(from16k.mean(0).argmax()) == 39


def _numpy_epic_logmel(x, sr=24000, n_fft=2048, win=240, hop=120, n_mels=128):
    """Hand-written reference: centred zero-padded STFT magnitude, HTK triangles (no area norm), log."""
    x = np.pad(np.asarray(x, dtype=np.float64), n_fft // 2)
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    n_frames = 1 + (len(x) - n_fft) // hop
    frames = np.stack([x[i * hop:i * hop + n_fft] for i in range(n_frames)])
    mag = np.abs(np.fft.rfft(frames * window, axis=1))  # [T, 1025]
    fft_hz = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges_hz = 700.0 * (np.exp(np.linspace(0, _htk_mel(sr / 2), n_mels + 2) / 1127.0) - 1.0)
    lower = (fft_hz[None] - edges_hz[:-2, None]) / (edges_hz[1:-1, None] - edges_hz[:-2, None])
    upper = (edges_hz[2:, None] - fft_hz[None]) / (edges_hz[2:, None] - edges_hz[1:-1, None])
    weights = np.maximum(0.0, np.minimum(lower, upper))  # [n_mels, 1025]
    return np.log(mag @ weights.T + 1e-6)


def test_epic_logmel_matches_hand_written_reference():
    g = torch.Generator().manual_seed(1)
    wave = 0.1 * torch.randn(4800, generator=g)  # 0.2 s at 24 kHz
    ours = epic_logmel(wave)
    ref = _numpy_epic_logmel(wave.numpy())
    assert ours.shape == ref.shape == (41, 128)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-3, rtol=0)


# (i) one real clip --------------------------------------------------------------------------------------------

@pytest.mark.real_audio
def test_real_esc10_clip():
    meta = ESC10 / "meta.csv"
    if not meta.exists():
        pytest.skip(f"real-audio pack not found at {ESC10} (only present beside the project checkout)")
    with meta.open(newline="") as fh:
        row = next(csv.DictReader(fh))
    wave = load_audio(ESC10 / row["filename"])
    assert wave.shape == (int(row["num_samples"]),) == (80000,)
    own = waveform_to_features(wave, 16000, "audioset", target_frames=None, name=row["filename"])
    assert own.shape == (498, 128)
    assert torch.isfinite(own).all()
    full = waveform_to_features(wave, 16000, "audioset")
    assert full.shape == (1024, 128)
    torch.testing.assert_close(full[:498], own)
    # a real recording is not a constant: features vary over time and frequency
    assert own.std() > 0.1
