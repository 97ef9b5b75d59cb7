"""Tests for aum.checkpoint: our safetensors format, atomic saves, safe reading, checked loading."""

import hashlib
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors import torch as st

from aum.checkpoint import (CheckpointError, CheckpointMismatchError, content_hash, load_checkpoint, read_checkpoint,
                            save_checkpoint)
from aum.checkpoint.official_aum import infer_config
from aum.checkpoint.state_dict import load_state_dict_checked
from aum.models import create_model

MIXERS = ("none", "v1", "v2")
CLS = ("head", "middle", "tail", "none")


def tiny(**kw):
    kw = {"depth": 2, "target_frames": 64, "num_classes": 5, **kw}
    torch.manual_seed(0)
    return create_model("tiny", **kw).eval()


def fbank(frames=64, batch=2):
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("cls", CLS)
def test_round_trip_bit_identical(tmp_path, mixer, cls):
    model = tiny(mixer=mixer, cls_position=cls)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)                                  # config from the file alone
    assert loaded.config.to_dict() == model.config.to_dict()
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = fbank()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.forward_features(x).tokens, loaded.forward_features(x).tokens)


def test_file_metadata(tmp_path):
    model = tiny(mixer="v2")
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"epoch": 3, "tags": ["a", "b"]})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["aum_config"]) == model.config.to_dict()
    assert meta["aum_format"] == "1"
    raw = read_checkpoint(path)
    assert raw.kind == "aum" and raw.metadata == {"epoch": 3, "tags": ["a", "b"]}
    assert raw.config == model.config.to_dict()


def test_overrides_win_over_stored_config(tmp_path):
    path = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    model = load_checkpoint(path, num_classes=7, target_frames=128)
    assert model.config.num_classes == 7 and model.pos_embed.grid == (8, 8)
    assert model(fbank(128)).shape == (2, 7)


def test_tied_and_noncontiguous_tensors_save(tmp_path):
    model = tiny()
    model.layers[1].norm.weight = model.layers[0].norm.weight                # shared parameter
    with torch.no_grad():
        model.layers[0].norm.weight.uniform_()
    model.head.weight = torch.nn.Parameter(torch.randn(192, 5).t())           # non-contiguous
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"

    def broken(tensors, metadata=None):     # fails while the temporary file is open
        assert any(n.startswith(".m.safetensors.tmp") for n in os.listdir(tmp_path))
        raise OSError("disk full")

    monkeypatch.setattr(st, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny(), target)
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    target = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    before = target.read_bytes()
    monkeypatch.setattr(st, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(tiny(mixer="v2"), target)
    assert os.listdir(tmp_path) == ["m.safetensors"] and target.read_bytes() == before


def test_save_refuses_config_that_does_not_rebuild_the_model(tmp_path):
    model = tiny()
    model.head = torch.nn.Linear(192, 9)                                     # config still says 5 classes
    with pytest.raises(CheckpointMismatchError, match="no longer describes"):
        save_checkpoint(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_unserialisable_metadata_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tiny(), tmp_path / "m.safetensors", metadata={"x": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate_header", "truncate_data", "garbage", "empty"])
def test_corrupt_safetensors_names_file(tmp_path, damage):
    path = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    bad = tmp_path / f"bad_{damage}.safetensors"
    bad.write_bytes({"truncate_header": data[:20], "truncate_data": data[: len(data) // 2],
                     "garbage": b"this is not a checkpoint at all", "empty": b""}[damage])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_truncated_pickle_names_file(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(tiny().state_dict(), path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_checkpoint("/nonexistent/nowhere.pth")


_CALLS = []


class _Payload:
    """Unpickling this would run code (append to _CALLS): weights_only must refuse it."""

    def __reduce__(self):
        return (_CALLS.append, ("executed",))


class _Plain:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("obj", [_Payload, _Plain])
def test_pickle_with_objects_refused(tmp_path, obj):
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "extra": obj()}, path)
    _CALLS.clear()
    with pytest.raises(CheckpointError, match="refused to unpickle") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and _CALLS == []


def test_non_state_dict_pickle(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a state_dict") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_checked_load_missing_key_named():
    model, sd = tiny(), tiny(mixer="v1").state_dict()
    del sd["layers.1.mixer.dt_proj.bias"]
    before = model.layers[0].mixer.in_proj.weight.clone()
    sd["layers.0.mixer.in_proj.weight"] = sd["layers.0.mixer.in_proj.weight"] + 1
    with pytest.raises(CheckpointMismatchError, match=r"layers\.1\.mixer\.dt_proj\.bias"):
        load_state_dict_checked(model, sd)
    assert torch.equal(model.layers[0].mixer.in_proj.weight, before)        # nothing loaded


def test_checked_load_unexpected_key_named():
    model, sd = tiny(), tiny().state_dict()
    sd["layers.0.mixer.bogus"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: \['layers\.0\.mixer\.bogus'\]"):
        load_state_dict_checked(model, sd)
    report = load_state_dict_checked(model, sd, allow_unexpected=["layers.*.bogus"])
    assert report.unexpected == ["layers.0.mixer.bogus"]


def test_checked_load_non_strict_reports():
    model, sd = tiny(), {k: v + 1 for k, v in tiny().state_dict().items()}
    del sd["norm_f.weight"]
    sd["extra.weight"] = torch.zeros(1)
    report = load_state_dict_checked(model, sd, strict=False)
    assert report.missing == ["norm_f.weight"] and report.unexpected == ["extra.weight"]
    assert "norm_f.weight" not in report.loaded and len(report.loaded) == len(sd) - 1
    assert torch.equal(model.cls_token, sd["cls_token"])
    assert "norm_f.weight" in str(report)


def test_checked_load_allow_missing_pattern():
    model, sd = tiny(), tiny().state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    report = load_state_dict_checked(model, sd, allow_missing=["head.*"])
    assert report.missing == ["head.weight", "head.bias"]


def test_checked_load_shape_mismatch_names_both_shapes():
    model, sd = tiny(), tiny(num_classes=9).state_dict()
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_checked(model, sd, strict=False)
    assert "head.weight: checkpoint (9, 192) vs model (5, 192)" in str(err.value)


@pytest.mark.parametrize("mixer", MIXERS)
def test_infer_config(mixer):
    model = create_model("tiny", depth=3, mixer=mixer, num_classes=11, target_frames=128, d_state=8)
    cfg = infer_config(model.state_dict())
    assert cfg == {"embed_dim": 192, "depth": 3, "mixer": mixer, "d_state": 8, "d_conv": 4, "expand": 2,
                   "num_classes": 11, "cls_position": "middle", "patch_size": [16, 16], "target_frames": 128}


def test_infer_config_headless_no_cls_and_overrides():
    sd = create_model("tiny", depth=2, cls_position="none", num_classes=0).state_dict()
    cfg = infer_config(sd)
    assert cfg["cls_position"] == "none" and cfg["num_classes"] == 0 and cfg["target_frames"] == 1024
    sd = create_model("tiny", depth=2, cls_position="head").state_dict()
    assert infer_config(sd)["cls_position"] == "middle"                    # official default
    assert infer_config(sd, cls_position="head")["cls_position"] == "head"


def test_content_hash(tmp_path):
    path = save_checkpoint(tiny(), tmp_path / "m.safetensors")
    assert content_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    other = save_checkpoint(tiny(mixer="v2"), tmp_path / "n.safetensors")
    assert content_hash(other) != content_hash(path)
    assert len(content_hash(tmp_path)) == 64
