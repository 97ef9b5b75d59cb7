"""DASS encoder: sizes, interface, read-outs, cross-scan directions (against a naive loop), converters, and the
checkpoints: our format and both released formats through load_checkpoint / init_from_pretrained."""
import logging
import math

import pytest
import torch
import torch.nn.functional as F

import aum
from aum.checkpoint import CheckpointError, CheckpointMismatchError
from aum.models import dass as dass_mod
from aum.models.dass import DASS, SS2D, DASSConfig, cross_merge, cross_scan
from aum.checkpoint.official_dass import (dass_config_from_state_dict, dass_format, dass_state_dict_from_hf,
                                     dass_state_dict_from_original)
from aum.models.registry import list_models


def tiny(**kw):
    torch.manual_seed(0)
    return aum.create_model("dass_tiny", **kw).double().eval()


def fbank(frames=64, batch=2, seed=0):
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- sizes and presets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params,tensors", [("dass_small", 29_884_463, 276), ("dass_medium", 48_648_239, 492)])
def test_parameter_counts_match_the_released_models(name, params, tensors):
    with torch.device("meta"):
        model = aum.create_model(name, num_classes=527)
    assert isinstance(model, DASS)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == tensors


def test_presets_are_listed_per_family_and_drop_path_rises_linearly():
    assert list_models("dass") == ["dass_medium", "dass_small", "dass_tiny"]
    assert list_models() == ["base", "small", "tiny"]                  # the AuM callers' list is unchanged
    assert list_models("all") == ["base", "small", "tiny", "dass_medium", "dass_small", "dass_tiny"]
    with pytest.raises(ValueError, match="unknown model family 'vit'"):
        list_models("vit")
    with torch.device("meta"):
        small = aum.create_model("dass_small")
    rates = [b.drop_prob for stage in small.layers for b in stage.blocks]
    assert rates == pytest.approx([0.2 * j / 13 for j in range(14)])
    assert [b.op.dt_rank for b in (s.blocks[0] for s in small.layers)] == [6, 12, 24, 48]
    with pytest.raises(KeyError, match="unknown DASS config key"):
        aum.create_model("dass_tiny", embed_dim=8)


# -- interface -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [64, 77])
def test_forward_features_tokens_grid_pooled_logits(frames):
    model = tiny(num_classes=5)
    maps = {}
    model.classifier["norm"].register_forward_hook(lambda m, i, o: maps.setdefault("normed", o))
    with torch.no_grad():
        out = model.forward_features(fbank(frames))
    expected_grid = (4, math.ceil(frames / 32))
    assert out.grid == model.token_grid(frames) == expected_grid
    assert out.tokens.shape == (2, expected_grid[0] * expected_grid[1], 192) and out.cls is None
    normed = maps["normed"]                                         # [B, C, H = freq, W = time]
    assert normed.shape == (2, 192, *expected_grid)
    assert torch.equal(out.tokens[:, 1 * expected_grid[1] + 0], normed[:, :, 1, 0])     # index = f * W + t
    assert torch.allclose(out.pooled, normed.mean((2, 3)))
    assert torch.allclose(out.logits, model.classifier["head"](normed.mean((2, 3))))
    assert torch.equal(model(fbank(frames)), out.logits)
    assert model.embed_dim == 192 and not model.has_cls and model.feature_preset == "audioset"
    assert model.frame_multiple() == 32


def test_read_outs_per_block_one_pass_widths_and_norms():
    model = tiny(num_classes=3)
    x = fbank(64)
    assert model.num_layers == 5 and [model.layer_dim(n) for n in range(1, 6)] == [24, 48, 96, 96, 192]
    with torch.no_grad():
        many = model.forward_layers(x, [5, 1, 3])
        singles = [model.forward_features(x, layer=n) for n in (5, 1, 3)]
        after_block = {}
        model.layers[2].blocks[0].register_forward_hook(lambda m, i, o: after_block.setdefault(3, o))
        model.forward_features(x, layer=3)
    for a, b in zip(many, singles):
        assert torch.allclose(a.tokens, b.tokens) and a.grid == b.grid
    assert many[0].grid == model.token_grid(64) and many[0].logits is not None
    assert many[1].grid == model.token_grid(64, layer=1) == (32, 16) and many[1].tokens.shape[-1] == 24
    assert many[1].logits is None and many[2].logits is None
    raw = after_block[3]                                 # earlier stages: parameter-free LayerNorm over channels
    expected = F.layer_norm(raw.permute(0, 2, 3, 1), (96,), eps=1e-5).flatten(1, 2)
    assert torch.allclose(many[2].tokens, expected)
    assert torch.allclose(model.forward_features(x).tokens, many[0].tokens)
    for bad in (0, 6):
        with pytest.raises(ValueError, match=r"layer must be in 1\.\.5"):
            model.forward_features(x, layer=bad)
    with pytest.raises(ValueError, match=r"\[batch, frames >= 1, 128\]"):
        model.forward_features(x[..., :64])


@pytest.mark.parametrize("name,family,layers,width,multiple,grid", [
    ("dass_tiny", "dass", 5, 192, 32, (4, 3)), ("tiny", "aum", 2, 192, 16, (8, 5))])
def test_both_families_describe_themselves_alike(name, family, layers, width, multiple, grid):
    torch.manual_seed(0)
    model = aum.create_model(name, **({"depth": 2} if family == "aum" else {})).double().eval()
    assert (model.family, model.num_layers, model.layer_dim(), model.frame_multiple()) == (family, layers, width,
                                                                                              multiple)
    with torch.no_grad():
        out = model.forward_features(fbank(80, batch=1), layer=model.num_layers)
    assert model.token_grid(80) == out.grid == grid and out.tokens.shape[-1] == model.layer_dim(model.num_layers)


def test_drop_path_is_identity_at_eval_and_active_in_training():
    torch.manual_seed(0)
    model = aum.create_model("dass_tiny", drop_path_rate=0.5).double()
    plain = DASS(DASSConfig.from_dict({**model.config.to_dict(), "drop_path_rate": 0.0})).double()
    plain.load_state_dict(model.state_dict())
    x = fbank(32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain.eval()(x))
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, model(x))


# -- cross-scan directions against a naive loop ------------------------------------------------------------
def naive_ss2d(op: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D of one map ``[C, H, W]`` in float64, from docs/models.md: explicit orderings of the grid per
    direction, one recurrence step per position, the four outputs summed back at their positions."""
    ch, height, width = x.shape
    r, n, length = op.dt_rank, op.d_state, height * width
    u_map = torch.einsum("oc,chw->ohw", op.in_proj.weight, x)
    u_map = F.silu(F.conv2d(u_map[None], op.conv2d.weight, padding=1, groups=ch)[0])
    row_major = [(p // width, p % width) for p in range(length)]       # k = 0: time fastest
    col_major = [(p % height, p // height) for p in range(length)]     # k = 1: frequency fastest
    orders = [row_major, col_major, row_major[::-1], col_major[::-1]]
    a = -torch.exp(op.A_logs)
    y = torch.zeros_like(u_map)
    for k, order in enumerate(orders):
        own = slice(k * ch, (k + 1) * ch)
        h = torch.zeros(ch, n, dtype=x.dtype)
        for fi, ti in order:
            u = u_map[:, fi, ti]
            dbl = op.x_proj_weight[k] @ u
            dt, b_in, c_out = dbl[:r], dbl[r:r + n], dbl[r + n:]
            delta = F.softplus(op.dt_projs_weight[k] @ dt + op.dt_projs_bias[k])
            h = torch.exp(delta[:, None] * a[own]) * h + delta[:, None] * b_in[None, :] * u[:, None]
            y[:, fi, ti] += h @ c_out + op.Ds[own] * u
    y = F.layer_norm(y.permute(1, 2, 0), (ch,), op.out_norm.weight, op.out_norm.bias, op.out_norm.eps)
    return torch.einsum("oc,hwc->ohw", op.out_proj.weight, y)


def scan_dominated(d_state=1, dim=6, seed=0) -> SS2D:
    """An SS2D whose output is carried by the recurrence: D near 0, steps ~0.5-1.5, varied decays, O(1) B/C."""
    g = torch.Generator().manual_seed(seed)
    op = SS2D(dim, d_state=d_state).double()
    with torch.no_grad():
        for p in (op.in_proj.weight, op.out_proj.weight, op.conv2d.weight):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        op.x_proj_weight.copy_(torch.randn(op.x_proj_weight.shape, generator=g, dtype=torch.float64) * 0.6)
        op.dt_projs_weight.copy_(torch.randn(op.dt_projs_weight.shape, generator=g, dtype=torch.float64) * 0.3)
        op.dt_projs_bias.copy_(0.5 + 0.3 * torch.randn(op.dt_projs_bias.shape, generator=g, dtype=torch.float64))
        op.A_logs.copy_(torch.log(0.2 + torch.rand(op.A_logs.shape, generator=g, dtype=torch.float64)))
        op.Ds.copy_(0.01 * torch.randn(op.Ds.shape, generator=g, dtype=torch.float64))
    return op


def _rel_error(op, x):
    with torch.no_grad():
        ours = op(x)
        ref = torch.stack([naive_ss2d(op, xi) for xi in x])
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("d_state", [1, 2])
def test_ss2d_matches_the_naive_cross_scan(d_state):
    x = torch.randn(2, 6, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)   # H != W
    assert _rel_error(scan_dominated(d_state), x) < 1e-10


def _rows_for_cols_scan(x):
    rows = x.flatten(2)
    return torch.stack([rows, rows, rows.flip(-1), rows.flip(-1)], dim=1)


def _rows_for_cols_merge(ys, h, w):
    b, _, c, _ = ys.shape
    return (ys[:, 0] + ys[:, 1] + ys[:, 2].flip(-1) + ys[:, 3].flip(-1)).view(b, c, h, w)


def _unreversed_scan(x):
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows, cols.flip(-1)], dim=1)


def _unreversed_merge(ys, h, w):
    b, _, c, _ = ys.shape
    return ((ys[:, 0] + ys[:, 2]).view(b, c, h, w)
            + (ys[:, 1] + ys[:, 3].flip(-1)).view(b, c, w, h).transpose(2, 3))


def _merge_without_unflip(ys, h, w):
    b, _, c, _ = ys.shape
    return (ys[:, 0] + ys[:, 2]).view(b, c, h, w) + (ys[:, 1] + ys[:, 3]).view(b, c, w, h).transpose(2, 3)


def _merge_without_transpose(ys, h, w):
    b, _, c, _ = ys.shape
    return (ys[:, 0] + ys[:, 2].flip(-1)).view(b, c, h, w) + (ys[:, 1] + ys[:, 3].flip(-1)).view(b, c, h, w)


def _swap_b_c(inputs):
    def patched(self, x):
        xs, dts, bs, cs = inputs(self, x)
        return xs, dts, cs, bs
    return patched


MISTAKES = {
    "column direction scanned row-major": {"cross_scan": _rows_for_cols_scan, "cross_merge": _rows_for_cols_merge},
    "direction 2 not reversed": {"cross_scan": _unreversed_scan, "cross_merge": _unreversed_merge},
    "merge forgets to un-reverse": {"cross_merge": _merge_without_unflip},
    "merge forgets to transpose": {"cross_merge": _merge_without_transpose},
    "B and C swapped": {"SS2D.scan_inputs": _swap_b_c(SS2D.scan_inputs)},
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_direction_mistake_is_caught(mistake, monkeypatch):
    x = torch.randn(2, 6, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = scan_dominated()
    assert _rel_error(op, x) < 1e-10
    for name, fn in MISTAKES[mistake].items():
        if name.startswith("SS2D."):
            monkeypatch.setattr(SS2D, name.split(".")[1], fn)
        else:
            monkeypatch.setattr(dass_mod, name, fn)
    assert _rel_error(op, x) > 0.05


def test_cross_scan_orders_and_merge_round_trip():
    x = torch.arange(6.0).view(1, 1, 2, 3)                       # [[0 1 2], [3 4 5]]: H = 2 rows, W = 3
    xs = cross_scan(x)[0, :, 0]
    assert xs.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert torch.equal(cross_merge(cross_scan(x), 2, 3), 4 * x)


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
