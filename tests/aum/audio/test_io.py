"""Tests for aum.audio.io: soundfile loading, downmix, resampling and waveform validation."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from aum.audio.io import AudioDecodeError, load_audio, resample, validate_waveform


def _sine(sr, seconds=1.0, freq=1000.0, amp=0.5):
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


# --- load_audio ---------------------------------------------------------------------------------------

def test_wav_float_round_trip_and_stereo_downmix(tmp_path):
    left, right = _sine(16000, freq=440.0), _sine(16000, freq=1000.0, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")

    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (16000,)
    torch.testing.assert_close(wave, torch.from_numpy((left + right) / 2), atol=1e-7, rtol=0)

    both = load_audio(str(path), mono=False)
    assert both.shape == (2, 16000)
    torch.testing.assert_close(both[0], torch.from_numpy(left), atol=0, rtol=0)
    torch.testing.assert_close(both[1], torch.from_numpy(right), atol=0, rtol=0)


def test_flac_pcm16_round_trip_stereo(tmp_path):
    left, right = _sine(16000, freq=300.0), -_sine(16000, freq=300.0, amp=0.1)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 16000)  # FLAC: 16-bit PCM
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (16000,)
    # 16-bit quantisation: each channel is off by at most half an LSB
    torch.testing.assert_close(wave, torch.from_numpy((left + right) / 2), atol=1.0 / 32768, rtol=0)


def test_load_resamples_to_requested_rate(tmp_path):
    path = tmp_path / "8k.wav"
    sf.write(path, _sine(8000, seconds=0.5), 8000, subtype="FLOAT")
    wave = load_audio(path, sample_rate=16000)
    assert wave.shape == (8000,)  # 0.5 s at 16 kHz
    torch.testing.assert_close(wave[200:-200], torch.from_numpy(_sine(16000, seconds=0.5))[200:-200],
                               atol=2e-3, rtol=0)
    assert load_audio(path, sample_rate=None).shape == (4000,)  # keep the file's own rate


def test_corrupt_file_raises_decode_error_naming_path(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert "Format not recognised" in str(info.value) or "Error" in str(info.value)  # soundfile's reason
    assert isinstance(info.value, ValueError)


def test_empty_and_nonfinite_files_name_the_file(tmp_path):
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros(0, dtype=np.float32), 16000)
    nan_file = tmp_path / "nan.wav"
    sig = _sine(16000, seconds=0.1)
    sig[10] = np.nan
    sf.write(nan_file, sig, 16000, subtype="FLOAT")
    for path, word in [(zero_bytes, "empty"), (no_frames, "empty"), (nan_file, "non-finite")]:
        with pytest.raises(ValueError, match=word) as info:
            load_audio(path)
        assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")


# --- resample ------------------------------------------------------------------------------------------

def test_resample_identity_and_length():
    x = torch.from_numpy(_sine(44100))
    assert resample(x, 16000, 16000) is x  # same rate: no work, no copy
    torch.testing.assert_close(resample(x, 44100, 44100), x)
    y = resample(x, 44100, 16000)
    assert y.shape == (16000,)
    torch.testing.assert_close(y[300:-300], torch.from_numpy(_sine(16000))[300:-300], atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="orig_sr"):
        resample(x, 0, 16000)


# --- validate_waveform -----------------------------------------------------------------------------------

def test_validate_accepts_mono_shapes_and_numpy():
    x = np.zeros(100, dtype=np.float32)
    assert validate_waveform(x, "a").shape == (100,)
    assert validate_waveform(torch.zeros(1, 100), "a").shape == (100,)
    assert validate_waveform(torch.zeros(100, dtype=torch.float16), "a").dtype == torch.float32


@pytest.mark.parametrize("wave, word", [
    (torch.zeros(0), "empty"),
    (torch.zeros(1, 0), "empty"),
    (torch.full((100,), float("nan")), "all NaN"),
    (torch.tensor([0.0, float("inf"), 0.1]), "non-finite"),
    (torch.zeros(2, 100), "downmix"),
    (torch.zeros(100, 2), "downmix"),
    (torch.zeros(1, 1, 100), "3 dims"),
    (torch.tensor(0.5), "scalar"),
    (torch.zeros(100, dtype=torch.int16), "integer"),
])
def test_validate_rejects_with_clip_name(wave, word):
    with pytest.raises(ValueError, match=word) as info:
        validate_waveform(wave, "my_clip_07")
    assert "my_clip_07" in str(info.value)
