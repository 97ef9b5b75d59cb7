"""The registry of released weights (aum.checkpoint.pretrained): every entry complete and buildable, the
releases the project promises present with their published names, the ``aum-models`` listing, names through
``aum.create_model``, and the Vision Mamba-style pickle (weights + training ``args``) that the ImageNet entry is."""
import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aum
from aum.audio.features import NORM_PRESETS
from aum.checkpoint import load_checkpoint
from aum.checkpoint.hub import parse_hf, url_target
from aum.checkpoint.pretrained import (IMAGENET, LABEL_SETS, PRETRAINED, Pretrained, get_pretrained,
                                       list_pretrained)
from aum.cli import models_main
from aum.config import UnknownPresetError
from aum.models import list_models
from aum.models.registry import FAMILIES

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_every_entry_is_complete_and_builds(name):
    e = PRETRAINED[name]
    assert e.name == name and name not in list_models("all") and re.fullmatch(r"[a-z0-9_]+", name)
    assert e.family in FAMILIES and e.preset in list_models(e.family)
    assert e.features is None or e.features in NORM_PRESETS
    assert e.labels in LABEL_SETS and e.init in ("imagenet", "official") and e.description
    assert (e.hub is None) != (e.url is None), "exactly one of hub / url"
    assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256)
    if e.hub:
        repo, revision, filename = parse_hf(e.source)
        assert (repo, revision, filename) == (e.hub, e.revision, e.filename)
        assert e.revision is None or re.fullmatch(r"[0-9a-f]{40}", e.revision)
    else:
        assert e.filename and url_target(e.url, e).name == e.filename
        assert re.fullmatch(r"https://drive\.google\.com/uc\?export=download&id=[\w-]{25,}&confirm=t", e.url)
    with torch.device("meta"):                      # the architecture it names builds (no memory for base)
        model = aum.create_model(name)
    assert model.family == e.family and model.config.num_classes == e.num_classes


def test_the_promised_releases_are_registered():
    vim = get_pretrained(IMAGENET)
    assert (vim.hub, vim.filename, vim.preset, dict(vim.arch)["mixer"], vim.init) == \
        ("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth", "small", "v2", "imagenet")
    hf = get_pretrained("aum_base_audioset_vggsound_hf")
    assert (hf.hub, hf.num_classes, hf.features, dict(hf.arch)["mixer"]) == ("Robzy/audiomamba", 309, "vggsound", "v1")
    dass = {e.hub: e for e in PRETRAINED.values() if e.family == "dass"}
    assert sorted(dass) == sorted(f"saurabhati/DASS_{size}_AudioSet_{score}" for size, scores in
                                  (("small", ("47.2", "48.6", "50.1")), ("medium", ("47.6", "48.9", "50.2")))
                                  for score in scores)
    for repo, e in dass.items():
        assert e.preset == "dass_" + repo.split("_")[1] and (e.num_classes, e.features) == (527, "audioset")
    drive = [e for e in PRETRAINED.values() if e.url]
    assert len(drive) == 16 and len({e.url for e in drive}) == 16                   # the official README's table
    assert list_pretrained("dass") == [e.name for e in dass.values()] and len(list_pretrained()) == len(PRETRAINED)


def test_names_through_aum_create_model():
    assert aum.create_model("tiny", depth=1).config.depth == 1                 # presets as before
    with pytest.raises(UnknownPresetError, match="no released weights named 'tiny'.*aum-models"):
        aum.create_model("tiny", pretrained=True)
    with torch.device("meta"):
        model = aum.create_model("dass_small_sslam", num_classes=3)           # architecture, random weights
    assert model.family == "dass" and model.config.num_classes == 3 and model.config.depths == (2, 2, 8, 2)


def test_aum_models_lists_the_registry(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AUM_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = Pretrained("test_cached", "aum", "tiny", 5, "a cached test entry", url="https://example.invalid/w.pth",
                       filename="w.pth", features="audioset", labels="audioset")
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    target = url_target(entry.url, entry)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x80")
    assert models_main([]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert set(PRETRAINED) <= set(lines)
    assert lines["test_cached"].split()[5] == "yes" and lines["dass_small_sslam"].split()[5] == "-"
    assert "hf://saurabhati/DASS_small_AudioSet_50.1" in lines["dass_small_sslam"]
    assert models_main(["--family", "dass"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    assert [n for n in names if n in PRETRAINED] == list_pretrained("dass")
    assert models_main([IMAGENET]) == 0
    out = capsys.readouterr().out
    assert "aae4583e2def6389b66cfaf292cfade47a873182a39adbec19ec55b730ea9fe3" in out and "imagenet1k" in out
    assert models_main(["vim_smal"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no released weights named 'vim_smal'" in err


@pytest.mark.subprocess
@pytest.mark.slow
def test_python_m_aum_models():
    res = subprocess.run([sys.executable, "-m", "aum", "models", "dass_medium_sslam"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "saurabhati/DASS_medium_AudioSet_50.2" in res.stdout, res.stderr[-2000:]


def test_vim_style_pickle_with_training_args_loads(tmp_path):
    """Vision Mamba's files hold their training ``args`` (an ``argparse.Namespace``) beside the weights: read with
    the restricted unpickler all the same, weights converted as for the ImageNet entry."""
    torch.manual_seed(0)
    D = 64
    layers = aum.create_model("tiny", embed_dim=D, depth=1, mixer="v2").state_dict()
    sd = {k: torch.randn_like(v) for k, v in layers.items() if k.startswith("layers.")}
    sd.update({"patch_embed.proj.weight": torch.randn(D, 3, 16, 16), "patch_embed.proj.bias": torch.randn(D),
               "pos_embed": torch.randn(1, 197, D), "cls_token": torch.randn(1, 1, D), "norm_f.weight": torch.randn(D),
               "head.weight": torch.randn(1000, D), "head.bias": torch.randn(1000)})
    path = tmp_path / "vim.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=5e-4, model="vim_small", input_size=224)}, path)
    model = load_checkpoint(path)
    assert (model.config.embed_dim, model.config.mixer, model.config.cls_position) == (D, "v2", "middle")
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items() if k.startswith("layers."))
    assert torch.equal(got["patch_embed.proj.weight"], sd["patch_embed.proj.weight"].mean(1, keepdim=True))
