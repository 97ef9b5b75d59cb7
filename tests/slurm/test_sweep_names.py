"""Sweep files that name released weights: registered names, ``hf://`` references and URLs are checked by their
form only (nothing is downloaded when a sweep is loaded), ``imagenet`` without a file is the registry's ImageNet
entry, and the packaged demo sweep loads from the installed package."""
import re
from pathlib import Path

import pytest

import slurm
from aum.checkpoint import hub
from aum.checkpoint.pretrained import IMAGENET
from slurm.demo import DEMO
from slurm.spec import SweepError, load_sweep

SWEEP = """
name: names
benchmarks:
  synth_a: {generate: {clips: 28, duration: 1.0, seed: 0, frames: 128}}
inits:
  imagenet: {}
  dass: {init: official, checkpoint: dass_small_sslam}
  hub: {init: official, checkpoint: "hf://org/repo/model.safetensors", model: hubmodel}
stages:
  probe:
    kind: probe
    encoders: [imagenet, dass, hub, dass_medium_sslam]
    benchmarks: [synth_a]
    seeds: [0]
  finetune:
    kind: finetune
    encoders: [imagenet]
    benchmarks: [synth_a]
    seeds: [0]
tables: false
"""


@pytest.fixture
def no_downloads(tmp_path, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(hub, "cache_root", lambda: tmp_path / "aum")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    yield
    assert not (tmp_path / "aum").exists() and not (tmp_path / "hf").exists()


def _load(tmp_path, text=SWEEP):
    (tmp_path / "s.yaml").write_text(text)
    return load_sweep(tmp_path / "s.yaml", out_dir=str(tmp_path / "out"))


def _after(argv, flag):
    return argv[argv.index(flag) + 1]


def test_names_in_a_sweep_are_checked_not_fetched(tmp_path, no_downloads):
    sweep = _load(tmp_path)
    probes = {j.info["encoder"]: j.argv for j in sweep.jobs if j.kind == "probe"}
    assert sorted(probes) == sorted(["imagenet", "dass", "hub", "dass_medium_sslam"])
    for enc, want in (("imagenet", (IMAGENET, "imagenet")), ("dass", ("dass_small_sslam", "official"))):
        assert (_after(probes[enc], "--checkpoint"), _after(probes[enc], "--init")) == want
    assert _after(probes["dass_medium_sslam"], "--checkpoint") == "dass_medium_sslam"
    assert _after(probes["hub"], "--checkpoint") == "hf://org/repo/model.safetensors"
    (ft,) = [j.argv for j in sweep.jobs if j.kind == "finetune"]
    assert ft[ft.index("--init"):ft.index("--init") + 3] == ["--init", "imagenet", IMAGENET]


@pytest.mark.parametrize("old,new,message", [
    ("checkpoint: dass_small_sslam", "checkpoint: dass_small_sslm", "missing checkpoint path"),
    ('checkpoint: "hf://org/repo/model.safetensors"', 'checkpoint: "hf://org"', "hf://org/repo[@revision][/file]"),
    ("encoders: [imagenet, dass, hub, dass_medium_sslam]", "encoders: [dass_medium_sslm]", "did you mean"),
])
def test_bad_names_are_sweep_errors(tmp_path, no_downloads, old, new, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        _load(tmp_path, SWEEP.replace(old, new))


def test_the_demo_sweep_is_package_data(tmp_path):
    assert DEMO.is_file() and DEMO.parent == Path(slurm.__file__).parent / "examples"
    sweep = load_sweep(DEMO, out_dir=str(tmp_path / "demo"))
    assert {j.kind for j in sweep.jobs} == {"pretrain", "probe", "tables"}
