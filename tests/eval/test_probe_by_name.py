"""``eval.probe --checkpoint NAME``: released weights by their registry name (a local ``file://`` entry stands in
for a download), ``--init`` taken from the entry, the entry's feature preset fed to a file that records none."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from aum.checkpoint import hub
from aum.checkpoint.pretrained import PRETRAINED, Pretrained
from aum.cli import UsageError
from aum.models import create_model
from eval import probe
from eval.records import read_records

SR = 16000


@pytest.fixture
def released(tmp_path, monkeypatch):
    """A registered release: an official-format (record-less) tiny AuM at a file:// URL, trained 'on voxceleb'."""
    monkeypatch.setattr(hub, "cache_root", lambda: tmp_path / "cache")       # (AUM_CACHE would move the kernels too)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    torch.manual_seed(0)
    sd = create_model("tiny", depth=2, num_classes=4, mixer="v2").state_dict()
    torch.save(sd, tmp_path / "release.pth")
    entry = Pretrained("test_release", "aum", "tiny", 4, "a test release", url=(tmp_path / "release.pth").as_uri(),
                       filename="release.pth", arch=(("mixer", "v2"), ("depth", 2)), features="voxceleb",
                       labels="audioset")
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    return entry


def test_init_defaults_to_the_entry(released):
    args = probe.build_parser().parse(["toy", "m.jsonl", "--checkpoint", released.name])
    probe.check_args(args)
    assert args.init == "official"
    args = probe.build_parser().parse(["toy", "m.jsonl", "--checkpoint", "vim_small_imagenet"])
    probe.check_args(args)
    assert args.init == "imagenet"
    with pytest.raises(UsageError, match="--init is required"):
        probe.check_args(probe.build_parser().parse(["toy", "m.jsonl", "--checkpoint", "run/encoder.safetensors"]))


def test_probe_a_release_by_name(released, tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rows, rng = [], np.random.default_rng(0)
    for i in range(12):
        f = (300.0, 2000.0)[i % 2]
        wave = np.sin(2 * np.pi * f * np.arange(int(0.35 * SR)) / SR) + 0.05 * rng.standard_normal(int(0.35 * SR))
        sf.write(tmp_path / "data" / f"c{i}.wav", wave.astype(np.float32), SR)
        rows.append({"path": f"c{i}.wav", "labels": [("low", "high")[i % 2]],
                     "split": ("train", "train", "test")[i % 3]})
    (tmp_path / "data" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["toy", str(tmp_path / "data" / "manifest.jsonl"), "--checkpoint", released.name, "--frames", "32",
            "--folds", "0", "--metric", "accuracy", "--no-multilabel", "--c-grid", "1", "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "emb")]
    assert probe.main(argv) == 0, capsys.readouterr().err
    (rec,) = read_records(tmp_path / "out")
    assert (rec.init, rec.checkpoint, rec.config["preset"]) == ("official", "test_release", "voxceleb")
    assert (tmp_path / "cache" / "pretrained" / "test_release" / "release.pth").is_file()
