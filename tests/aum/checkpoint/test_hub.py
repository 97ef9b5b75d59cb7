"""aum.checkpoint.hub without the network: a Hugging Face Hub cache laid out by hand (``models--org--repo/
snapshots/<rev>/file`` + ``refs/main``) read in offline mode, ``file://`` URLs downloaded into the aum cache with
their sha256 checked, the one clear error when a file cannot be had, and loaded models equal to their files."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aum
from aum.checkpoint import (CheckpointError, cached, check_reference, feature_preset_of, load_checkpoint,
                            read_checkpoint, resolve, save_checkpoint)
from aum.checkpoint.hub import cache_root, parse_hf, url_target
from aum.checkpoint.pretrained import PRETRAINED, Pretrained
from aum.models import create_model

REV = "0123456789abcdef0123456789abcdef01234567"
REPO = Path(__file__).resolve().parents[3]


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("tiny", **{"depth": 2, "num_classes": 5, "target_frames": 64, **kw}).eval()


def put_in_hub(cache: Path, repo: str, files: dict, revision: str = REV, ref: str | None = "main") -> Path:
    """Lay out a Hub cache entry by hand: ``files`` (name -> bytes) in ``snapshots/<revision>/``; ``ref``
    (a branch) written in ``refs/`` pointing at it. Returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    if ref:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(revision)
    return snap


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """An empty Hub cache and aum cache in tmp_path, offline; returns ``(hub cache, aum cache)``."""
    import huggingface_hub.constants
    hub, own = tmp_path / "hf", tmp_path / "aum"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AUM_CACHE", str(own))
    return hub, own


def register(monkeypatch, **fields) -> Pretrained:
    entry = Pretrained(**{"family": "aum", "preset": "tiny", "num_classes": 5, "description": "test entry",
                          **fields})
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    return entry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hf_reference_resolves_and_loads_from_a_hand_built_cache(caches, tmp_path):
    hub, _ = caches
    save_checkpoint(tiny(), tmp_path / "ours.safetensors", feature_preset="speechcommands")
    data = (tmp_path / "ours.safetensors").read_bytes()
    snap = put_in_hub(hub, "org/tiny", {"model.safetensors": data})
    for ref in ("hf://org/tiny", "hf://org/tiny/model.safetensors", f"hf://org/tiny@{REV}",
                f"hf://org/tiny@{REV}/model.safetensors"):
        assert resolve(ref) == snap / "model.safetensors", ref
    assert cached("hf://org/tiny") == snap / "model.safetensors"
    model = load_checkpoint("hf://org/tiny")
    want = load_file(str(snap / "model.safetensors"))
    assert sorted(model.state_dict()) == sorted(want)
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert model.feature_preset.name == "speechcommands"


def test_default_file_falls_back_to_pytorch_model_bin(caches, tmp_path):
    hub, _ = caches
    sd = tiny(mixer="v2").state_dict()                      # the official AuM layout: our names and shapes
    torch.save(sd, tmp_path / "w.bin")
    snap = put_in_hub(hub, "org/bin-only", {"pytorch_model.bin": (tmp_path / "w.bin").read_bytes()})
    assert resolve("hf://org/bin-only") == snap / "pytorch_model.bin"
    raw = read_checkpoint("hf://org/bin-only", hints={"cls_position": "middle"})
    assert raw.kind == "official" and all(torch.equal(raw.state_dict[k], sd[k]) for k in sd)


def test_registry_entry_on_the_hub(caches, tmp_path, monkeypatch):
    """An entry pointing at a hand-built cache: loaded by name (also through aum.create_model), its feature
    preset taken from the entry because the official file records none, its sha256 checked."""
    hub, _ = caches
    sd = tiny(mixer="v2").state_dict()
    torch.save(sd, tmp_path / "official.pth")
    data = (tmp_path / "official.pth").read_bytes()
    snap = put_in_hub(hub, "org/official", {"official.pth": data})
    entry = register(monkeypatch, name="test_official", hub="org/official", filename="official.pth",
                     sha256=sha(data), features="voxceleb", arch=(("mixer", "v2"),))
    assert resolve(entry.name) == snap / "official.pth"
    model = load_checkpoint(entry.name, cls_position="middle")
    assert model.feature_preset.name == "voxceleb" and model.feature_preset_source == "registry: test_official"
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert feature_preset_of(entry.name).name == "voxceleb"
    same = aum.create_model(entry.name, pretrained=True, cls_position="middle")
    assert all(torch.equal(v, sd[k]) for k, v in same.state_dict().items())
    fresh = aum.create_model(entry.name)                     # the architecture alone, random weights
    assert (fresh.config.mixer, fresh.config.num_classes) == ("v2", 5)
    assert not torch.equal(fresh.state_dict()["head.weight"], sd["head.weight"])

    register(monkeypatch, name="test_bad_sum", hub="org/official", filename="official.pth", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256") as err:
        resolve("test_bad_sum")
    assert str(snap / "official.pth") in str(err.value) and "test_bad_sum" in str(err.value)


def test_offline_without_the_file_is_one_clear_error(caches, monkeypatch):
    hub, own = caches
    register(monkeypatch, name="test_missing", hub="org/absent", filename="weights.pth")
    with pytest.raises(CheckpointError) as err:
        resolve("test_missing")
    msg = str(err.value)
    for part in ("'test_missing'", "weights.pth", "org/absent", "HF_HUB_OFFLINE", "hf download org/absent",
                 str(hub), "pass the path"):
        assert part in msg, (part, msg)
    entry = register(monkeypatch, name="test_missing_url", url="https://example.invalid/w.pth", filename="w.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(entry.name)
    target = own / "pretrained" / "test_missing_url" / "w.pth"
    assert "'test_missing_url'" in str(err.value) and str(target) in str(err.value)
    assert "HF_HUB_OFFLINE" in str(err.value)
    assert cached("test_missing") is None and cached(entry.name) is None


def test_file_url_download_into_the_cache_with_its_sha256(caches, tmp_path, monkeypatch):
    _, own = caches
    monkeypatch.delenv("HF_HUB_OFFLINE")
    save_checkpoint(tiny(), tmp_path / "release.safetensors", feature_preset="vggsound")
    data = (tmp_path / "release.safetensors").read_bytes()
    url = (tmp_path / "release.safetensors").as_uri()
    entry = register(monkeypatch, name="test_url", url=url, filename="release.safetensors", sha256=sha(data))
    target = resolve(entry.name)
    assert target == own / "pretrained" / "test_url" / "release.safetensors" == url_target(url, entry)
    assert target.read_bytes() == data and sorted(p.name for p in target.parent.iterdir()) == [target.name]
    (tmp_path / "release.safetensors").unlink()              # cached: no second download
    model = load_checkpoint(entry.name)
    want = load_file(str(target))
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())

    (tmp_path / "other.safetensors").write_bytes(data)
    bad = register(monkeypatch, name="test_url_bad", url=(tmp_path / "other.safetensors").as_uri(),
                   filename="other.safetensors", sha256=sha(data + b"x"))
    with pytest.raises(CheckpointError, match="sha256") as err:
        resolve(bad.name)
    folder = own / "pretrained" / "test_url_bad"
    assert str(folder / "other.safetensors") in str(err.value) and "test_url_bad" in str(err.value)
    assert not folder.exists() or list(folder.iterdir()) == []          # nothing half-downloaded is kept

    (tmp_path / "page.html").write_text("<html>Google Drive can't scan this file for viruses</html>")
    page = register(monkeypatch, name="test_url_page", url=(tmp_path / "page.html").as_uri(), filename="p.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint") as err:
        resolve(page.name)
    assert list((own / "pretrained" / "test_url_page").iterdir()) == []

    (tmp_path / "plain.safetensors").write_bytes(data)       # a URL that is not registered
    plain = (tmp_path / "plain.safetensors").as_uri()
    got = resolve(plain)
    assert got.parent.parent == own / "downloads" and got.name == "plain.safetensors" and got.read_bytes() == data
    assert cache_root() == own


def test_check_reference_never_downloads(caches, tmp_path, monkeypatch):
    register(monkeypatch, name="test_never", url="https://example.invalid/x.pth", filename="x.pth")
    assert check_reference("test_never") == "name"
    assert check_reference("hf://org/repo") == "hf" and check_reference("https://example.invalid/a.pth") == "url"
    (tmp_path / "f.pth").write_bytes(b"\x80")
    assert check_reference(str(tmp_path / "f.pth")) == "path"
    assert not (caches[1] / "pretrained").exists()
    with pytest.raises(FileNotFoundError, match="aum-models"):
        check_reference("vim_small_imagnet")
    for bad in ("hf://org", "hf://org/repo@", "hf://bad name/x"):
        with pytest.raises(ValueError, match="hf://org/repo"):
            check_reference(bad)
    assert parse_hf("hf://a/b@main/sub/w.bin") == ("a/b", "main", "sub/w.bin")
    with pytest.raises(FileNotFoundError, match="registered name"):
        load_checkpoint("no_such_model")


@pytest.mark.subprocess
@pytest.mark.slow
def test_hf_home_and_offline_from_the_environment(tmp_path):
    """HF_HOME and HF_HUB_OFFLINE=1 as a user sets them, read by huggingface_hub itself in a fresh process."""
    save_checkpoint(tiny(), tmp_path / "m.safetensors", feature_preset="speechcommands")
    snap = put_in_hub(tmp_path / "home" / "hub", "org/env", {"model.safetensors":
                                                             (tmp_path / "m.safetensors").read_bytes()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", AUM_CACHE=str(tmp_path / "aum"),
               PYTHONPATH=str(REPO))
    code = ("from aum.checkpoint import load_checkpoint, resolve; m = load_checkpoint('hf://org/env'); "
            "print(resolve('hf://org/env')); print(m.feature_preset.name)")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == [str(snap / "model.safetensors"), "speechcommands"]
    res = subprocess.run([sys.executable, "-c", "from aum.checkpoint import resolve; resolve('hf://org/none')"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "HF_HUB_OFFLINE is set" in res.stderr and "org/none" in res.stderr
