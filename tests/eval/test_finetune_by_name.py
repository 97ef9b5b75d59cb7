"""``eval.finetune --init imagenet`` with no file (the registry's ImageNet entry) and inits by registry name: a local
``file://`` entry in Vision Mamba's format stands in for the download."""
import argparse

import pytest
import torch

import eval.finetune as ft
from aum.checkpoint import hub
from aum.checkpoint.pretrained import IMAGENET, PRETRAINED, Pretrained


@pytest.fixture
def vim_release(tmp_path, monkeypatch, vim_state_dict):
    """A Vision Mamba-format file (RGB patches, 197 positions, training args beside the weights) registered at a
    file:// URL."""
    monkeypatch.setattr(hub, "cache_root", lambda: tmp_path / "cache")       # (AUM_CACHE would move the kernels too)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sd = vim_state_dict
    torch.save({"model": sd, "args": argparse.Namespace(lr=5e-4)}, tmp_path / "vim.pth")
    entry = Pretrained("test_vim", "aum", "small", 1000, "a test Vim", url=(tmp_path / "vim.pth").as_uri(),
                       filename="vim.pth", labels="imagenet1k", init="imagenet")
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    return entry, sd


def test_init_imagenet_without_a_path_is_the_registry_entry():
    parse = ft.build_parser().parse
    assert parse(["esc50", "m.jsonl", "--init", "imagenet"]).init == ("imagenet", IMAGENET)
    assert parse(["esc50", "m.jsonl", "--init", "imagenet", "w.pth", "run.fold=1"]).init == ("imagenet", "w.pth")
    assert parse(["esc50", "m.jsonl", "--init", "aum", "dass_small_sslam"]).init == ("aum", "dass_small_sslam")
    with pytest.raises(SystemExit, match="--init aum needs a checkpoint path"):
        parse(["esc50", "m.jsonl", "--init", "aum"])


def test_finetune_checks_names_before_reading_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "cache_root", lambda: tmp_path / "cache")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = ft.load_finetune_config("speechcommands")
    with pytest.raises(FileNotFoundError, match="no_such_release.*aum-models"):
        ft.finetune(cfg, tmp_path / "none.jsonl", "aum", "no_such_release")
    for init, path in (("imagenet", None), ("aum", "dass_small_sslam")):        # accepted: the manifest fails next
        with pytest.raises(FileNotFoundError) as err:
            ft.finetune(ft.load_finetune_config("speechcommands"), tmp_path / "none.jsonl", init, path)
        assert "class list" in str(err.value)                                   # the manifest's, not the init's
    assert not (tmp_path / "cache").exists() and not (tmp_path / "hf").exists()   # nothing fetched by the checks


def test_build_model_from_a_release_by_name(vim_release):
    entry, sd = vim_release
    model, report = ft.build_model(ft.load_finetune_config("speechcommands"), "imagenet", entry.name)
    c = model.config
    assert (c.mixer, c.embed_dim, c.depth, c.cls_position, c.num_classes) == ("v2", 32, 2, "middle", 35)
    assert report.kind == "vim" and model.pos_embed.grid == (8, 8)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items() if k.startswith("layers."))
