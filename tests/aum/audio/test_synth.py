"""Tests for aum.audio.synth: determinism, per-class signal properties, event placement, datasets and files."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from aum.audio.synth import (SOUND_CLASSES, SOUND_NAMES, SynthDataset, chirp, click_train, generate_clip,
                       generate_labelled_clip, make_event, tone, write_clips)

SR = 16000


def _rng(seed=0):
    return np.random.default_rng(seed)


def _centroid(x, sr=SR):
    mag = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    return float((f * mag).sum() / mag.sum())


# --- determinism ----------------------------------------------------------------------------------------

def test_same_seed_bit_identical_and_different_seeds_differ():
    a, ea = generate_clip(123, duration=2.0)
    b, eb = generate_clip(123, duration=2.0)
    c, _ = generate_clip(124, duration=2.0)
    assert a.dtype == np.float32 and a.shape == (2 * SR,)
    assert a.tobytes() == b.tobytes() and ea == eb
    assert not np.array_equal(a, c)


def test_clip_normalised_finite_and_not_silent():
    for seed in range(8):
        x, events = generate_clip(seed, duration=1.5, max_events=4)
        assert np.all(np.isfinite(x))
        assert np.max(np.abs(x)) <= 0.9 + 1e-6
        assert np.max(np.abs(x)) > 0.5
        assert 1 <= len(events) <= 4


# --- sound classes --------------------------------------------------------------------------------------

def test_registry_order():
    assert list(SOUND_CLASSES) == ["tone", "chirp", "harmonic", "noise_burst", "click_train", "am_tone", "fm_tone"]
    assert SOUND_NAMES == tuple(SOUND_CLASSES)


@pytest.mark.parametrize("name", list(SOUND_CLASSES))
def test_every_class_finite_nonsilent_in_range(name):
    for seed in range(4):
        x = SOUND_CLASSES[name](_rng(seed), 0.5, SR)
        assert x.dtype == np.float32 and x.shape == (SR // 2,)
        assert np.all(np.isfinite(x))
        assert np.max(np.abs(x)) <= 1.0 + 1e-6
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 1e-3
        ev = make_event(name, _rng(seed), 2.0, SR)
        assert 0 < len(ev) <= 2 * SR and np.all(np.isfinite(ev)) and np.max(np.abs(ev)) <= 1.0 + 1e-6


@pytest.mark.parametrize("freq", [100.0, 440.0, 1000.0, 3500.0])
def test_tone_fft_peak_at_requested_frequency(freq):
    x = tone(_rng(1), 1.0, SR, freq=freq)
    f = np.fft.rfftfreq(len(x), 1.0 / SR)
    peak = f[np.argmax(np.abs(np.fft.rfft(x)))]
    assert abs(peak - freq) <= 1.0


@pytest.mark.parametrize("method", ["linear", "exponential"])
def test_chirp_frequency_rises(method):
    x = chirp(_rng(2), 1.0, SR, f0=300.0, f1=3000.0, method=method)
    q = len(x) // 4
    assert _centroid(x[-q:]) > 2.0 * _centroid(x[:q])
    y = chirp(_rng(2), 1.0, SR, f0=3000.0, f1=300.0, method=method)
    assert _centroid(y[-q:]) < 0.5 * _centroid(y[:q])


@pytest.mark.parametrize("rate", [5.0, 10.0, 20.0, 40.0])
def test_click_train_autocorrelation_peak_at_period(rate):
    x = click_train(_rng(3), 1.0, SR, rate=rate).astype(np.float64)
    m = 2 * len(x)
    ac = np.fft.irfft(np.abs(np.fft.rfft(x, m)) ** 2, m)[: len(x)]
    period = SR / rate
    lo, hi = int(0.5 * period), int(1.5 * period)
    lag = lo + int(np.argmax(ac[lo:hi]))
    assert abs(lag - period) <= 1


# --- events ---------------------------------------------------------------------------------------------

def test_event_onsets_inside_clip():
    for seed in range(10):
        _, events = generate_clip(seed, duration=3.0, max_events=4)
        for e in events:
            assert e["label"] in SOUND_CLASSES
            assert 0.0 <= e["start_s"] < e["end_s"] <= 3.0


def test_loud_isolated_event_energy_exceeds_preceding_energy():
    checked = 0
    for seed in range(200):
        x, events = generate_clip(seed, duration=3.0, max_events=1)
        e = events[0]
        if e["start_s"] < 0.5:
            continue
        s, t = int(e["start_s"] * SR), int(e["end_s"] * SR)
        inside = np.mean(x[s:t].astype(np.float64) ** 2)
        before = np.mean(x[s - int(0.3 * SR):s].astype(np.float64) ** 2)
        assert inside > 10.0 * before, (seed, e)
        checked += 1
        if checked == 5:
            break
    assert checked == 5


@pytest.mark.parametrize("label", list(SOUND_CLASSES))
def test_generate_labelled_clip(label):
    x = generate_labelled_clip(7, label, duration=1.0)
    y = generate_labelled_clip(7, label, duration=1.0)
    assert x.dtype == np.float32 and x.shape == (SR,)
    assert np.all(np.isfinite(x)) and 0.5 < np.max(np.abs(x)) <= 0.9 + 1e-6
    assert x.tobytes() == y.tobytes()
    assert not np.array_equal(x, generate_labelled_clip(8, label, duration=1.0))


def test_labelled_clip_rejects_unknown_label():
    with pytest.raises(ValueError, match="unknown label"):
        generate_labelled_clip(0, "dog_bark", duration=0.5)


# --- dataset and files ----------------------------------------------------------------------------------

def test_dataset_matches_generate_clip_and_collates():
    ds = SynthDataset(6, duration=0.5, base_seed=100)
    assert len(ds) == 6
    wave, info = ds[2]
    ref, events = generate_clip(102, duration=0.5)
    assert info["seed"] == 102 and info["label"] == "" and json.loads(info["events"]) == events
    assert torch.equal(wave, torch.from_numpy(ref))
    batches = list(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2))
    assert batches[0][0].shape == (3, SR // 2)
    assert torch.equal(batches[0][0][2], wave)
    with pytest.raises(IndexError):
        ds[6]


def test_labelled_dataset_balanced_labels():
    ds = SynthDataset(7, duration=0.5, labelled=True)
    labels = [ds[i][1]["label"] for i in range(7)]
    assert sorted(labels) == sorted(SOUND_NAMES)
    assert [ds[i][1]["label_idx"] for i in range(7)] == [SOUND_NAMES.index(l) for l in labels]


@pytest.mark.parametrize("labelled", [False, True])
def test_write_clips_round_trip(tmp_path, labelled):
    rows = write_clips(tmp_path, 3, duration=0.5, seed=5, labelled=labelled)
    with open(tmp_path / "meta.csv", newline="") as fh:
        meta = list(csv.DictReader(fh))
    assert [r["filename"] for r in meta] == [f"clip_{i:05d}.wav" for i in range(3)] == [r["filename"] for r in rows]
    for i, r in enumerate(meta):
        data, sr = sf.read(tmp_path / r["filename"], dtype="float32")
        assert sr == SR and sf.info(tmp_path / r["filename"]).subtype == "PCM_16"
        ds_wave, info = SynthDataset(3, duration=0.5, base_seed=5, labelled=labelled)[i]
        np.testing.assert_allclose(data, ds_wave.numpy(), atol=1.0 / 32767 + 1e-6)
        events = json.loads(r["events"])
        assert events and all(e["end_s"] <= 0.5 for e in events)
        assert (r["label"] in SOUND_CLASSES and events[0]["label"] == r["label"]) if labelled else r["label"] == ""
