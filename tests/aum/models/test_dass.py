"""DASS encoder: sizes, interface, read-outs, cross-scan directions (against a naive loop). Its checkpoint formats:
tests/aum/checkpoint/test_official_dass.py."""
import math

import pytest
import torch
import torch.nn.functional as F

import aum
from aum.models import dass as dass_mod
from aum.models.dass import DASS, SS2D, DASSConfig, cross_merge, cross_scan
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
