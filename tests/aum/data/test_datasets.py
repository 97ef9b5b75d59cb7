"""Tests for aum.data.datasets: folder scan, manifests, deterministic crops, resampling, bad files through workers."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from aum.data.datasets import (MAX_BAD_LOADS, AudioClipDataset, BadFileLog, EpochSampler, SynthAudioDataset,
                      UnusableDataError, check_files, collate_skip_bad, format_bad_file_report, read_manifest,
                      scan_audio)
from aum.audio.features import get_preset, waveform_to_features
from aum.audio.synth import write_clips

SR = 16000


def _noise(seconds, seed=0, sr=SR):
    return (0.3 * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(np.float32)


def _write(path, data, sr=SR, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype)
    return path


def _bad_files(folder):
    """Three bad files (undecodable bytes, a WAV with 0 frames, a float WAV with NaN) and a missing path."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    empty = _write(folder / "empty.wav", np.zeros(0, np.float32))
    nan = _noise(1.0)
    nan[100:200] = np.nan
    nanf = _write(folder / "nan.wav", nan, subtype="FLOAT")
    return corrupt, empty, nanf, folder / "missing.wav"


# --- discovery ----------------------------------------------------------------------------------------

def test_scan_audio_recursive_case_insensitive_sorted(tmp_path):
    for name in ("b.wav", "a/c.FLAC", "a/d.ogg", "z/deep/e.Wav"):
        _write(tmp_path / name, _noise(0.1))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "dir.wav").mkdir()
    got = scan_audio(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["a/c.FLAC", "a/d.ogg", "b.wav", "z/deep/e.Wav"]
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="none"):
        scan_audio(tmp_path / "none")
    with pytest.raises(ValueError, match="none"):
        AudioClipDataset(tmp_path / "none")  # raised when the dataset is built, before any training
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_audio(tmp_path / "nowhere")


def test_csv_and_jsonl_manifests(tmp_path):
    _write(tmp_path / "audio" / "x.wav", _noise(1.0))
    _write(tmp_path / "audio" / "y.wav", _noise(1.0, 1))
    man = tmp_path / "lists" / "train.csv"
    man.parent.mkdir()
    man.write_text("path,label,start,stop,split\n../audio/x.wav,dog,0.25,0.75,train\n"
                   f"{tmp_path / 'audio' / 'y.wav'},cat,,,val\n../audio/gone.wav,,,,\n")
    rows = read_manifest(man)
    assert [r["path"] for r in rows] == [str(man.parent / "../audio/x.wav"), str(tmp_path / "audio" / "y.wav"),
                                         str(man.parent / "../audio/gone.wav")]
    assert rows[0]["label"] == "dog" and rows[0]["start"] == 0.25 and rows[0]["stop"] == 0.75
    assert rows[1]["split"] == "val" and "start" not in rows[1] and "label" not in rows[2]
    rep = check_files(rows)
    assert rep["total"] == 3 and rep["missing"] == 1 and rep["examples"][0].endswith("gone.wav")

    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"path": "audio/x.wav", "labels": ["a", "b"]}) + "\n\n"
                  + json.dumps({"path": "audio/y.wav", "start": 0.5}) + "\n")
    rows = read_manifest(jl)
    assert rows[0]["path"] == str(tmp_path / "audio" / "x.wav") and rows[0]["label"] == ["a", "b"]
    assert rows[1]["start"] == 0.5
    ds = AudioClipDataset(jl, crop_frames=32)
    assert len(ds) == 2 and ds[0]["label"] == ["a", "b"] and ds[0]["fbank"].shape == (32, 128)

    (tmp_path / "nopath.csv").write_text("file,label\nx.wav,dog\n")
    with pytest.raises(ValueError, match="nopath.csv.*'path'"):
        read_manifest(tmp_path / "nopath.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(ValueError, match="empty.csv"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "bad.jsonl").write_text('{"file": "x.wav"}\n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        read_manifest(tmp_path / "bad.jsonl")


def test_broken_json_is_reported_at_its_line_of_the_manifest(tmp_path):
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"path": "a.wav"}\n\n{"path": "b.wav"}\n{"path": "c.wav",}\n{"path": "d.wav"}\n')
    with pytest.raises(ValueError) as err:
        read_manifest(jl)
    assert str(err.value).startswith(f"manifest {jl}:4: invalid JSON (")
    lst = tmp_path / "m.json"
    lst.write_text('[\n  {"path": "a.wav"},\n  {"path": "b.wav"}\n  {"path": "c.wav"}\n]\n')
    with pytest.raises(ValueError, match=rf"^manifest {re.escape(str(lst))}:4: invalid JSON"):
        read_manifest(lst)


# --- crops and features ---------------------------------------------------------------------------------

def test_crop_length_determinism_and_epochs(tmp_path):
    f = _write(tmp_path / "long.wav", _noise(3.0))
    ds = AudioClipDataset([f], crop_frames=64, seed=3, return_waveform=True)
    item = ds[0]
    assert item["fbank"].shape == (64, 128) and item["fbank"].dtype == torch.float32
    assert item["index"] == 0 and item["path"] == str(f) and "label" not in item
    assert item["wave"].shape == (400 + 63 * 160,)
    torch.testing.assert_close(ds[(0, 0)]["fbank"], item["fbank"], rtol=0, atol=0)  # int key = epoch 0
    torch.testing.assert_close(ds[(5, 0)]["fbank"], ds[(5, 0)]["fbank"], rtol=0, atol=0)
    assert not torch.equal(ds[(1, 0)]["fbank"], item["fbank"])
    ds.set_epoch(1)
    torch.testing.assert_close(ds[0]["fbank"], ds[(1, 0)]["fbank"], rtol=0, atol=0)
    other_seed = AudioClipDataset([f], crop_frames=64, seed=4)
    assert not torch.equal(other_seed[(1, 0)]["fbank"], ds[(1, 0)]["fbank"])
    # the crop is a slice of the file: its features equal those computed directly from that slice
    wave = torch.from_numpy(sf.read(f, dtype="float32")[0])
    off = int(np.random.default_rng([3, 0, 0]).integers(0, wave.numel() - item["wave"].numel() + 1))
    torch.testing.assert_close(item["wave"], wave[off:off + item["wave"].numel()], rtol=0, atol=0)
    torch.testing.assert_close(item["fbank"], waveform_to_features(item["wave"], SR, target_frames=64))
    assert AudioClipDataset([f], crop_seconds=0.5).crop_frames == 48
    with pytest.raises(IndexError):
        ds[1]


def test_short_clip_is_zero_padded(tmp_path):
    f = _write(tmp_path / "short.wav", _noise(0.2))  # 18 frames
    item = AudioClipDataset([f], crop_frames=64, return_waveform=True)[0]
    assert item["fbank"].shape == (64, 128) and item["wave"].shape == (400 + 63 * 160,)
    p = get_preset("audioset")
    pad_value = (0.0 - p.mean) / (2 * p.std)
    torch.testing.assert_close(item["fbank"][18:], torch.full((46, 128), pad_value))
    assert not torch.allclose(item["fbank"][17], torch.full((128,), pad_value))
    assert bool((item["wave"][3200:] == 0).all())
    tiny = _write(tmp_path / "tiny.wav", _noise(0.01))  # shorter than one 25 ms window
    assert AudioClipDataset([tiny], crop_frames=8)[0]["fbank"].shape == (8, 128)


def test_44k_file_resampled_to_16k(tmp_path):
    rng = np.random.default_rng(1)
    freqs, phases = np.geomspace(60.0, 7000.0, 240) * rng.uniform(0.97, 1.03, 240), rng.uniform(0, 2 * np.pi, 240)

    def signal(sr):
        t = np.arange(sr) / sr  # 1 s
        return (0.01 * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]).sum(0)).astype(np.float32)

    f = _write(tmp_path / "hi.wav", signal(44100), 44100, subtype="FLOAT")
    got = AudioClipDataset([f], crop_frames=100)[0]["fbank"]
    ref = waveform_to_features(torch.from_numpy(signal(SR)), SR, target_frames=100)
    assert got.shape == ref.shape == (100, 128)
    err = (got - ref).abs()  # normalised units (raw log-mel / 9.1)
    assert float(err.mean()) < 0.01 and float(err.max()) < 0.1
    torch.testing.assert_close(got[98:], ref[98:], rtol=0, atol=0)  # the padding frames


def test_start_stop_and_labels(tmp_path):
    sig = _noise(2.0)
    f = _write(tmp_path / "s.wav", sig, subtype="FLOAT")
    ds = AudioClipDataset([{"path": str(f), "start": 0.5, "stop": 1.0, "label": 3}], crop_frames=60,
                          return_waveform=True)
    item = ds[0]
    torch.testing.assert_close(item["wave"][:8000], torch.from_numpy(sig[8000:16000]), rtol=0, atol=0)
    assert bool((item["wave"][8000:] == 0).all())
    torch.testing.assert_close(item["fbank"], waveform_to_features(torch.from_numpy(sig[8000:16000]), SR,
                                                                   target_frames=60))
    assert item["label"] == 3
    batch = collate_skip_bad([item, None, AudioClipDataset([{"path": str(f), "label": 5}], crop_frames=60)[0]])
    assert batch["fbank"].shape == (2, 60, 128) and batch["label"].tolist() == [3, 5]
    assert batch["index"].tolist() == [0, 0] and batch["path"] == [str(f), str(f)]
    assert collate_skip_bad([None, None]) is None


# --- bad files --------------------------------------------------------------------------------------------

def test_bad_files_return_none_and_are_logged(tmp_path):
    corrupt, empty, nan, missing = _bad_files(tmp_path / "bad")
    zero = tmp_path / "bad" / "zero.flac"
    zero.write_bytes(b"")
    log = tmp_path / "out" / "bad_files.jsonl"
    ds = AudioClipDataset([corrupt, empty, nan, missing, zero], crop_frames=16, bad_files_path=log)
    assert all(ds[i] is None for i in range(5))
    assert [r["reason"] for r in ds.bad_files.records] == ["decode_error", "empty", "non_finite", "missing", "empty"]
    s = BadFileLog.summary(log)
    assert s["count"] == 5 and s["files"] == 5
    assert s["reasons"] == {"decode_error": 1, "empty": 2, "non_finite": 1, "missing": 1}
    assert s["by_file"][str(nan)] == "non_finite" and "NaN" in s["examples"][2]["error"]
    report = format_bad_file_report(log)
    assert "5 file(s)" in report and "corrupt.wav" in report and "non_finite" in report
    assert format_bad_file_report(tmp_path / "no_log.jsonl") == "bad audio files: none"


def test_dataloader_workers_skip_bad_files(tmp_path):
    write_clips(tmp_path / "good", 10, duration=0.6, seed=7)
    good = sorted((tmp_path / "good").glob("*.wav"))
    entries = [str(p) for p in good] + [str(p) for p in _bad_files(tmp_path / "bad")[:2]] + [str(tmp_path / "x.wav")]
    log = tmp_path / "bad_files.jsonl"
    ds = AudioClipDataset(entries, crop_frames=32, seed=1, bad_files_path=log)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, sampler=EpochSampler(len(ds), seed=2, epoch=1),
                                         num_workers=2, collate_fn=collate_skip_bad)
    batches = [b for b in loader if b is not None]
    paths = [p for b in batches for p in b["path"]]
    assert sorted(paths) == [str(p) for p in good]
    assert sum(b["fbank"].shape[0] for b in batches) == 10 and all(b["fbank"].shape[1:] == (32, 128) for b in batches)
    assert ds.bad_files.records == []  # failures happened in the workers ...
    s = BadFileLog.summary(log)  # ... and reached the log file
    assert s["files"] == 3 and s["count"] == 3
    assert s["reasons"] == {"decode_error": 1, "empty": 1, "missing": 1}
    assert {r["epoch"] for r in s["examples"]} == {1} and len({r["pid"] for r in s["examples"]}) >= 1
    assert all(isinstance(json.loads(line), dict) for line in log.read_text().splitlines())


def test_a_folder_of_only_bad_files_fails_after_every_file_failed_once_with_the_report(tmp_path):
    _bad_files(tmp_path / "bad")
    log = tmp_path / "bad_files.jsonl"
    ds = AudioClipDataset(tmp_path / "bad", crop_frames=16, bad_files_path=log)      # 3 bad files in the folder
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=EpochSampler(len(ds), seed=0),
                                         collate_fn=collate_skip_bad)
    assert [b for b in loader] == [None, None]                      # one pass: each bad file gives None once
    with pytest.raises(UnusableDataError) as err:
        next(iter(loader))                                          # the next epoch does not try them again
    assert BadFileLog.summary(log)["count"] == 3
    msg = str(err.value)
    assert msg.startswith("the data set is unusable: the first 3 different clips tried (of 3) all failed")
    assert msg.endswith(format_bad_file_report(log)) and "corrupt.wav [decode_error]" in msg
    assert "nan.wav [non_finite]" in msg and "empty.wav [empty]" in msg


def test_many_bad_files_stop_after_max_bad_loads_and_one_good_file_keeps_the_data_usable(tmp_path):
    missing = [str(tmp_path / f"gone{i:03d}.wav") for i in range(MAX_BAD_LOADS + 30)]
    ds = AudioClipDataset(missing, crop_frames=16)                      # no log file: the report is in memory
    assert all(ds[i] is None for i in range(MAX_BAD_LOADS - 1))
    assert ds[0] is None and ds[MAX_BAD_LOADS - 1] is None          # a repeated failure does not count again
    with pytest.raises(UnusableDataError, match=rf"first {MAX_BAD_LOADS} different clips tried \(of 80\)") as err:
        ds[MAX_BAD_LOADS + 1]
    assert len(ds.bad_files.records) == MAX_BAD_LOADS + 1 and "log: (in memory)" in str(err.value)
    assert "gone000.wav [missing]" in str(err.value) and f"... and {MAX_BAD_LOADS - 10} more" in str(err.value)
    good = _write(tmp_path / "good.wav", _noise(0.5))
    ds = AudioClipDataset([*_bad_files(tmp_path / "bad"), good], crop_frames=16)
    items = [ds[(epoch, i)] for epoch in range(3) for i in range(5)]    # 12 failed loads, 3 good ones
    assert [it is None for it in items] == [True] * 4 + [False] + [True] * 4 + [False] + [True] * 4 + [False]


@pytest.mark.subprocess
def test_training_on_only_bad_files_with_loader_workers_stops_with_the_report_and_exits(tmp_path):
    """The error is raised in a DataLoader worker; the process must still end (its workers ignore SIGTERM)."""
    _bad_files(tmp_path / "bad")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from aum.data.datasets import AudioClipDataset, UnusableDataError, collate_skip_bad
        from aum.train.config import EngineConfig
        from aum.train.engine import Trainer
        ds = AudioClipDataset({str(tmp_path / "bad")!r}, crop_frames=16, bad_files_path={str(tmp_path / "log.jsonl")!r})
        cfg = EngineConfig(out_dir={str(tmp_path / "run")!r}, max_steps=3, batch_size=2, num_workers=2, device="cpu")
        try:
            Trainer(torch.nn.Linear(128, 1), ds, cfg, lambda m, b: (m(b["fbank"]).mean(), {{}}),
                    collate_fn=collate_skip_bad, dataset_epoch_keys=True).fit()
        except UnusableDataError as e:
            print("UNUSABLE", e)
    """))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "UNUSABLE" in proc.stdout and "all failed to load" in proc.stdout and "nan.wav [non_finite]" in proc.stdout


# --- synthetic default data -----------------------------------------------------------------------------

def test_synth_audio_dataset():
    ds = SynthAudioDataset(4, crop_frames=48, seed=5, return_waveform=True)
    a = ds[(0, 1)]
    assert len(ds) == 4 and a["fbank"].shape == (48, 128) and a["index"] == 1 and a["path"].startswith("synth:")
    assert a["wave"].shape == (48 * 160 + 240,)
    torch.testing.assert_close(ds[1]["fbank"], a["fbank"], rtol=0, atol=0)
    torch.testing.assert_close(SynthAudioDataset(4, 48, seed=5)[(0, 1)]["fbank"], a["fbank"], rtol=0, atol=0)
    assert not torch.equal(ds[(1, 1)]["fbank"], a["fbank"]) and not torch.equal(ds[(0, 2)]["fbank"], a["fbank"])
    # not padded: the last frame holds signal, not the normalised zero value
    p = get_preset("audioset")
    assert not torch.allclose(a["fbank"][-1], torch.full((128,), (0.0 - p.mean) / (2 * p.std)))
    batch = collate_skip_bad([ds[(0, i)] for i in range(3)])
    assert batch["fbank"].shape == (3, 48, 128)
    assert sorted(i for _, i in EpochSampler(6, seed=1)) == list(range(6))
    assert list(EpochSampler(3, shuffle=False, epoch=2)) == [(2, 0), (2, 1), (2, 2)]
