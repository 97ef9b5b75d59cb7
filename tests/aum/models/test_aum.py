"""The AuM encoder: sizes, mixer semantics, class-token placement, bidirectionality, any input length."""
import pytest
import torch
import torch.nn.functional as F

from aum.models import AuM, AuMConfig, create_model, list_models
from aum.models.registry import PRESETS, model_config, preset_fields
from aum.modules import MambaMixer
from aum.ops import causal_conv1d, selective_scan_reference


def tiny(**kw):
    torch.manual_seed(0)
    kw.setdefault("depth", 2)
    return create_model("tiny", **kw).double().eval()


def fbank(frames=64, batch=2, seed=0):
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("name,mixer,expected_m", [("base", "v1", 92.1), ("small", "v2", 25.5)])
def test_parameter_counts_match_the_paper(name, mixer, expected_m):
    with torch.device("meta"):
        model = create_model(name, mixer=mixer, num_classes=527)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == expected_m


def test_presets_and_unknown_names():
    assert list_models() == ["base", "small", "tiny"]
    with torch.device("meta"):
        m = create_model("small")
    assert m.embed_dim == 384 and len(m.layers) == 24 and m.layers[0].mixer.dt_rank == 24
    assert m.layers[0].mixer.d_inner == 768 and m.pos_embed.pos_embed.shape == (1, 513, 384)
    with pytest.raises(KeyError, match="valid presets"):
        create_model("huge")
    with pytest.raises(KeyError, match="valid keys"):
        create_model("tiny", embed_dimm=3)
    with pytest.raises(ValueError, match="mixer"):
        create_model("tiny", mixer="v3")


@pytest.mark.parametrize("lookup", [create_model, model_config, preset_fields])
def test_an_unknown_preset_is_a_clear_key_and_value_error(lookup):
    with pytest.raises(ValueError) as err:
        lookup("huge")
    assert isinstance(err.value, KeyError)                    # still caught by ``except KeyError``
    assert str(err.value) == "unknown AuM preset 'huge'; valid presets: base, small, tiny"   # no repr quotes
    assert preset_fields("small") == {"embed_dim": 384} and preset_fields("small") is not PRESETS["small"]


def _mixer_by_hand(m: MambaMixer, hidden):
    """Independent composition of the reference scan with explicit flips, per docs/models.md."""
    x, z = F.linear(hidden, m.in_proj.weight).transpose(1, 2).chunk(2, dim=1)

    def params(conv, x_proj, dt_proj, xin):
        xc = causal_conv1d(xin, conv.weight, conv.bias)
        dbl = F.linear(xc.transpose(1, 2), x_proj.weight)
        dt, B, C = torch.split(dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
        return xc, F.linear(dt, dt_proj.weight).transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def scan(xc, delta, A_log, B, C, D, zz, bias):
        return selective_scan_reference(xc, delta, -torch.exp(A_log), B, C, D, zz, bias, True)

    xc, delta, B, C = params(m.conv1d, m.x_proj, m.dt_proj, x)
    fwd = scan(xc, delta, m.A_log, B, C, m.D, z, m.dt_proj.bias)
    if m.direction == "none":
        y = fwd
    elif m.direction == "v1":   # same conv/delta/B/C/D/z, own A_b; flipped; SUM
        f = lambda t: t.flip(-1)  # noqa: E731
        y = fwd + f(scan(f(xc), f(delta), m.A_b_log, f(B), f(C), m.D, f(z), m.dt_proj.bias))
    else:                       # own branch on the flipped input and flipped gate; AVERAGE
        xb, db, Bb, Cb = params(m.conv1d_b, m.x_proj_b, m.dt_proj_b, x.flip(-1))
        y = (fwd + scan(xb, db, m.A_b_log, Bb, Cb, m.D_b, z.flip(-1), m.dt_proj_b.bias).flip(-1)) / 2
    return F.linear(y.transpose(1, 2), m.out_proj.weight)


@pytest.mark.parametrize("direction", ["none", "v1", "v2"])
def test_mixer_semantics(direction):
    torch.manual_seed(1)
    m = MambaMixer(16, direction=direction).double()
    with torch.no_grad():                       # make the backward parameters differ from the forward ones
        for name, p in m.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    hidden = torch.randn(2, 11, 16, dtype=torch.float64)
    torch.testing.assert_close(m(hidden), _mixer_by_hand(m, hidden), rtol=1e-10, atol=1e-10)
    extra = {"none": set(), "v1": {"A_b_log"},
             "v2": {"A_b_log", "D_b", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight",
                    "dt_proj_b.weight", "dt_proj_b.bias"}}[direction]
    base = {"A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
            "dt_proj.weight", "dt_proj.bias", "out_proj.weight"}
    assert set(dict(m.named_parameters())) == base | extra


def test_v1_counts_the_skip_twice():
    """With B = C = 0 the scan contributes nothing: v1 output is 2*D*u*silu(z), v2 is the D/D_b average."""
    torch.manual_seed(0)
    for direction, factor in [("v1", 2.0), ("v2", 1.0), ("none", 1.0)]:
        m = MambaMixer(8, direction=direction).double()
        with torch.no_grad():
            m.x_proj.weight[m.dt_rank:].zero_()
            if direction == "v2":
                m.x_proj_b.weight[m.dt_rank:].zero_()
                m.conv1d_b.load_state_dict(m.conv1d.state_dict())
        h = torch.randn(1, 5, 8, dtype=torch.float64)
        x, z = F.linear(h, m.in_proj.weight).transpose(1, 2).chunk(2, dim=1)
        u = causal_conv1d(x, m.conv1d.weight, m.conv1d.bias)
        if direction == "v2":     # the backward branch convolves the flipped input
            ub = causal_conv1d(x.flip(-1), m.conv1d.weight, m.conv1d.bias).flip(-1)
            y = (m.D[:, None] * u + m.D_b[:, None] * ub) / 2 * F.silu(z)
        else:
            y = factor * m.D[:, None] * u * F.silu(z)
        torch.testing.assert_close(m(h), F.linear(y.transpose(1, 2), m.out_proj.weight))


@pytest.mark.parametrize("mixer", ["v1", "v2"])
def test_bidirectional_mixers_see_the_last_patch_from_the_class_token(mixer):
    model = tiny(mixer=mixer, cls_position="head")
    x = fbank()
    x2 = x.clone()
    x2[:, -16:, -16:] += 3.0                      # last patch (highest frequency, last time step)
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(x2)
    assert (a.cls - b.cls).abs().max() > 1e-6


def test_forward_only_mixer_is_causal():
    model = tiny(mixer="none", cls_position="head")
    x = fbank()
    x2 = x.clone()
    x2[:, -16:, -16:] += 3.0
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(x2)
    torch.testing.assert_close(a.cls, b.cls, rtol=0, atol=0)             # head token precedes everything
    assert (a.tokens[:, -1] - b.tokens[:, -1]).abs().max() > 1e-6
    # the middle token sees the first patch (before it) but not the last one
    mid = tiny(mixer="none", cls_position="middle")
    x3 = x.clone()
    x3[:, :16, :16] += 3.0
    with torch.no_grad():
        base, late, early = (mid.forward_features(t).cls for t in (x, x2, x3))
    torch.testing.assert_close(base, late, rtol=0, atol=0)
    assert (base - early).abs().max() > 1e-6


@pytest.mark.parametrize("position,index", [("head", 0), ("middle", 16), ("tail", 32)])
def test_class_token_placement_and_position_slot(position, index):
    model = tiny(cls_position=position)
    with torch.no_grad():
        model.pos_embed.pos_embed[:, 0] = 7.0    # the class slot is index 0 of the stored embedding
        seq, grid, idx = model.embed(fbank(frames=64))
    assert grid == (8, 4) and idx == index and seq.shape[1] == 33
    torch.testing.assert_close(seq[:, idx], (model.cls_token[0, 0] + 7.0).expand(2, -1))
    others = torch.cat([seq[:, :idx], seq[:, idx + 1:]], dim=1)
    assert not torch.isclose(others, torch.full_like(others, 7.0)).all(dim=-1).any()
    out = model.forward_features(fbank(frames=64))
    assert out.tokens.shape == (2, 32, 192) and out.cls.shape == (2, 192)
    torch.testing.assert_close(out.pooled, out.cls)


def test_no_class_token_mean_pools():
    model = tiny(cls_position="none", num_classes=3)
    assert model.pos_embed.pos_embed.shape[1] == 512 and not hasattr(model, "cls_token")
    out = model.forward_features(fbank())
    assert out.cls is None
    torch.testing.assert_close(out.pooled, out.tokens.mean(1))
    torch.testing.assert_close(out.logits, model.head(out.pooled))


def test_forward_layers_reads_each_layer_in_one_pass():
    """Against the blocks run by hand: residual stream after n blocks, through norm_f, class token removed."""
    model = tiny(depth=4, num_classes=3)
    x = fbank()
    with torch.no_grad():
        outs = model.forward_layers(x, [3, 1, 4])
        emb, grid, idx = model.embed(x)
        hidden, residual, ref = emb, None, {}
        for n, block in enumerate(model.layers, start=1):
            hidden, residual = block(hidden, residual)
            ref[n] = model.norm_f(residual + hidden)
    for n, out in zip([3, 1, 4], outs):
        torch.testing.assert_close(out.cls, ref[n][:, idx])
        torch.testing.assert_close(out.tokens, torch.cat([ref[n][:, :idx], ref[n][:, idx + 1:]], dim=1))
        torch.testing.assert_close(out.logits, model.head(ref[n][:, idx]))
    torch.testing.assert_close(model.forward_features(x, layer=3).tokens, outs[0].tokens)
    with pytest.raises(ValueError, match="layer must be in 1..4"):
        model.forward_layers(x, [0, 2])


def test_patch_tokens_are_frequency_major():
    model = tiny(cls_position="none")
    x = torch.zeros(1, 64, 128, dtype=torch.float64)
    x[0, 16:32, 32:48] = 1.0                       # time patch 1, frequency patch 2
    with torch.no_grad():
        tokens = model.patch_embed(x.unsqueeze(1).transpose(2, 3))
    bias = model.patch_embed.proj.bias
    changed = [i for i in range(tokens.shape[1]) if not torch.allclose(tokens[0, i], bias)]
    assert changed == [2 * 4 + 1]                  # index = f * T' + t


@pytest.mark.parametrize("frames,grid", [(500, (8, 31)), (6000, (8, 375)), (16, (8, 1)), (1030, (8, 64))])
def test_any_length_interpolates_positions(frames, grid):
    model = tiny(depth=1).float()
    out = model.forward_features(fbank(frames=frames, batch=1).float())
    assert out.grid == grid and out.tokens.shape == (1, grid[0] * grid[1], 192)
    assert torch.isfinite(out.tokens).all()


def test_position_resize_is_identity_on_the_native_grid_and_matches_interpolate():
    model = tiny()
    pos = model.pos_embed.pos_embed[:, 1:]
    _, same = model.pos_embed((8, 64))
    torch.testing.assert_close(same, pos)
    _, resized = model.pos_embed((8, 31))
    img = pos.reshape(1, 8, 64, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(img, size=(8, 31), mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized, expected.reshape(1, 8 * 31, -1))


def test_bad_inputs_are_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="128"):
        model(torch.zeros(1, 100, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than one"):
        model(torch.zeros(1, 10, 128, dtype=torch.float64))


@pytest.mark.parametrize("mixer", ["none", "v1", "v2"])
def test_gradients_reach_every_parameter(mixer):
    torch.manual_seed(0)
    model = create_model("tiny", depth=2, mixer=mixer, num_classes=4)
    loss = model(torch.randn(2, 48, 128)).logsumexp(-1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_residual_stream_stays_fp32_under_bf16_autocast():
    model = create_model("tiny", depth=1)
    block = model.layers[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden, residual = block(torch.randn(1, 10, 192, dtype=torch.bfloat16))
        out = model(torch.randn(1, 32, 128))
    assert residual.dtype == torch.float32 and torch.isfinite(out.float()).all()


def test_intermediate_layer_readout():
    model = tiny(depth=3)
    x = fbank()
    with torch.no_grad():
        full = model.forward_features(x)
        last = model.forward_features(x, layer=3)
        first = model.forward_features(x, layer=1)
    torch.testing.assert_close(full.pooled, last.pooled)
    assert not torch.allclose(first.pooled, full.pooled)
    with pytest.raises(ValueError, match="layer"):
        model.forward_features(x, layer=4)


def test_config_round_trip_and_classifier_reset():
    cfg = AuMConfig(embed_dim=32, depth=1, mixer="v2", cls_position="tail", num_classes=5)
    assert AuMConfig.from_dict(cfg.to_dict()) == cfg
    model = AuM(cfg)
    model.reset_classifier(0)
    assert model(torch.randn(1, 16, 128)).shape == (1, 32)
