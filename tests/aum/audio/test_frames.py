"""Tests for aum.audio.frames (frame arithmetic, checked against torchaudio's own front ends) and the shared clip
loading helpers of aum.data.datasets that every clip reader calls (datasets, probe embeddings, HEAR tasks)."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi

from aum.audio.features import fbank, get_preset, pad_to_one_frame
from aum.audio.frames import (EPIC_HOP_SAMPLES, EPIC_WINDOW_SAMPLES, HOP_SAMPLES, WINDOW_SAMPLES, frames_for_samples,
                              samples_for_frames)
from aum.data.datasets import AudioClipDataset, bad_file_reason, epoch_index, load_clip
from eval.embeddings import ClipFeatures


def _kaldi_frames(n: int) -> int:
    """Frames of ``n`` samples from torchaudio's Kaldi fbank itself (0 where it refuses a clip below one window)."""
    try:
        return kaldi.fbank(torch.full((1, n), 0.1), sample_frequency=16000, frame_length=25.0, frame_shift=10.0,
                           num_mel_bins=23, dither=0.0).shape[0]
    except (RuntimeError, AssertionError):
        return 0


@pytest.mark.parametrize("n", [0, 399, 400, 401, 16000, 16159, 16160])
def test_kaldi_frame_count_is_torchaudios(n):
    assert frames_for_samples(n) == _kaldi_frames(n)


@pytest.mark.parametrize("n", [1, 119, 120, 239, 24000])
def test_epic_frame_count_is_a_centred_stft(n):
    stft = torchaudio.transforms.Spectrogram(n_fft=2048, win_length=EPIC_WINDOW_SAMPLES,
                                             hop_length=EPIC_HOP_SAMPLES, center=True, pad_mode="constant")
    assert frames_for_samples(n, "epic") == stft(torch.zeros(n)).shape[-1]


@pytest.mark.parametrize("kind", ["kaldi", "epic"])
@pytest.mark.parametrize("frames", [1, 2, 98, 1024])
def test_samples_for_frames_is_the_fewest_samples(kind, frames):
    n = samples_for_frames(frames, kind)
    assert frames_for_samples(n, kind) == frames
    assert n == 0 or frames_for_samples(n - 1, kind) == frames - 1


def test_samples_for_frames_at_another_rate_rounds_up_and_constants_are_the_front_ends():
    assert samples_for_frames(1) == WINDOW_SAMPLES == 400 and samples_for_frames(2) - samples_for_frames(1) == HOP_SAMPLES
    assert samples_for_frames(98, "kaldi", 32000) == 2 * samples_for_frames(98)
    assert samples_for_frames(3, "kaldi", 22050) == int(np.ceil(720 * 22050 / 16000))
    assert samples_for_frames(11, "epic", 16000) == 800                       # 1200 samples at 24 kHz
    assert fbank(torch.zeros(16160) + 0.1).shape[0] == frames_for_samples(16160) == 99
    with pytest.raises(ValueError, match="front end 'mel'"):
        frames_for_samples(100, "mel")
    with pytest.raises(ValueError, match="positive"):
        samples_for_frames(0)


def test_pad_to_one_frame():
    short = torch.ones(100)
    assert pad_to_one_frame(short, 16000).shape == (400,) and pad_to_one_frame(short, 32000).shape == (800,)
    assert bool((pad_to_one_frame(short, 16000)[100:] == 0).all())
    assert pad_to_one_frame(short, 24000, "epic_sounds") is short
    long = torch.ones(500)
    assert pad_to_one_frame(long, 16000, get_preset("speechcommands")) is long


def test_load_clip_cuts_and_names_an_empty_segment(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.arange(16000, dtype=np.float32) / 16000, 16000, subtype="FLOAT")
    wave = load_clip({"path": str(path), "start": 0.25, "stop": 0.5}, 16000)
    assert wave.shape == (4000,) and float(wave[0]) == pytest.approx(0.25)
    assert load_clip({"path": str(path), "start": "", "stop": None}, 16000).shape == (16000,)
    assert load_clip({"path": str(path), "start": -1.0}, 8000).shape == (8000,)
    with pytest.raises(ValueError, match=r"a\.wav: empty segment start=0.9 stop=0.5"):
        load_clip({"path": str(path), "start": 0.9, "stop": 0.5}, 16000)
    with pytest.raises(FileNotFoundError) as missing:
        load_clip({"path": str(tmp_path / "gone.wav")}, 16000)
    assert bad_file_reason(missing.value) == "missing"


def test_training_and_probe_readers_record_the_same_reasons(tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really")
    sf.write(tmp_path / "ok.wav", np.full(8000, 0.1, np.float32), 16000)
    entries = [{"path": str(tmp_path / "corrupt.wav")}, {"path": str(tmp_path / "missing.wav")},
               {"path": str(tmp_path / "ok.wav"), "start": 0.6}]
    train, probe = AudioClipDataset(entries, crop_frames=16), ClipFeatures(entries, target_frames=16)
    assert [train[i] for i in range(3)] == [None] * 3 and [probe[i] for i in range(3)] == [None] * 3
    reasons = [r["reason"] for r in train.bad_files.records]
    assert reasons == [r["reason"] for r in probe.bad_files.records] == ["decode_error", "missing", "empty"]


def test_epoch_index():
    assert epoch_index(3, 7, 5) == (7, 3) and epoch_index((2, 4), 7, 5) == (2, 4) and epoch_index(-1, 0, 5) == (0, 4)
    with pytest.raises(IndexError, match="index 5 out of range for a dataset of 5 items"):
        epoch_index(5, 0, 5)
