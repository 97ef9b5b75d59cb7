"""Tests for aum.checkpoint.official_aum and the foreign-checkpoint paths: official .pth, Hugging Face folder, Vision Mamba."""

import copy
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from aum.checkpoint import (CheckpointError, CheckpointMismatchError, init_from_pretrained, load_checkpoint,
                            read_checkpoint, save_checkpoint)
from aum.checkpoint.adapt import adapt_to_model
from aum.checkpoint.official_aum import hf_config_to_aum, infer_config, vim_to_aum
from aum.checkpoint.state_dict import strip_prefix, unwrap
from aum.models import create_model


def tiny(**kw):
    kw = {"depth": 2, "num_classes": 527, **kw}
    torch.manual_seed(0)
    return create_model("tiny", **kw).eval()


def assert_same(sd_a, sd_b, skip=()):
    keys = [k for k in sd_a if k not in skip]
    assert sorted(keys) == sorted(k for k in sd_b if k not in skip)
    for k in keys:
        assert torch.equal(sd_a[k], sd_b[k]), k


# ---------------------------------------------------------------- official checkpoints

def official_keys(D, mixer, classes, depth=24, tokens=513):
    """Key -> shape, written out from the key table of docs/checkpoints.md, not from our model."""
    E, R = 2 * D, math.ceil(D / 16)
    keys = {"cls_token": (1, 1, D), "pos_embed.pos_embed": (1, tokens, D),
            "patch_embed.proj.weight": (D, 1, 16, 16), "patch_embed.proj.bias": (D,),
            "norm_f.weight": (D,), "head.weight": (classes, D), "head.bias": (classes,)}
    layer = {"mixer.A_log": (E, 16), "mixer.D": (E,), "mixer.in_proj.weight": (2 * E, D),
             "mixer.conv1d.weight": (E, 1, 4), "mixer.conv1d.bias": (E,), "mixer.x_proj.weight": (R + 32, E),
             "mixer.dt_proj.weight": (E, R), "mixer.dt_proj.bias": (E,), "mixer.out_proj.weight": (D, E),
             "norm.weight": (D,)}
    if mixer in ("v1", "v2"):
        layer["mixer.A_b_log"] = (E, 16)
    if mixer == "v2":
        layer.update({"mixer.conv1d_b.weight": (E, 1, 4), "mixer.conv1d_b.bias": (E,),
                      "mixer.x_proj_b.weight": (R + 32, E), "mixer.dt_proj_b.weight": (E, R),
                      "mixer.dt_proj_b.bias": (E,), "mixer.D_b": (E,)})
    for i in range(depth):
        keys.update({f"layers.{i}.{k}": s for k, s in layer.items()})
    return keys


@pytest.mark.parametrize("size,D,mixer,params", [("base", 768, "v1", 92.1), ("small", 384, "v2", 25.5)])
def test_official_key_lists_and_parameter_counts(size, D, mixer, params):
    expected = official_keys(D, mixer, 527)
    with torch.device("meta"):
        model = create_model(size, mixer=mixer, num_classes=527)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert round(sum(math.prod(s) for s in expected.values()) / 1e6, 1) == params
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == params
    cfg = infer_config({k: torch.empty(s, device="meta") for k, s in expected.items()})
    assert cfg == {"embed_dim": D, "depth": 24, "mixer": mixer, "d_state": 16, "d_conv": 4, "expand": 2,
                   "num_classes": 527, "cls_position": "middle", "patch_size": [16, 16], "target_frames": 1024}


@pytest.mark.parametrize("mixer", ["none", "v1", "v2"])
@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict"])
def test_official_pth_loads_identically(tmp_path, mixer, wrap):
    model = tiny(mixer=mixer, target_frames=128)
    sd = {"module." + k: v.clone() for k, v in model.state_dict().items()}         # DataParallel prefix
    obj = sd if wrap == "plain" else {wrap: sd, "epoch": 4, "optimizer": {"lr": 1e-5}}
    torch.save(obj, tmp_path / "aum.pth")
    loaded = load_checkpoint(tmp_path / "aum.pth")
    assert read_checkpoint(tmp_path / "aum.pth").kind == "official"
    assert loaded.config == model.config
    assert_same(model.state_dict(), loaded.state_dict())
    x = torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_unrelated_config_json_ignored_for_pth(tmp_path):
    model = tiny(mixer="v2", target_frames=128)
    torch.save(model.state_dict(), tmp_path / "best.pth")
    (tmp_path / "config.json").write_text("[1, 2, 3]")                   # an experiment's own config
    raw = read_checkpoint(tmp_path / "best.pth")
    assert raw.kind == "official" and load_checkpoint(tmp_path / "best.pth").config == model.config


def test_strip_prefix_and_unwrap():
    t = torch.zeros(1)
    assert strip_prefix({"module.a.module.b": t, "c": t}) == {"a.module.b": t, "c": t}
    assert unwrap({"model": {"state_dict": {"a": t}}}) == {"a": t}
    assert unwrap({"module": {"a": t}, "epoch": 1}) == {"a": t}
    with pytest.raises(ValueError, match="not a state_dict"):
        unwrap({"epoch": 1})


# ---------------------------------------------------------------- Hugging Face re-upload

HF_CONFIG = {"architectures": ["AudioMambaModel"], "aum_pretrain": True,
             "aum_pretrain_path": "models/aum-base_audioset-vggsound.pth", "bimamba_type": "v1",
             "embed_dim": 192, "imagenet_pretrain": False, "imagenet_pretrain_path": None, "model_type": "mamba",
             "num_classes": 309, "patch_size": [16, 16], "spectrogram_size": [128, 1024], "strides": [16, 16],
             "torch_dtype": "float32", "transformers_version": "4.35.2"}


def test_hf_folder_loads_identically(tmp_path):
    model = tiny(num_classes=309)
    folder = tmp_path / "audiomamba"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    for path in (folder, folder / "model.safetensors"):
        assert read_checkpoint(path).kind == "hf"
        loaded = load_checkpoint(path)
        assert loaded.config == model.config and loaded.head.out_features == 309
        assert_same(model.state_dict(), loaded.state_dict())


def test_hf_config_names():
    cfg = hf_config_to_aum({**HF_CONFIG, "spectrogram_size": [128, 512], "use_middle_cls_token": False})
    assert cfg == {"embed_dim": 192, "num_classes": 309, "patch_size": [16, 16], "mixer": "v1",
                   "patch_stride": [16, 16], "num_mel_bins": 128, "target_frames": 512, "cls_position": "head"}


# ---------------------------------------------------------------- Vision Mamba

D_VIM = 32


def vim_state_dict():
    """Vim-small-shaped ``{'model': sd}`` with a small width: RGB patch conv, 197-token pos_embed, ImageNet head."""
    torch.manual_seed(1)
    layers = create_model("tiny", embed_dim=D_VIM, depth=2, mixer="v2").state_dict()
    sd = {k: torch.randn_like(v) for k, v in layers.items() if k.startswith("layers.")}
    sd.update({"patch_embed.proj.weight": torch.randn(D_VIM, 3, 16, 16), "patch_embed.proj.bias": torch.randn(D_VIM),
               "pos_embed": torch.randn(1, 197, D_VIM), "cls_token": torch.randn(1, 1, D_VIM),
               "norm_f.weight": torch.randn(D_VIM), "head.weight": torch.randn(1000, D_VIM),
               "head.bias": torch.randn(1000)})
    return sd


def expected_vim_pos(vim_pos, grid):
    """Independent conversion: class slot = index 98; the other 196 positions as a [1, D, 14, 14] image."""
    patches = torch.cat([vim_pos[:, :98], vim_pos[:, 99:]], dim=1)
    image = patches.reshape(1, 14, 14, D_VIM).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=grid, mode="bilinear", antialias=True, align_corners=False)
    return torch.cat([vim_pos[:, 98:99], image.permute(0, 2, 3, 1).reshape(1, -1, D_VIM)], dim=1)


def test_vim_to_aum_by_hand():
    vim = vim_state_dict()
    vim["rope.freqs_cos"] = torch.randn(196, 16)
    out = vim_to_aum(vim, target_grid=(14, 14))
    w = vim["patch_embed.proj.weight"]
    assert torch.allclose(out["patch_embed.proj.weight"], (w[:, 0:1] + w[:, 1:2] + w[:, 2:3]) / 3, atol=1e-6)
    pos = out["pos_embed.pos_embed"]
    assert pos.shape == (1, 197, D_VIM)
    assert torch.equal(pos[0, 0], vim["pos_embed"][0, 98])
    order = [i for i in range(197) if i != 98]
    assert torch.equal(pos[0, 1:], vim["pos_embed"][0, order])
    assert not any(k.startswith(("head.", "rope.")) for k in out) and "pos_embed" not in out
    rest = [k for k in vim if k not in ("patch_embed.proj.weight", "pos_embed") and not k.startswith(("head", "rope"))]
    for k in rest:
        assert torch.equal(out[k], vim[k]), k


def test_vim_to_aum_resizes_to_spectrogram_grid():
    vim = vim_state_dict()
    out = vim_to_aum(vim, target_grid=(8, 64))
    pos = out["pos_embed.pos_embed"]
    assert pos.shape == (1, 1 + 8 * 64, D_VIM)
    assert torch.equal(pos[0, 0], vim["pos_embed"][0, 98])
    torch.testing.assert_close(pos, expected_vim_pos(vim["pos_embed"], (8, 64)), rtol=0, atol=1e-6)
    headless = vim_to_aum(vim, target_grid=(8, 64), n_prefix=0)["pos_embed.pos_embed"]
    torch.testing.assert_close(headless, pos[:, 1:], rtol=0, atol=0)


def test_init_from_vim_checkpoint(tmp_path):
    vim = vim_state_dict()
    torch.save({"model": vim, "epoch": 300}, tmp_path / "vim_s_midclstok.pth")
    model = create_model("tiny", embed_dim=D_VIM, depth=2, mixer="v2", num_classes=35, target_frames=128)
    head_before = model.head.weight.clone()
    report = init_from_pretrained(model, tmp_path / "vim_s_midclstok.pth")
    assert report.kind == "vim" and report.missing == ["head.weight", "head.bias"] and report.unexpected == []
    assert any("head" in n and "dropped" in n for n in report.notes)
    assert torch.equal(model.head.weight, head_before)
    sd = model.state_dict()
    assert torch.equal(sd["patch_embed.proj.weight"], vim["patch_embed.proj.weight"].mean(1, keepdim=True))
    torch.testing.assert_close(sd["pos_embed.pos_embed"], expected_vim_pos(vim["pos_embed"], (8, 8)),
                               rtol=0, atol=1e-6)
    for k in vim:
        if k not in ("patch_embed.proj.weight", "pos_embed") and not k.startswith("head."):
            assert torch.equal(sd[k], vim[k]), k


def test_load_checkpoint_from_vim(tmp_path):
    vim = vim_state_dict()
    torch.save({"model": vim}, tmp_path / "vim.pth")
    model = load_checkpoint(tmp_path / "vim.pth")
    c = model.config
    assert (c.embed_dim, c.depth, c.mixer, c.num_classes, c.cls_position) == (D_VIM, 2, "v2", 0, "middle")
    assert model.pos_embed.grid == (8, 64)
    torch.testing.assert_close(model.pos_embed.pos_embed.data, expected_vim_pos(vim["pos_embed"], (8, 64)),
                               rtol=0, atol=1e-6)
    assert model(torch.randn(1, 1024, 128)).shape == (1, D_VIM)


def test_vim_into_wrong_mixer_refused(tmp_path):
    torch.save({"model": vim_state_dict()}, tmp_path / "vim.pth")
    model = create_model("tiny", embed_dim=D_VIM, depth=2, mixer="v1")
    with pytest.raises(CheckpointMismatchError, match=r"layers\.0\.mixer\.conv1d_b\.weight"):
        init_from_pretrained(model, tmp_path / "vim.pth")


# ---------------------------------------------------------------- AudioSet -> other benchmarks

def test_adapt_audioset_to_speech_commands(tmp_path):
    source = tiny()                                                   # 8x64 grid, 527 classes
    torch.save(source.state_dict(), tmp_path / "as2m.pth")
    target = tiny(num_classes=35, target_frames=128)                  # 8x8 grid, 35 classes
    report = init_from_pretrained(target, tmp_path / "as2m.pth")
    assert report.missing == ["head.weight", "head.bias"]
    assert any("527 classes dropped" in n for n in report.notes)
    assert any("(8, 64) to (8, 8)" in n for n in report.notes)
    pos = source.pos_embed.pos_embed.detach()
    image = pos[:, 1:].reshape(1, 8, 64, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    want = torch.cat([pos[:, :1], image.permute(0, 2, 3, 1).reshape(1, 64, -1)], dim=1)
    torch.testing.assert_close(target.pos_embed.pos_embed.data, want, rtol=0, atol=1e-6)
    assert_same(source.state_dict(), target.state_dict(), skip=("pos_embed.pos_embed", "head.weight", "head.bias"))


def test_adapt_keeps_head_of_same_class_count():
    source, target = tiny(), tiny(target_frames=128)
    sd, notes = adapt_to_model(source.state_dict(), target)
    assert torch.equal(sd["head.weight"], source.head.weight) and len(notes) == 1
    sd, notes = adapt_to_model(source.state_dict(), tiny(num_classes=0))
    assert "head.weight" not in sd and "no head" in notes[0]


def test_init_refuses_partial_loads(tmp_path):
    torch.save(tiny().state_dict(), tmp_path / "aum.pth")
    with pytest.raises(CheckpointMismatchError, match=r"layers\.2\.mixer\.A_log"):
        init_from_pretrained(tiny(depth=3), tmp_path / "aum.pth")
    with pytest.raises(CheckpointMismatchError, match=r"layers\.0\.mixer\.A_b_log"):
        init_from_pretrained(tiny(mixer="none"), tmp_path / "aum.pth")
    with pytest.raises(CheckpointMismatchError, match="cls_token|class token"):
        init_from_pretrained(tiny(cls_position="none", target_frames=128), tmp_path / "aum.pth")


# ---------------------------------------------------------------- official options the scripts leave off

def save_pth(model, path, **extra):
    """The model's weights as an official plain state_dict (the official key names, checked above)."""
    torch.save({**{k: v.clone() for k, v in model.state_dict().items()}, **extra}, path)
    return path


def hf_folder(tmp_path, model, **config):
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({**HF_CONFIG, "spectrogram_size": [128, 128], **config}))
    return folder


def test_hf_both_cls_flags_true_is_middle(tmp_path):
    flags = {"use_middle_cls_token": True, "use_end_cls_token": True}
    assert hf_config_to_aum({**HF_CONFIG, **flags})["cls_position"] == "middle"
    assert hf_config_to_aum({**HF_CONFIG, "use_middle_cls_token": False, "use_end_cls_token": True})[
        "cls_position"] == "tail"
    model = tiny(num_classes=309, target_frames=128)                    # middle, as the official forward
    loaded = load_checkpoint(hf_folder(tmp_path, model, **flags))
    assert loaded.config.cls_position == "middle"
    x = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("frames,patches", [(128, 144), (1024, 1212)])
def test_overlapping_patches_inferred_from_pos_embed(tmp_path, frames, patches):
    # the official run.py defaults to stride 10: 12 frequency rows, (frames - 16) // 10 + 1 time columns
    model = tiny(patch_stride=(10, 10), target_frames=frames)
    assert model.pos_embed.pos_embed.shape[1] == patches + 1
    loaded = load_checkpoint(save_pth(model, tmp_path / "aum.pth"))
    assert loaded.config.patch_stride == (10, 10) and loaded.config.target_frames == frames
    assert_same(model.state_dict(), loaded.state_dict())
    x = torch.randn(1, frames, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_ambiguous_or_unknown_stride_refused_then_given(tmp_path):
    model = tiny(patch_stride=(13, 13), target_frames=128)             # 9 x 9: also stride 14 at 128 frames
    path = save_pth(model, tmp_path / "s13.pth")
    with pytest.raises(CheckpointError, match=r"several patch strides: \(14, 14\) at 128 frames, \(13, 13\) "
                                              r"at 128 frames; pass the file's stride as strides=") as err:
        load_checkpoint(path)
    assert "target_frames" not in str(err.value)
    loaded = load_checkpoint(path, strides=(13, 13))
    assert loaded.config.patch_stride == (13, 13) and loaded.config.target_frames == 128
    odd = tiny(patch_stride=(10, 10), target_frames=1000)              # 12 x 99: no power-of-two length fits
    path = save_pth(odd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="strides="):
        load_checkpoint(path)
    loaded = load_checkpoint(path, strides=[10, 10])
    assert loaded.config.patch_stride == (10, 10) and loaded.pos_embed.grid == (12, 99)
    x = torch.randn(1, 1000, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(odd(x), loaded(x))


def test_transposed_token_sequence_refused(tmp_path):
    model = tiny(num_classes=309, target_frames=128)
    folder = hf_folder(tmp_path, model, transpose_token_sequence=True)
    with pytest.raises(CheckpointError, match=r"transpose_token_sequence=True \(tokens in time-major order, set "
                                              r"by .*config\.json\) is not supported.*pass "
                                              r"transpose_token_sequence=False"):
        load_checkpoint(folder)
    assert load_checkpoint(folder, transpose_token_sequence=False).config == model.config
    pth = save_pth(model, tmp_path / "aum.pth")
    with pytest.raises(CheckpointError, match=r"transpose_token_sequence=True .*set by the caller\)"):
        load_checkpoint(pth, transpose_token_sequence=True)
    ours = tmp_path / "ours.safetensors"
    save_checkpoint(model, ours)
    with pytest.raises(CheckpointError, match=r"\['transpose_token_sequence'\] describe official AuM files"):
        load_checkpoint(ours, transpose_token_sequence=False)


def summed_reference(model):
    """The official ``if_devide_out=False`` model: each v2 mixer's two directions summed, i.e. twice our average
    (``out_proj`` is linear without bias), done here by doubling every mixer's output."""
    ref = copy.deepcopy(model)
    for layer in ref.layers:
        layer.mixer.register_forward_hook(lambda mod, args, out: out * 2)
    return ref


def test_v2_summed_directions_supported(tmp_path):
    model = tiny(mixer="v2", num_classes=309, target_frames=128)
    x = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, averaged = summed_reference(model)(x), model(x)
        assert not torch.allclose(want, averaged)
        for loaded in (load_checkpoint(hf_folder(tmp_path, model, bimamba_type="v2", if_devide_out=False)),
                       load_checkpoint(save_pth(model, tmp_path / "v2.pth"), if_devide_out=False)):
            torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-6)
        # the default (if_devide_out=True) averages, as ours; v1 never divides, so the option leaves it alone
        assert torch.equal(load_checkpoint(tmp_path / "v2.pth", if_devide_out=True)(x), averaged)
        v1 = tiny(mixer="v1", target_frames=128)
        assert torch.equal(load_checkpoint(save_pth(v1, tmp_path / "v1.pth"), if_devide_out=False)(x), v1(x))


def test_double_cls_token_refused_by_name(tmp_path):
    model = tiny(cls_position="none", target_frames=128)
    D = model.embed_dim
    sd = model.state_dict()
    sd["pos_embed.pos_embed"] = torch.randn(1, 64 + 2, D)               # both class slots + 8 x 8 patches
    path = tmp_path / "double.pth"
    torch.save({**sd, "cls_token_head": torch.randn(1, 1, D), "cls_token_tail": torch.randn(1, 1, D)}, path)
    for call in (lambda: read_checkpoint(path), lambda: load_checkpoint(path, target_frames=128)):
        with pytest.raises(CheckpointError, match="use_double_cls_token=True") as err:
            call()
        assert "target_frames" not in str(err.value) and "cls_token_head" in str(err.value)
    with pytest.raises(CheckpointError, match="use_double_cls_token=True"):
        load_checkpoint(hf_folder(tmp_path, tiny(num_classes=309, target_frames=128), use_double_cls_token=True))


def test_pth_class_token_position_warned_once(tmp_path):
    model = tiny(cls_position="tail", target_frames=128)
    path = save_pth(model, tmp_path / "tail.pth")
    with pytest.warns(UserWarning) as caught:
        assumed = load_checkpoint(path)
    mine = [w for w in caught if "class token" in str(w.message)]
    assert len(mine) == 1
    assert "loading it as 'middle'" in str(mine[0].message) and "cls_position='head' or 'tail'" in str(mine[0].message)
    assert str(path) in str(mine[0].message) and assumed.config.cls_position == "middle"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        told = load_checkpoint(save_pth(model, tmp_path / "tail2.pth"), cls_position="tail")
        load_checkpoint(hf_folder(tmp_path, tiny(num_classes=309, target_frames=128)))   # config.json: middle
        load_checkpoint(save_pth(tiny(cls_position="none", target_frames=128), tmp_path / "none.pth"))
    x = torch.randn(1, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(told(x), model(x)) and not torch.equal(assumed(x), model(x))
