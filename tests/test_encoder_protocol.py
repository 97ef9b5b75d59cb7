"""One embedding path for every encoder: aum.embed, hear_api and eval.probe on a DASS encoder (``dass_tiny``), which
describes itself (no class token; 32-frame columns at its last stage, finer steps and other widths at the earlier
ones) instead of being special-cased by its callers."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_api
from aum import create_model
from aum.audio.synth import noise_burst, tone
from aum.checkpoint import save_checkpoint
from aum.embed import (column_embeddings, column_width, embed_waveform, scene_embedding, time_geometry,
                       window_starts)
from aum.embed.windows import _owned_ranges
from eval import probe
from eval.records import read_records
from hear_api.model import EmbeddingOptions, HearAuM
from hear_api.validate import validate_module


@pytest.fixture(scope="module")
def dass():
    torch.manual_seed(0)
    return create_model("dass_tiny").eval()


def _columns(model, x):
    with torch.no_grad():
        out = model.forward_features(x)
    f, t = out.grid
    return out.tokens.reshape(x.shape[0], f, t, -1).mean(1)


def test_encoders_describe_their_columns(dass):
    assert time_geometry(dass) == (32, 32) and time_geometry(dass, 1) == (4, 4) and time_geometry(dass, 2) == (8, 8)
    assert column_width(dass) == 192 and column_width(dass, combine="concat") == 4 * 192
    assert column_width(dass, 1, "concat") == 32 * 24                    # stage 1: 128 / 4 rows of 24 channels
    official = create_model("tiny", depth=1, patch_stride=(10, 10))      # the official overlapping stride
    assert time_geometry(official) == (16, 10) and column_width(official, combine="concat") == 12 * 192


def test_dass_columns_one_window_and_stitched_windows(dass):
    x = torch.randn(2, 200, 128)
    emb, times = column_embeddings(dass, x, pad_to_window=False)
    assert emb.shape == (2, 7, 192)                                      # ceil(200 / 32) columns, as DASS gives
    torch.testing.assert_close(emb, _columns(dass, x))
    torch.testing.assert_close(times, 167.5 + 320.0 * torch.arange(7, dtype=torch.float64))
    long, t = column_embeddings(dass, x, window_frames=128, hop_frames=64)      # 3 windows of 4 columns
    torch.testing.assert_close(t, times)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 24))                   # the partial last cell made whole
    starts = window_starts(7, 4, 2)
    assert starts == [0, 2, 3]
    for s, (a, e) in zip(starts, _owned_ranges(starts, 4, 7)):
        ref = _columns(dass, padded[:, 32 * s:32 * s + 128])
        torch.testing.assert_close(long[:, a:e], ref[:, a - s:e - s])
    with pytest.raises(ValueError, match="different time geometries"):
        column_embeddings(dass, x, layer=[1, 5])


def test_dass_timestamps_and_scene_vectors(dass):
    wave = torch.rand(2, 24000) * 2 - 1                                  # 1.5 s
    emb, ts = embed_waveform(dass, wave, method="native", pad_to_window=False)
    torch.testing.assert_close(ts, 320.0 * torch.arange(5, dtype=torch.float64))     # DASS's own 320 ms step
    assert emb.shape == (2, 5, 192) and emb.dtype == torch.float32
    emb, ts = embed_waveform(dass, wave, hop_ms=80, pad_to_window=False)           # 4 shifted passes
    torch.testing.assert_close(ts, 80.0 * torch.arange(19, dtype=torch.float64))
    assert emb.shape == (2, 19, 192) and bool(torch.isfinite(emb).all())
    with pytest.raises(ValueError, match="hop_ms = 320"):
        embed_waveform(dass, wave, hop_ms=30)
    # a list of layers in different stages: one pass, each layer as when read alone (same window)
    many = scene_embedding(dass, wave, pooling="mean+max", layer=[1, 2, 5], window_frames=160)
    assert [tuple(m.shape) for m in many] == [(2, 48), (2, 96), (2, 384)]
    for n, m in zip([1, 2, 5], many):
        torch.testing.assert_close(m, scene_embedding(dass, wave, pooling="mean+max", layer=n, window_frames=160))
    long = scene_embedding(dass, torch.rand(3 * 16000) * 2 - 1, window_frames=64)  # 300 frames in 64-frame windows
    assert long.shape == (192,) and bool(torch.isfinite(long).all())
    with pytest.raises(ValueError, match="class token"):
        scene_embedding(dass, wave, pooling="cls+mean")


def test_hear_api_on_dass(dass, tmp_path):
    model = HearAuM(dass, EmbeddingOptions(scene="mean+max", pad_to_window=False, hop_ms=80))
    assert (model.timestamp_embedding_size, model.scene_embedding_size) == (192, 384)
    audio = torch.rand(2, 20000) * 2 - 1                                 # 1.25 s
    emb, ts = hear_api.get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, 16, 192) and ts.shape == (2, 16)
    torch.testing.assert_close(ts[1], 80.0 * torch.arange(16, dtype=torch.float32))
    assert hear_api.get_scene_embeddings(audio, model).shape == (2, 384)
    fine = HearAuM(dass, EmbeddingOptions(layer=2, combine="concat", fine="native", pad_to_window=False))
    emb, ts = hear_api.get_timestamp_embeddings(audio, fine)                 # stage 2: 8-frame (80 ms) columns
    assert fine.timestamp_embedding_size == 16 * 48 and emb.shape == (2, 16, 16 * 48)
    with pytest.raises(ValueError, match="class token"):
        HearAuM(dass, EmbeddingOptions(scene="cls"))
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.5"):
        HearAuM(dass, EmbeddingOptions(layer=6))
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        default = hear_api.load_model(arch="dass_tiny", pad_to_window=False)
    assert default.source == "random:dass_tiny:depth=5:seed=0" and default.scene_embedding_size == 192
    ckpt = save_checkpoint(dass, tmp_path / "dass.safetensors")
    report = validate_module("hear_api", str(ckpt), model_options={"pad_to_window": False, "fine": "interp"})
    assert report["hop_ms"] == 40.0 and report["warnings"] == [] and report["timestamp_embedding_size"] == 192


def test_probe_a_random_dass_on_generated_audio(tmp_path, capsys):
    rng, rows = np.random.default_rng(0), []
    for i in range(12):
        label, make = (("tone", tone), ("noise", noise_burst))[i % 2]
        path = tmp_path / f"{label}{i}.wav"
        sf.write(path, make(rng, 0.4, 16000).astype(np.float32), 16000)
        rows.append({"path": str(path), "labels": [label], "fold": i % 3 + 1})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["esc10", str(manifest), "--random", "dass_tiny", "--frames", "64", "--folds", "3", "--out", str(out),
            "--cache", str(cache), "--c-grid", "1", "--threads", "1"]
    assert probe.main(argv) == 0
    recs = read_records(out)
    assert {r.model for r in recs} == {"dass_tiny"} and {r.fold for r in recs} == {1, 2, 3, "mean"}
    assert recs[0].config["encoder_config"]["dims"] == [24, 48, 96, 192]
    assert probe.main(argv + ["--embedding", "mean+max", "--out", str(tmp_path / "out2")]) == 0
    assert all(read_records(tmp_path / "out2")[0].extra["cache_hit"].values())         # every part is cached
    capsys.readouterr()
    assert probe.main(argv + ["--embedding", "cls"]) == 2
    assert "class token" in capsys.readouterr().err
