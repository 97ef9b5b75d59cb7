"""DASS checkpoints: the converters of both released formats (the original ``module.v.`` .pth and the Hugging Face
port), our own format, and both through load_checkpoint / init_from_pretrained."""
import logging
import math

import pytest
import torch

import aum
from aum.checkpoint import CheckpointError, CheckpointMismatchError
from aum.models.dass import DASS, DASSConfig
from aum.checkpoint.official_dass import (dass_config_from_state_dict, dass_format, dass_state_dict_from_hf,
                                     dass_state_dict_from_original)


def tiny(**kw):
    torch.manual_seed(0)
    return aum.create_model("dass_tiny", **kw).double().eval()


def fbank(frames=64, batch=2, seed=0):
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- converters ----------------------------------------------------------------------------------------------
def official_shapes(dims, depths, classes=527, n=1) -> dict:
    """Key -> shape of an official DASS ``.pth`` (the key table of docs/checkpoints.md), ``module.v.`` included."""
    stem = dims[0] // 2
    s = {"patch_embed.0.weight": (stem, 1, 3, 3), "patch_embed.0.bias": (stem,), "patch_embed.2.weight": (stem,),
         "patch_embed.2.bias": (stem,), "patch_embed.5.weight": (dims[0], stem, 3, 3), "patch_embed.5.bias": (dims[0],),
         "patch_embed.7.weight": (dims[0],), "patch_embed.7.bias": (dims[0],)}
    for i, (c, depth) in enumerate(zip(dims, depths)):
        r = math.ceil(c / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            for norm in ("norm", "norm2", "op.out_norm"):
                s[p + norm + ".weight"] = s[p + norm + ".bias"] = (c,)
            s |= {p + "op.in_proj.weight": (c, c), p + "op.out_proj.weight": (c, c),
                  p + "op.conv2d.weight": (c, 1, 3, 3), p + "op.x_proj_weight": (4, r + 2 * n, c),
                  p + "op.dt_projs_weight": (4, c, r), p + "op.dt_projs_bias": (4, c), p + "op.A_logs": (4 * c, n),
                  p + "op.Ds": (4 * c,), p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                  p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)}
        if i + 1 < len(dims):
            s |= {f"layers.{i}.downsample.1.weight": (2 * c, c, 3, 3), f"layers.{i}.downsample.1.bias": (2 * c,),
                  f"layers.{i}.downsample.3.weight": (2 * c,), f"layers.{i}.downsample.3.bias": (2 * c,)}
    s |= {"classifier.norm.weight": (dims[-1],), "classifier.norm.bias": (dims[-1],),
          "classifier.head.weight": (classes, dims[-1]), "classifier.head.bias": (classes,)}
    return {"module.v." + k: v for k, v in s.items()}


def to_hf(original: dict) -> dict:
    """The official HF converter's mapping (docs/checkpoints.md, the Hugging Face port), applied to an original state_dict."""
    out = {}
    stem = {"0": "0", "2": "1", "5": "3", "7": "4"}
    for key, v in original.items():
        k = key[len("module.v."):]
        parts = k.split(".")
        if parts[0] == "patch_embed":
            new = f"dass.patch_embeddings.projection.{stem[parts[1]]}.{parts[2]}"
        elif parts[0] == "layers" and parts[2] == "downsample":
            new = f"dass.layers.{parts[1]}.downsample.{ {'1': 'down', '3': 'norm'}[parts[3]] }.{parts[4]}"
        elif k.endswith("op.x_proj_weight"):
            new, v = "dass." + k.replace("x_proj_weight", "x_proj.weight"), v.reshape(-1, v.shape[-1])
        elif k.endswith("op.dt_projs_weight"):
            new, v = "dass." + k.replace("dt_projs_weight", "dt_projs.weight"), v.reshape(-1, v.shape[-1])
        elif parts[0] == "classifier":
            new = ("dass.norm." if parts[1] == "norm" else "head.") + parts[2]
        else:
            new = "dass." + k
        out[new] = v
    return out


def test_the_full_official_small_key_list_converts_to_our_names():
    with torch.device("meta"):
        original = {k: torch.empty(s) for k, s in official_shapes((96, 192, 384, 768), (2, 2, 8, 2)).items()}
        ours = aum.create_model("dass_small", num_classes=527).state_dict()
        assert len(original) == 276 and dass_format(original) == "original"
        converted = dass_state_dict_from_original(original)
        hf = to_hf(original)
        assert dass_format(hf) == "hf" and dass_format(converted) == "aum"
        from_hf = dass_state_dict_from_hf(hf)
    for got in (converted, from_hf):
        assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    cfg = dass_config_from_state_dict(converted)
    assert cfg.depths == (2, 2, 8, 2) and cfg.num_classes == 527 and cfg.d_state == 1 and cfg.drop_path_rate == 0.2


def tiny_original(classes=5):
    model = tiny(num_classes=classes)
    g = torch.Generator().manual_seed(3)
    sd = {"module.v." + k: torch.randn(v.shape, generator=g, dtype=v.dtype) * 0.1
          for k, v in model.state_dict().items()}
    assert set(sd) == set(official_shapes((24, 48, 96, 192), (1, 1, 2, 1), classes))
    return model, sd


def test_original_and_hf_tiny_checkpoints_load_and_give_the_same_logits():
    model, original = tiny_original()
    hf = to_hf(original)
    x = fbank(32)
    outs = []
    for sd in (dass_state_dict_from_original(original), dass_state_dict_from_hf(hf)):
        model.load_state_dict(sd, strict=True)
        with torch.no_grad():
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])
    key = "layers.2.blocks.1.op."
    hf_dt = hf["dass." + key + "dt_projs.weight"]                # [4C, R] = [384, 6]
    hf_x = hf["dass." + key + "x_proj.weight"]                   # [4(R+2), C] = [32, 96]
    ours = dass_state_dict_from_hf(hf)
    c, r = 96, 6
    assert ours[key + "dt_projs_weight"][2, 5, 1] == hf_dt[2 * c + 5, 1]       # direction 2, channel 5
    assert ours[key + "x_proj_weight"][3, r + 1, 7] == hf_x[3 * (r + 2) + r + 1, 7]   # direction 3's C row
    assert torch.equal(ours[key + "dt_projs_weight"][1], hf_dt[c:2 * c])


def test_hf_conversion_accepts_its_config_json():
    _, original = tiny_original(classes=527)
    hf = to_hf(original)
    hf_cfg = {"model_type": "dass", "depths": [1, 1, 2, 1], "dims": [24, 48, 96, 192], "num_classes": 527,
              "patch_size": 4, "embed_dim": 96, "max_length": 1024, "num_mel_bins": 128, "drop_path_rate": 0.2}
    assert set(dass_state_dict_from_hf(hf, hf_cfg)) == {k[len("module.v."):] for k in original}
    headless = {k: v for k, v in hf.items() if not k.startswith("head.")}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: classifier\.head\.bias, classifier\.head\.w"):
        dass_state_dict_from_hf(headless, hf_cfg)
    with pytest.raises(CheckpointMismatchError, match=r"outside the DASS layout: dass\.embeddings\.extra"):
        dass_state_dict_from_hf({**hf, "dass.embeddings.extra": torch.zeros(1)})


def test_partial_or_foreign_original_files_are_refused_by_name():
    _, original = tiny_original()
    dropped = {k: v for k, v in original.items() if k != "module.v.layers.2.blocks.1.op.Ds"}
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: layers\.2\.blocks\.1\.op\.Ds"):
        dass_state_dict_from_original(dropped)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: extra\.weight"):
        dass_state_dict_from_original({**original, "module.v.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"without the 'module\.v\.' prefix: layers\.0\.blocks"):
        dass_state_dict_from_original({k.replace("module.v.", "", 1) if "layers.0.blocks.0.norm." in k else k: v
                                       for k, v in original.items()})
    bad = dict(original, **{"module.v.layers.0.blocks.0.op.A_logs": torch.zeros(96, 2)})
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch: layers\.0\.blocks\.0\.op\.A_logs"):
        dass_state_dict_from_original(bad, DASSConfig(dims=(24, 48, 96, 192), depths=(1, 1, 2, 1), num_classes=5))
    with pytest.raises(CheckpointMismatchError, match="not a DASS state_dict"):
        dass_state_dict_from_original({"module.v.head.weight": torch.zeros(2, 2)})


# -- checkpoints: our format and both released formats through load_checkpoint --------------------------------
def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_our_format_stores_and_rebuilds_dass_bit_identically(tmp_path, caplog):
    import json

    from safetensors import safe_open

    from aum.checkpoint import feature_preset_of, load_checkpoint, read_checkpoint, save_checkpoint
    model = tiny(num_classes=5).float()
    with caplog.at_level(logging.WARNING):
        path = save_checkpoint(model, tmp_path / "dass.safetensors", metadata={"epoch": 2})
    assert not caplog.records                                    # a DASS has its family's preset: no default warning
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["aum_config"]) == {"family": "dass", **model.config.to_dict()} and meta["aum_format"] == "2"
    raw = read_checkpoint(path)
    assert (raw.kind, raw.family, raw.config, raw.metadata) == ("aum", "dass", model.config.to_dict(), {"epoch": 2})
    loaded = load_checkpoint(path)
    assert isinstance(loaded, DASS) and loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = fbank(40, batch=1).float()
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    preset = feature_preset_of(path)                              # ours: recorded, with the 1024-frame clips
    assert preset.name == "audioset" and preset.target_frames == 1024
    assert loaded.feature_preset_source == "default: the DASS family's"
    vox = save_checkpoint(loaded, tmp_path / "vox.safetensors", feature_preset="voxceleb", feature_source="test")
    assert feature_preset_of(vox).name == load_checkpoint(vox).feature_preset.name == "voxceleb"


def _released(tmp_path, classes=5):
    """The tiny model's weights written in both released layouts, with the official key names: ``(reference
    logits, input, {name: path})`` for an original ``.pth``, an HF folder with ``model.safetensors`` +
    ``config.json`` and an HF folder with only ``pytorch_model.bin``."""
    from safetensors.torch import save_file
    _, original = tiny_original(classes)
    original = {k: v.float() for k, v in original.items()}
    reference = DASS(DASSConfig(dims=(24, 48, 96, 192), depths=(1, 1, 2, 1), num_classes=classes))
    reference.load_state_dict({k[len("module.v."):]: v for k, v in original.items()}, strict=True)
    hf = {k: v.contiguous() for k, v in to_hf(original).items()}
    torch.save(original, tmp_path / "DASS_tiny.pth")
    (tmp_path / "hf").mkdir()
    save_file(hf, str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text(
        '{"model_type": "dass", "depths": [1, 1, 2, 1], "dims": [24, 48, 96, 192], "num_classes": %d, '
        '"patch_size": 4, "embed_dim": 96, "max_length": 1024, "num_mel_bins": 128, "drop_path_rate": 0.0}' % classes)
    (tmp_path / "bin").mkdir()
    torch.save(hf, tmp_path / "bin" / "pytorch_model.bin")
    x = fbank(40, batch=1).float()
    return _logits(reference, x), x, {"original": tmp_path / "DASS_tiny.pth", "hf": tmp_path / "hf",
                                      "bin": tmp_path / "bin"}


def test_released_original_and_hf_files_load_by_their_keys_with_identical_logits(tmp_path, caplog):
    from aum.checkpoint import feature_preset_of, load_checkpoint, read_checkpoint
    expected, x, paths = _released(tmp_path)
    kinds = {"original": "dass_original", "hf": "dass_hf", "bin": "dass_hf"}
    for name, path in paths.items():
        raw = read_checkpoint(path)
        assert (raw.kind, raw.family) == (kinds[name], "dass")
        with caplog.at_level(logging.WARNING):
            model = load_checkpoint(path)
            feature_preset_of(path)                               # asked again: still one warning per file
        assert isinstance(model, DASS) and model.config.depths == (1, 1, 2, 1) and model.config.num_classes == 5
        assert torch.equal(_logits(model, x), expected), name
        warned = [r for r in caplog.records if "records no feature preset" in r.getMessage()]
        assert len(warned) == 1 and "'audioset'" in warned[0].getMessage()     # foreign: audioset, one warning
        assert model.feature_preset.name == "audioset"
        caplog.clear()
    assert read_checkpoint(paths["hf"]).config["drop_path_rate"] == 0.0       # config.json read when present
    with pytest.raises(CheckpointError, match="not a dass_hf checkpoint: its keys have the DASS 'original'"):
        read_checkpoint(paths["original"], kind="dass_hf")


def test_partial_or_foreign_dass_files_are_refused_naming_file_and_keys(tmp_path):
    from safetensors.torch import save_file

    from aum.checkpoint import load_checkpoint
    _, original = tiny_original()
    torch.save({k: v for k, v in original.items() if not k.endswith("layers.2.blocks.1.op.Ds")},
               tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)partial\.pth: .*missing keys: layers\.2\.blocks\.1\.op\."
                                                      r"Ds"):
        load_checkpoint(tmp_path / "partial.pth")
    hf = {k: v.contiguous() for k, v in to_hf(original).items()}
    (tmp_path / "extra").mkdir()
    save_file({**hf, "dass.embeddings.extra": torch.zeros(1)}, str(tmp_path / "extra" / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)model\.safetensors: .*outside the DASS layout: "
                                                      r"dass\.embeddings\.extra"):
        load_checkpoint(tmp_path / "extra")
    (tmp_path / "cfg").mkdir()
    save_file(hf, str(tmp_path / "cfg" / "model.safetensors"))
    (tmp_path / "cfg" / "config.json").write_text('{"depths": [1, 1, 1, 1], "dims": [24, 48, 96, 192], '
                                                  '"num_classes": 5}')
    with pytest.raises(CheckpointMismatchError, match=r"(?s)unexpected keys: layers\.2\.blocks\.1\..*config\.json"):
        load_checkpoint(tmp_path / "cfg")
    torch.save(tiny().state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"bare\.pth: a bare DASS state_dict in aum's names, without the config"):
        load_checkpoint(tmp_path / "bare.pth")


def test_init_from_pretrained_reinitialises_only_the_head_and_refuses_the_other_family(tmp_path):
    from aum.checkpoint import init_from_pretrained, save_checkpoint
    _, _, paths = _released(tmp_path)
    torch.manual_seed(5)
    model = aum.create_model("dass_tiny", num_classes=3)
    fresh_head = model.classifier["head"].weight.clone()
    report = init_from_pretrained(model, paths["original"])
    assert report.kind == "dass_original" and sorted(report.missing) == ["classifier.head.bias",
                                                                       "classifier.head.weight"]
    assert any("head of 5 classes dropped: the model has 3 classes" in n for n in report.notes)
    assert torch.equal(model.classifier["head"].weight, fresh_head)
    _, original = tiny_original()
    assert torch.equal(model.layers[2].blocks[1].op.Ds, original["module.v.layers.2.blocks.1.op.Ds"].float())
    headless = aum.create_model("dass_tiny")
    assert init_from_pretrained(headless, paths["hf"]).missing == []
    with pytest.raises(CheckpointMismatchError, match=r"family is 'dass' \(dass_original checkpoint\), the "
                                                      r"model's is 'aum' \(AuM\)"):
        init_from_pretrained(aum.create_model("tiny", depth=1), paths["original"])
    auM = save_checkpoint(aum.create_model("tiny", depth=1), tmp_path / "aum.safetensors", feature_preset="audioset")
    with pytest.raises(CheckpointMismatchError, match=r"family is 'aum' \(aum checkpoint\), the model's is 'dass'"):
        init_from_pretrained(model, auM)
