"""Checkpoints carry their feature preset: the record round-trips, the pretraining export writes it, hear_api and
eval.probe feed a voxceleb-pretrained encoder voxceleb statistics, foreign files get audioset with one warning,
an explicit preset wins with a warning, and a bad record is refused naming the file."""
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors import torch as st

import hear_api
from aum.checkpoint import (CheckpointError, feature_preset_of, load_checkpoint, read_checkpoint,
                            save_checkpoint)
from aum.embed import scene_embedding
from aum.audio.features import get_preset, preset_record
from aum.models import create_model
from eval import probe
from eval.embeddings import Encoder, get_embeddings
from eval.records import read_records
from pretrain.config import PretrainConfig
from pretrain.run import build_objective, export_encoder

VOX = get_preset("voxceleb")


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("tiny", **{"depth": 2, "target_frames": 64, "num_classes": 0, **kw}).eval()


def _warnings(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.fixture
def vox_export(tmp_path):
    """The encoder that ``python -m pretrain data.preset=voxceleb`` exports (tiny, depth 2, 64-frame crops)."""
    cfg = PretrainConfig()
    cfg.model.depth, cfg.data.crop_frames, cfg.data.preset = 2, 64, "voxceleb"
    cfg.engine.out_dir = str(tmp_path / "run")
    torch.manual_seed(0)
    return export_encoder(build_objective(cfg), tmp_path, cfg), cfg.engine.out_dir


def test_record_round_trips_through_save_and_load(tmp_path):
    path = save_checkpoint(tiny(), tmp_path / "m.safetensors", feature_preset="voxceleb", feature_source="test:x")
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["aum_features"])
    assert stored == {"name": "voxceleb", "sample_rate": 16000, "num_mel_bins": 128, "mean": -3.7614744,
                      "std": 4.2011642, "target_frames": 64, "source": "test:x"}
    assert read_checkpoint(path).features == stored
    model = load_checkpoint(path)
    assert (model.feature_preset.name, model.feature_preset.mean, model.feature_preset.std) == \
        ("voxceleb", VOX.mean, VOX.std)
    assert model.feature_preset.target_frames == 64 and model.feature_preset_source == "test:x"
    assert feature_preset_of(path) == model.feature_preset == feature_preset_of(model)
    again = save_checkpoint(model, tmp_path / "again.safetensors")          # a loaded model keeps its record
    assert read_checkpoint(again).features == stored


def test_save_without_a_preset_records_the_default_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        path = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    assert len(_warnings(caplog, "no feature preset given")) == 1
    assert read_checkpoint(path).features == {**preset_record("audioset", "default: none given when saved", 64)}


def test_pretraining_export_records_its_preset(vox_export):
    path, out_dir = vox_export
    features = read_checkpoint(path).features
    assert features["name"] == "voxceleb" and features["mean"] == VOX.mean and features["std"] == VOX.std
    assert features["source"] == f"pretrain:{out_dir}" and features["target_frames"] == 64


def test_hear_api_feeds_a_voxceleb_encoder_voxceleb_statistics(vox_export):
    path, _ = vox_export
    model = hear_api.load_model(str(path))
    assert model.preset == "voxceleb" and model.describe()["features"] == "voxceleb"
    audio = torch.rand(2, 8000, generator=torch.Generator().manual_seed(3)) * 2 - 1
    got = hear_api.get_scene_embeddings(audio, model)
    encoder = load_checkpoint(path)
    torch.testing.assert_close(got, scene_embedding(encoder, audio, preset="voxceleb"))
    assert not torch.allclose(got, scene_embedding(encoder, audio, preset="audioset"), atol=1e-4)
    torch.testing.assert_close(scene_embedding(encoder, audio), got)           # aum.embed: the model's own preset


def test_explicit_preset_wins_with_a_warning(vox_export, caplog):
    path, _ = vox_export
    with caplog.at_level(logging.WARNING):
        model = hear_api.load_model(str(path), features="audioset")
    assert model.preset == "audioset"
    assert len(_warnings(caplog, "trained with feature preset 'voxceleb'; using the explicitly requested "
                                 "'audioset'")) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert feature_preset_of(path, explicit="voxceleb") == get_preset("voxceleb")   # agreeing: no warning
    assert not _warnings(caplog, "explicitly requested")


def test_foreign_checkpoint_gets_audioset_with_one_warning(tmp_path, caplog):
    enc = tiny(num_classes=1251)                 # a VoxCeleb-sized head: no longer guessed from the class count
    pth = tmp_path / "official.pth"
    torch.save({"module." + k: v for k, v in enc.state_dict().items()}, pth)
    with caplog.at_level(logging.WARNING):
        model = hear_api.load_model(str(pth))
        assert feature_preset_of(pth) == get_preset("audioset")
        assert load_checkpoint(pth).feature_preset == get_preset("audioset")
    assert model.preset == "audioset" and model.encoder.feature_preset_source.startswith("default")
    warned = _warnings(caplog, "records no feature preset")
    assert len(warned) == 1 and "'audioset'" in warned[0].getMessage() and str(pth) in warned[0].getMessage()
    caplog.clear()
    other = tmp_path / "other.pth"
    torch.save(enc.state_dict(), other)
    with caplog.at_level(logging.WARNING):
        assert feature_preset_of(other, explicit="vggsound").name == "vggsound"    # chosen: nothing to warn about
    assert not caplog.records


def test_older_files_name_their_preset_in_user_metadata(tmp_path):
    enc = tiny()
    path = tmp_path / "old.safetensors"
    st.save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path), metadata={
        "format": "pt", "aum_format": "1", "aum_config": json.dumps(enc.config.to_dict()),
        "aum_metadata": json.dumps({"features": "voxceleb"})})
    assert feature_preset_of(path) == VOX and load_checkpoint(path).feature_preset == VOX


@pytest.mark.parametrize("change, message", [
    ({"name": "librispeech"}, "unknown feature preset 'librispeech'"),
    ({"num_mel_bins": 64}, "records num_mel_bins 64"),
    ({"sample_rate": 8000}, "records sample_rate 8000"),
    ({"std": 0}, "expected finite numbers, std > 0"),
    ({"target_frames": "long"}, "records target_frames 'long'"),
])
def test_bad_record_is_refused_naming_the_file(tmp_path, change, message):
    path = save_checkpoint(tiny(), tmp_path / "m.safetensors", feature_preset="voxceleb", feature_source="t")
    sd, meta = st.load_file(str(path)), safe_open(str(path), framework="pt").metadata()
    bad = tmp_path / "bad.safetensors"
    st.save_file(sd, str(bad), metadata={**meta, "aum_features": json.dumps({**json.loads(meta["aum_features"]),
                                                                           **change})})
    for call in (lambda: load_checkpoint(bad), lambda: feature_preset_of(bad)):
        with pytest.raises(CheckpointError, match=message) as err:
            call()
        assert str(bad) in str(err.value)


def test_probe_feeds_a_voxceleb_checkpoint_voxceleb_statistics(vox_export, tmp_path):
    path, _ = vox_export
    rng = np.random.default_rng(0)
    (tmp_path / "audio").mkdir()
    rows = []
    for i in range(9):
        f = 300.0 * (1 + i % 3)
        t = np.arange(5600) / 16000
        sf.write(tmp_path / "audio" / f"c{i}.wav", (0.5 * np.sin(2 * np.pi * f * t)
                                                   + 0.05 * rng.standard_normal(t.size)).astype("float32"), 16000)
        rows.append({"path": f"audio/c{i}.wav", "labels": [str(i % 3)], "fold": i // 3 + 1})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert probe.main(["esc10", str(manifest), "--checkpoint", str(path), "--init", "ssl", "--frames", "32",
                       "--folds", "3", "--out", str(out), "--cache", str(tmp_path / "cache"),
                       "--c-grid", "1"]) == 0
    assert {r.config["preset"] for r in read_records(out)} == {"voxceleb"}
    entries = probe.load_entries(manifest, "esc10")
    encoder = Encoder.from_checkpoint(path)
    cached, hit = get_embeddings(encoder, "esc10", "all", entries, tmp_path / "cache", "voxceleb", 32)
    assert hit                                                  # the probe extracted with voxceleb features
    fresh, _ = get_embeddings(encoder, "esc10", "all", entries, tmp_path / "cache2", "voxceleb", 32)
    np.testing.assert_allclose(cached.mean, fresh.mean, rtol=1e-5, atol=1e-6)
    audioset, _ = get_embeddings(encoder, "esc10", "all", entries, tmp_path / "cache3", "audioset", 32)
    assert not np.allclose(cached.mean, audioset.mean, atol=1e-4)
