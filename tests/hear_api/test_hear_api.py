"""hear_api: the HEAR API (shapes, dtypes, timestamps, options, checkpoints), the strict validator rules,
the task writer, and the real hear-eval-kit runs (validator, embeddings runner, predictions runner) in the
separate HEAR environment (built once under ~/.cache/aum/hear-venv, or $AUM_HEAR_VENV)."""
import csv
import fcntl
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_api
from aum import create_model
from aum.checkpoint import save_checkpoint
from hear_api import setup_env
from hear_api.tasks import check_task, esc10_task, manifest_task, synth_event_task, synth_scene_task, write_task
from hear_api.validate import ValidationError, check_timestamp_output, validate_module

ESC10 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "esc10"
LENGTHS = [0.05, 1.07, 1.98, 4.0, 5.0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny2.safetensors"
    save_checkpoint(create_model("tiny", depth=2), path, metadata={"objective": "mae"})
    return str(path)


@pytest.fixture(scope="module")
def model(ckpt):
    return hear_api.load_model(ckpt)


# --- the API ------------------------------------------------------------------------------------------

def test_default_model_is_announced_as_untrained(monkeypatch):
    monkeypatch.delenv("AUM_HEAR_CHECKPOINT", raising=False)
    monkeypatch.delenv("AUM_HEAR_OPTIONS", raising=False)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED, UNTRAINED"):
        m = hear_api.load_model(depth=1)
    assert not m.trained and m.source.startswith("random:tiny")
    assert m.sample_rate == 16000
    assert type(m.scene_embedding_size) is int and type(m.timestamp_embedding_size) is int
    assert isinstance(m, torch.nn.Module)


@pytest.mark.parametrize("seconds", LENGTHS)
def test_api_outputs_follow_the_rules(model, seconds):
    audio = torch.rand(3, int(seconds * 16000)) * 2 - 1
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape == (3, ts.shape[1], model.timestamp_embedding_size)
    assert ts.shape == (3, emb.shape[1]) and bool(torch.isfinite(emb).all())
    assert check_timestamp_output(emb, ts, 3, seconds, model.timestamp_embedding_size) == []
    torch.testing.assert_close(ts[0], 40.0 * torch.arange(ts.shape[1], dtype=torch.float32))   # ms, 40 ms hop
    scene = hear_api.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (3, model.scene_embedding_size)
    assert bool(torch.isfinite(scene).all())


def test_long_audio_is_windowed_with_seamless_timestamps(model):
    audio = torch.rand(1, 16000 * 45 + 123) * 2 - 1          # 45 s: several 1024-frame windows
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)
    assert check_timestamp_output(emb, ts, 1, audio.shape[1] / 16000, 192) == []
    assert ts.shape[1] == 45000 // 40 + 1 and float(ts[0, -1]) == 45000.0
    assert bool(torch.isfinite(emb).all())


def test_batching_does_not_mix_clips(model):
    audio = torch.rand(3, 24000) * 2 - 1
    emb, _ = hear_api.get_timestamp_embeddings(audio, model)
    one, _ = hear_api.get_timestamp_embeddings(audio[1:2], model)
    torch.testing.assert_close(emb[1:2], one, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hear_api.get_scene_embeddings(audio, model)[2:],
                               hear_api.get_scene_embeddings(audio[2:], model), atol=1e-5, rtol=1e-4)


def test_silence_and_full_scale_noise_are_finite(model):
    audio = torch.stack([torch.zeros(20000), torch.ones(20000), torch.rand(20000) * 2 - 1])
    emb, _ = hear_api.get_timestamp_embeddings(audio, model)
    assert bool(torch.isfinite(emb).all())
    assert bool(torch.isfinite(hear_api.get_scene_embeddings(audio, model)).all())


@pytest.mark.parametrize("fn", [hear_api.get_timestamp_embeddings, hear_api.get_scene_embeddings])
@pytest.mark.parametrize("audio,message", [
    (np.full((2, 4000), 1000, np.int16), r"integer dtype torch.int16.*divide by 32768"),
    (torch.full((1, 4000), 3, dtype=torch.int32), r"integer dtype torch.int32"),
    (torch.ones(1, 4000, dtype=torch.bool), r"boolean dtype"),
    (torch.zeros(2, 0), r"zero-length audio \(shape \(2, 0\)\)"),
    (torch.zeros(50, 1), r"\(50, 1\) is 50 sounds of 1 sample each.*audio\.T"),
])
def test_bad_audio_is_rejected_with_a_clear_message(model, fn, audio, message):
    with pytest.raises(ValueError, match=message):
        fn(audio, model)


@pytest.mark.parametrize("fn", [hear_api.get_timestamp_embeddings, hear_api.get_scene_embeddings])
def test_nan_message_counts_the_sounds_own_samples(model, fn):
    audio = torch.zeros(3, 8000)
    audio[1, :5] = float("nan")
    audio[2, 7] = float("inf")
    with pytest.raises(ValueError, match=r"^audio: sound 1 has 5 non-finite \(NaN/Inf\) of its 8000 samples "
                                         r"\(1 more sound\(s\) have some\)$"):
        fn(audio, model)


def test_float64_audio_is_accepted_unscaled(model):
    audio = torch.rand(2, 8000, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(hear_api.get_scene_embeddings(audio, model),
                               hear_api.get_scene_embeddings(audio.float(), model))
    assert hear_api.get_scene_embeddings(torch.zeros(0, 8000), model).shape == (0, model.scene_embedding_size)


@pytest.mark.parametrize("options,ts_size,scene_size,hop", [
    ({"combine": "concat"}, 8 * 192, 8 * 192, 40.0),
    ({"scene": "cls+mean", "layer": 1}, 192, 384, 40.0),
    ({"scene": "mean+max", "combine": "concat"}, 8 * 192, 2 * 8 * 192, 40.0),
    ({"scene": "cls", "fine": "interp", "hop_ms": 20}, 192, 192, 20.0),
    ({"fine": "native", "pad_to_window": False}, 192, 192, 160.0),
])
def test_model_options(ckpt, options, ts_size, scene_size, hop):
    m = hear_api.load_model(ckpt, **options)
    assert (m.timestamp_embedding_size, m.scene_embedding_size) == (ts_size, scene_size)
    audio = torch.rand(2, 32000) * 2 - 1
    emb, ts = hear_api.get_timestamp_embeddings(audio, m)
    assert emb.shape[-1] == ts_size and hear_api.get_scene_embeddings(audio, m).shape == (2, scene_size)
    assert float(ts[0, 1] - ts[0, 0]) == hop


def test_options_are_checked_and_come_from_the_environment(ckpt, monkeypatch):
    with pytest.raises(TypeError, match="unknown model option"):
        hear_api.load_model(ckpt, hop=40)
    with pytest.raises(ValueError, match="combine"):
        hear_api.load_model(ckpt, combine="sum")
    with pytest.raises(ValueError, match="layer"):
        hear_api.load_model(ckpt, layer=3)
    with pytest.raises(ValueError, match="pooling must be one or more"):
        hear_api.load_model(ckpt, scene="median")
    monkeypatch.setenv("AUM_HEAR_OPTIONS", json.dumps({"combine": "concat", "fine": "native"}))
    m = hear_api.load_model(ckpt, fine="interp")
    assert m.options.combine == "concat" and m.options.fine == "interp"


def test_loads_every_checkpoint_kind(tmp_path, ckpt):
    """Ours, the official plain state_dict (.pth, 'module.' prefix), the HF folder, a headless encoder."""
    torch.manual_seed(1)
    enc = create_model("tiny", depth=2, num_classes=5)
    audio = torch.rand(1, 20000) * 2 - 1
    save_checkpoint(enc, tmp_path / "ours.safetensors")
    torch.save({"module." + k: v for k, v in enc.state_dict().items()}, tmp_path / "official.pth")
    hf = tmp_path / "hf"
    hf.mkdir()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, hf / "model.safetensors")
    (hf / "config.json").write_text(json.dumps({"embed_dim": 192, "depth": 2, "bimamba_type": "v1",
                                                "spectrogram_size": [128, 1024], "num_classes": 5}))
    ref = hear_api.get_scene_embeddings(audio, hear_api.load_model(str(tmp_path / "ours.safetensors")))
    for path in (tmp_path / "official.pth", hf):
        m = hear_api.load_model(str(path))
        assert m.trained
        torch.testing.assert_close(hear_api.get_scene_embeddings(audio, m), ref)
    headless = hear_api.load_model(ckpt)                     # num_classes 0, an SSL export
    assert headless.encoder.config.num_classes == 0
    assert hear_api.get_scene_embeddings(audio, headless).shape == (1, 192)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("AUM_HEAR_CHECKPOINT", str(tmp_path / "ours.safetensors"))
    try:
        torch.testing.assert_close(hear_api.get_scene_embeddings(audio, hear_api.load_model()), ref)
    finally:
        monkeypatch.undo()


def test_model_follows_its_device(model):
    audio = torch.rand(1, 8000) * 2 - 1
    model.to("cpu")
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)
    assert emb.device == model.device == torch.device("cpu") and ts.device == emb.device


# --- the strict validator rules ---------------------------------------------------------------------

def test_strict_validator_passes(ckpt):
    report = validate_module("hear_api", ckpt, extra_lengths=LENGTHS, model_options={"pad_to_window": False})
    assert report["hop_ms"] == 40.0 and report["warnings"] == []


def _fake_module(timestamps_fn, name):
    mod = types.ModuleType(name)

    class M(torch.nn.Module):
        sample_rate, scene_embedding_size, timestamp_embedding_size = 16000, 4, 4

    mod.load_model = lambda model_file_path="": M()

    def ts_emb(audio, model):
        t = timestamps_fn(audio.shape[1] / 16.0)
        ts = torch.as_tensor(t, dtype=torch.float32)[None].expand(audio.shape[0], -1)
        return torch.zeros(audio.shape[0], ts.shape[1], 4), ts
    mod.get_timestamp_embeddings = ts_emb
    mod.get_scene_embeddings = lambda audio, model: torch.zeros(audio.shape[0], 4)
    sys.modules[name] = mod
    return name


@pytest.mark.parametrize("timestamps_fn,message", [
    (lambda ms: np.arange(0, ms / 1000.0, 0.04), "before the end"),     # seconds, not ms
    (lambda ms: np.arange(0, ms + 40, 40.0), "past the end"),
    (lambda ms: np.arange(100, ms, 40.0), "from the start"),
    (lambda ms: np.arange(0, ms - 200, 40.0), r"hop \(40.0 ms\) before the end"),
    (lambda ms: np.concatenate([np.arange(0, ms / 2, 40.0), np.arange(ms / 2 + 5, ms, 40.0)]), "not regular"),
])
def test_strict_validator_catches_broken_timestamps(timestamps_fn, message):
    name = _fake_module(timestamps_fn, f"_fake_hear_{abs(hash(message))}")
    try:
        with pytest.raises(ValidationError, match=message):
            validate_module(name)
    finally:
        sys.modules.pop(name, None)


def test_strict_validator_requires_an_optional_path():
    name = _fake_module(lambda ms: np.arange(0, ms, 40.0), "_fake_hear_required")
    sys.modules[name].load_model = lambda model_file_path: None
    try:
        with pytest.raises(ValidationError, match="optional"):
            validate_module(name)
    finally:
        sys.modules.pop(name, None)


# --- task folders ---------------------------------------------------------------------------------

def test_write_task_scene_and_checks(tmp_path):
    clips = [{"audio": np.random.default_rng(i).uniform(-0.5, 0.5, 12000 + 100 * i).astype(np.float32),
              "sample_rate": 16000, "split": f"fold{i % 3:02d}", "labels": ["b" if i % 2 else "a"],
              "name": f"c{i}.wav"} for i in range(9)]
    root = write_task(tmp_path, "toy", clips, split_mode="presplit_kfold", sample_duration=1.0,
                      sample_rates=(16000, 22050))
    meta = check_task(root)
    assert meta["splits"] == ["fold00", "fold01", "fold02"] and meta["evaluation"] == ["top1_acc"]
    assert json.loads((root / "fold01.json").read_text()) == {"c1.wav": ["b"], "c4.wav": ["a"], "c7.wav": ["b"]}
    assert (root / "labelvocabulary.csv").read_text().splitlines() == ["idx,label", "0,a", "1,b"]
    assert sf.info(str(root / "22050" / "fold00" / "c0.wav")).frames == 22050
    assert sf.info(str(root / "16000" / "fold00" / "c0.wav")).subtype == "PCM_16"
    with pytest.raises(FileExistsError):
        write_task(tmp_path, "toy", clips, split_mode="presplit_kfold")
    with pytest.raises(ValueError, match="exactly one"):
        write_task(tmp_path, "bad", [{**clips[0], "labels": ["a", "b"]}] + clips[1:], split_mode="presplit_kfold")
    with pytest.raises(ValueError, match="train, valid and test"):
        write_task(tmp_path, "bad2", clips)


def test_synth_event_task_has_events_in_ms_inside_the_clips(tmp_path):
    root = synth_event_task(tmp_path, clips=10, duration=3.0, seed=3)
    meta = check_task(root)
    assert meta["embedding_type"] == "event" and meta["prediction_type"] == "multilabel"
    assert meta["evaluation"][0] == "event_onset_200ms_fms" and meta["split_mode"] == "trainvaltest"
    events = [e for s in ("train", "valid", "test") for evs in json.loads((root / f"{s}.json").read_text()).values()
              for e in evs]
    assert events and all(0 <= e["start"] < e["end"] <= 3000.0 for e in events)
    assert all(e["end"] - e["start"] >= 200 for e in events)                # ms, not seconds
    again = synth_event_task(tmp_path / "again", clips=10, duration=3.0, seed=3)
    assert (again / "test.json").read_text() == (root / "test.json").read_text()


def test_manifest_task_from_a_csv(tmp_path):
    from aum.audio.synth import write_clips
    rows = write_clips(tmp_path / "audio", 6, duration=1.0, labelled=True)
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "events"])
        for i, r in enumerate(rows):
            w.writerow([f"audio/{r['filename']}", r["label"], ["train", "train", "valid", "valid", "test", "test"][i],
                        r["events"]])
    scene = manifest_task(tmp_path / "m.csv", tmp_path / "tasks", "mscene", sample_duration=1.0)
    assert check_task(scene)["split_mode"] == "trainvaltest"
    event = manifest_task(tmp_path / "m.csv", tmp_path / "tasks", "mevent", event=True)
    test = json.loads((event / "test.json").read_text())
    assert all(isinstance(e["start"], float) and e["end"] <= 1000.0 for evs in test.values() for e in evs)


@pytest.mark.real_audio
@pytest.mark.skipif(not (ESC10 / "meta.csv").is_file(), reason=f"ESC-10 pack not found at {ESC10}")
def test_esc10_task_folder(tmp_path):
    root = esc10_task(ESC10, tmp_path, per_class_per_fold=1)
    meta = check_task(root)
    assert meta["splits"] == [f"fold{i:02d}" for i in range(5)] and meta["clip_count"] == 50
    assert meta["sample_duration"] == 5.0 and meta["split_mode"] == "presplit_kfold"
    vocab = (root / "labelvocabulary.csv").read_text().splitlines()
    assert vocab[1] == "0,dog" and vocab[-1] == "9,chainsaw"
    fold = json.loads((root / "fold02.json").read_text())
    assert len(fold) == 10 and all(name.startswith("3-") for name in fold)    # ESC fold 3 -> fold02


# --- the real hear-eval-kit ---------------------------------------------------------------------------

def _pypi_reachable(tmp: Path) -> tuple[bool, str]:
    res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp),
                          setup_env.HEARVALIDATOR], capture_output=True, text=True, timeout=300)
    return res.returncode == 0, (res.stderr or res.stdout)[-500:]


@pytest.fixture(scope="session")
def hear_venv(tmp_path_factory):
    venv = Path(os.environ.get("AUM_HEAR_VENV") or Path.home() / ".cache" / "aum" / "hear-venv").expanduser()
    if setup_env.is_ready(venv):
        return venv
    ok, why = _pypi_reachable(tmp_path_factory.mktemp("pipprobe"))
    if not ok:
        pytest.skip(f"cannot build the HEAR environment: PyPI not reachable ({why.strip()})")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".hear-venv.lock", "w") as lock:         # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        setup_env.setup(venv)
    return venv


def _check_records(records, expected_tasks):
    assert sorted(r["benchmark"] for r in records) == sorted(f"hear-{t}" for t in expected_tasks)
    for r in records:
        assert r["mode"] == "hear" and math.isfinite(r["value"]) and 0.0 <= r["value"] <= 1.0
        assert r["code_version"] and set(r["extra"]["stage_seconds"]) >= {"embeddings", "predictions"}
        rec = json.loads(Path(r["record_path"]).read_text())
        assert rec["value"] == r["value"] and rec["config"]["grid"] == "faster"


@pytest.mark.hear_env
def test_hear_eval_kit_runs_on_a_scene_and_an_event_task(hear_venv, ckpt, tmp_path):
    from hear_api.evaluate import evaluate
    tasks = tmp_path / "tasks"
    synth_scene_task(tasks, per_class=3, folds=3, duration=1.0, classes=["tone", "noise_burst", "click_train"])
    synth_event_task(tasks, clips=15, duration=2.0, classes=["tone", "noise_burst", "click_train"])
    records = evaluate(ckpt, tasks, tmp_path / "out", grid="faster", grid_points=1, venv=hear_venv, threads=1,
                       model_options={"pad_to_window": False}, timeout=900)
    _check_records(records, ["synth_scene", "synth_events"])
    by = {r["benchmark"]: r for r in records}
    assert by["hear-synth_scene"]["fold"] == "mean" and len(by["hear-synth_scene"]["extra"]["folds"]) == 3
    assert by["hear-synth_scene"]["init"] == "ssl"                   # the checkpoint's metadata says "mae"
    assert by["hear-synth_events"]["fold"] is None and by["hear-synth_events"]["metric"] == "event_onset_200ms_fms"
    assert set(by["hear-synth_scene"]["extra"]["stage_seconds"]) >= {"validate", "validate_strict"}
    emb = Path(by["hear-synth_events"]["extra"]["embeddings_dir"])
    ts = json.loads(next((emb / "test").glob("*.timestamps.json")).read_text())
    assert ts[:3] == [0.0, 40.0, 80.0] and ts[-1] <= 2000.0                  # heareval saw ms timestamps
    assert not list((tmp_path / "out").glob("hear-pred-*"))                 # scratch (Lightning logs) removed


@pytest.mark.hear_env
@pytest.mark.real_audio
@pytest.mark.skipif(not (ESC10 / "meta.csv").is_file(), reason=f"ESC-10 pack not found at {ESC10}")
def test_esc10_end_to_end(hear_venv, ckpt, tmp_path):
    from hear_api.evaluate import evaluate
    esc10_task(ESC10, tmp_path / "tasks")
    records = evaluate(ckpt, tmp_path / "tasks", tmp_path / "out", grid="faster", grid_points=1, venv=hear_venv,
                       threads=1, skip_validate=True, model_options={"pad_to_window": False, "scene": "mean+max"},
                       timeout=1200, model_name="tiny-d2-mae")
    _check_records(records, ["esc10"])
    (rec,) = records
    assert rec["metric"] == "top1_acc" and rec["fold"] == "mean" and len(rec["extra"]["folds"]) == 5
    assert rec["model"] == "tiny-d2-mae" and rec["config"]["model_options"]["scene"] == "mean+max"
    assert rec["extra"]["std"] is not None and rec["extra"]["n_clips"] == 400
    per_fold = sorted((tmp_path / "out" / "records").glob("hear-esc10_*_fold[1-5].json"))
    assert [json.loads(p.read_text())["value"] for p in per_fold] == [rec["extra"]["folds"][f"fold0{k}"]
                                                                      for k in range(5)]


def test_fold_records_make_hear_results_tabulate(tmp_path):
    """The k-fold mean record alone is left out by eval.results; its per-fold records give the hear table."""
    from eval.records import ResultRecord, write_record
    from eval.results import write_tables
    from hear_api.evaluate import fold_records
    folds = {"fold00": 0.8, "fold01": 0.9, "fold02": 0.7, "fold03": 0.85, "fold04": 0.75}
    mean = ResultRecord(benchmark="hear-esc10", mode="hear", init="ssl", model="tiny-mae", metric="top1_acc",
                        value=0.8, seed=0, fold="mean", extra={"std": 0.07, "folds": folds})
    per_fold = fold_records(mean)
    assert [(r.fold, r.value) for r in per_fold] == [(k + 1, v) for k, v in enumerate(folds.values())]
    assert fold_records(per_fold[0]) == [] and {r.filename() for r in per_fold}.isdisjoint({mean.filename()})
    for r in [mean, *per_fold]:
        write_record(r, tmp_path)
    written = write_tables(tmp_path)
    std = float(np.std(list(folds.values()), ddof=1))
    assert f"80.00 ± {100 * std:.2f} (n=5)" in written["hear"]["markdown"]
