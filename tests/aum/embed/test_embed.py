"""aum.embed: column embeddings of any length (windows, stitching, finer hop, timestamps, bounded memory)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from aum import create_model
from aum.embed import (column_embeddings, embed_waveform, fbank_frames, interpolate_columns, pad_value_for,
                       parse_pooling, scene_embedding, shifted_column_embeddings, window_starts)
from aum.embed.windows import _owned_ranges
from aum.audio.features import fbank


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", depth=2).eval()


def _columns(model, x, combine="mean"):
    """Reference: one forward over the whole input, tokens reshaped to columns."""
    with torch.no_grad():
        out = model.forward_features(x)
    f, t = out.grid
    tok = out.tokens.reshape(x.shape[0], f, t, -1)
    return tok.mean(1) if combine == "mean" else tok.permute(0, 2, 1, 3).reshape(x.shape[0], t, -1)


@pytest.mark.parametrize("combine", ["mean", "concat"])
def test_one_window_equals_whole_clip_pass(model, combine):
    x = torch.randn(2, 300, 128)
    emb, times = column_embeddings(model, x, window_frames=1024, pad_to_window=False, combine=combine)
    ref = _columns(model, x, combine)
    assert emb.shape == ref.shape == (2, 18, 192 * (8 if combine == "concat" else 1))
    torch.testing.assert_close(emb, ref)
    assert times.dtype == torch.float64
    torch.testing.assert_close(times, 87.5 + 160.0 * torch.arange(18, dtype=torch.float64))
    single, _ = column_embeddings(model, x[1], window_frames=1024, pad_to_window=False, combine=combine)
    torch.testing.assert_close(single, ref[1])


def test_pad_to_window_is_the_padded_training_input(model):
    x = torch.randn(1, 200, 128)
    emb, _ = column_embeddings(model, x, window_frames=512, pad_value=-0.5)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 312), value=-0.5)
    torch.testing.assert_close(emb, _columns(model, padded)[:, :12])


def test_windows_tile_and_each_column_comes_from_its_most_central_window():
    for n, w, h in [(100, 16, 8), (37, 10, 3), (64, 64, 32), (65, 64, 32), (5, 8, 4), (200, 32, 24)]:
        starts = window_starts(n, w, h)
        assert starts[0] == 0 and starts[-1] == max(0, n - w)
        ranges = _owned_ranges(starts, w, n)
        covered = [c for a, b in ranges for c in range(a, b)]
        assert covered == list(range(n))
        for k, (a, b) in enumerate(ranges):
            for c in range(a, b):
                assert starts[k] <= c < starts[k] + w
                best = max(min(c - s, s + w - 1 - c) for s in starts if s <= c < s + w)
                assert min(c - starts[k], starts[k] + w - 1 - c) == best


def test_stitched_columns_match_their_own_window(model):
    x = torch.randn(1, 800, 128)                           # 50 columns; windows of 16 columns, hop 8
    emb, times = column_embeddings(model, x, window_frames=256, hop_frames=128, batch_size=3)
    assert emb.shape == (1, 50, 192)
    starts = window_starts(50, 16, 8)
    for k, (a, b) in enumerate(_owned_ranges(starts, 16, 50)):
        ref = _columns(model, x[:, starts[k] * 16:starts[k] * 16 + 256])
        torch.testing.assert_close(emb[:, a:b], ref[:, a - starts[k]:b - starts[k]])
    whole = _columns(model, x)                              # context differs, but not by much
    assert torch.nn.functional.cosine_similarity(emb, whole, dim=-1).mean() > 0.5


def test_shifted_columns_interleave_genuine_patch_columns(model):
    x = torch.randn(1, 301, 128)
    emb, times = shifted_column_embeddings(model, x, shifts=4, pad_to_window=False)
    n = (301 - 16) // 4 + 1
    assert emb.shape == (1, n, 192)
    torch.testing.assert_close(times, 87.5 + 40.0 * torch.arange(n, dtype=torch.float64))
    for k in range(4):
        ref = _columns(model, x[:, 4 * k:])
        torch.testing.assert_close(emb[:, k::4], ref[:, :len(range(k, n, 4))])
    with pytest.raises(ValueError, match="divide"):
        shifted_column_embeddings(model, x, shifts=3)


def test_interpolate_columns():
    emb = torch.tensor([[0.0, 10.0], [4.0, 20.0], [8.0, 40.0]])
    t = torch.tensor([0.0, 160.0, 320.0], dtype=torch.float64)
    q = torch.tensor([-40.0, 0.0, 40.0, 160.0, 240.0, 400.0], dtype=torch.float64)
    out = interpolate_columns(emb, t, q)
    torch.testing.assert_close(out, torch.tensor([[0.0, 10.0], [0.0, 10.0], [1.0, 12.5], [4.0, 20.0],
                                                  [6.0, 30.0], [8.0, 40.0]]))
    torch.testing.assert_close(interpolate_columns(emb[:1], t[:1], q), emb[:1].expand(6, 2))


def test_chunked_fbank_equals_whole():
    wave = torch.randn(16000 * 3 + 123) * 0.1 + 0.05      # with a DC offset
    whole = fbank(wave)
    chunked = fbank_frames(wave, chunk_frames=37)
    assert chunked.shape == whole.shape == (1 + (wave.numel() - 400) // 160, 128)
    torch.testing.assert_close(chunked, whole, atol=2e-3, rtol=1e-4)
    assert fbank_frames(torch.zeros(50)).shape == (1, 128)


@pytest.mark.parametrize("seconds", [0.0, 0.01, 0.05, 1.07, 1.98, 5.0])
@pytest.mark.parametrize("method,hop", [("shift", 40.0), ("interp", 40.0), ("interp", 25.0), ("native", 160.0)])
def test_embed_waveform_timestamps(model, seconds, method, hop):
    wave = torch.rand(2, int(seconds * 16000)) * 2 - 1
    emb, times = embed_waveform(model, wave, hop_ms=hop, method=method, pad_to_window=False)
    end = 1000.0 * seconds
    assert emb.dtype == torch.float32 and bool(torch.isfinite(emb).all())
    assert emb.shape == (2, len(times), 192)
    torch.testing.assert_close(times, hop * torch.arange(len(times), dtype=torch.float64))
    assert times[0] == 0.0 and float(times[-1]) <= end + 1e-9 and float(times[-1]) > end - hop


def test_embed_waveform_native_is_the_plain_column_pass(model):
    wave = torch.rand(16000 * 2) * 2 - 1
    emb, times = embed_waveform(model, wave, method="native", preset="none", pad_to_window=False)
    assert len(times) == 13                                 # 0, 160, ..., 1920 ms
    # 87.5 ms (1400 samples) of zeros in front; behind, enough for the column at 1920 ms: frames up to
    # 192 + 16 -> (208 - 1) * 160 + 400 samples in all
    padded = torch.nn.functional.pad(wave, (1400, 207 * 160 + 400 - 1400 - wave.numel()))
    ref, ref_t = column_embeddings(model, fbank(padded), pad_to_window=False)
    torch.testing.assert_close(emb, ref)
    torch.testing.assert_close(times, ref_t - 87.5)


def test_scene_embedding_pooling(model):
    wave = torch.rand(3, 24000) * 2 - 1
    mean = scene_embedding(model, wave, pooling="mean")
    both = scene_embedding(model, wave, pooling="cls+mean")
    assert mean.shape == (3, 192) and both.shape == (3, 384) and mean.dtype == torch.float32
    torch.testing.assert_close(both[:, 192:], mean)
    torch.testing.assert_close(scene_embedding(model, wave[1], pooling="mean"), mean[1])
    headless = create_model("tiny", depth=1, cls_position="none")
    with pytest.raises(ValueError, match="class token"):
        scene_embedding(headless, wave, pooling="cls")


@pytest.mark.slow
def test_several_layers_in_one_pass_match_one_layer_at_a_time():
    """Long audio (several windows) and the class-token average: a list of layers gives what each layer alone
    gives; the encoder runs once per window batch, not once per layer."""
    torch.manual_seed(3)
    model = create_model("tiny", depth=3).eval()
    feats = torch.randn(2, 700, 128)
    calls = []
    model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    many, times, cls = column_embeddings(model, feats, window_frames=256, layer=[1, 3], combine="concat",
                                         return_cls=True)
    first_block_runs = len(calls)
    column_embeddings(model, feats, window_frames=256, layer=3)
    assert len(calls) == 2 * first_block_runs                # two layers cost what one costs
    for j, n in enumerate([1, 3]):
        one, t1, c1 = column_embeddings(model, feats, window_frames=256, layer=n, combine="concat", return_cls=True)
        torch.testing.assert_close(many[j], one)
        torch.testing.assert_close(cls[j], c1)
        torch.testing.assert_close(times, t1)
    wave = torch.rand(2, 30000) * 2 - 1
    pooled = scene_embedding(model, wave, pooling="mean+max", layer=[2, 3], pad_to_window=False)
    torch.testing.assert_close(pooled[1], scene_embedding(model, wave, pooling="mean+max", layer=3,
                                                          pad_to_window=False))


def test_scene_mean_max_pooling_is_the_columns_mean_then_max(model):
    """``mean+max`` against the column embeddings pooled by hand (per clip, real columns only)."""
    wave = torch.rand(2, 40000) * 2 - 1                      # 2.5 s: shorter than a window, so padded
    pooled = scene_embedding(model, wave, pooling="mean+max", combine="concat", preset="none")
    assert pooled.shape == (2, 2 * 8 * 192)
    for i in range(2):
        cols, _ = column_embeddings(model, fbank(wave[i]), combine="concat")
        torch.testing.assert_close(pooled[i], torch.cat([cols.mean(0), cols.amax(0)]))
    max_first = scene_embedding(model, wave, pooling="max+mean", combine="concat", preset="none")
    torch.testing.assert_close(max_first, torch.cat([pooled[:, 8 * 192:], pooled[:, :8 * 192]], dim=1))


@pytest.mark.parametrize("bad", ["sum", "mean+mean", "", "mean+"])
def test_parse_pooling_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="joined by"):
        parse_pooling(bad)
    assert parse_pooling("cls+mean+max") == ["cls", "mean", "max"]


def test_pad_value_is_normalised_zero():
    assert pad_value_for("none") == 0.0
    assert pad_value_for("audioset") == pytest.approx(4.2677393 / (2 * 4.5689974))


_MEM_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from aum import create_model
    from aum.embed import embed_waveform
    def status(key):
        for line in open('/proc/self/status'):
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    torch.manual_seed(0)
    model = create_model('tiny', depth=2).eval()
    mode = sys.argv[1]
    if mode == 'whole':
        x = torch.randn(1, 60000, 128)
    else:
        wave = torch.rand(16000 * 600) * 2 - 1                      # 10 minutes
    open('/proc/self/clear_refs', 'w').write('5')                   # reset the peak (VmHWM) to now
    base = status('VmRSS:')
    with torch.no_grad():
        if mode == 'whole':
            n = model.forward_features(x).tokens.shape[1]
            out = {'tokens': n}
        else:
            emb, times = embed_waveform(model, wave, method='native', batch_size=4)
            d = torch.diff(times)
            out = {'n': len(times), 'first': float(times[0]), 'last': float(times[-1]),
                   'hop_min': float(d.min()), 'hop_max': float(d.max()), 'finite': bool(torch.isfinite(emb).all()),
                   'shape': list(emb.shape)}
    out['growth_mib'] = status('VmHWM:') - base
    print(json.dumps(out))
""")


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_ten_minutes_in_bounded_memory(tmp_path):
    script = tmp_path / "mem.py"
    script.write_text(_MEM_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(mode):
        res = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    windowed, whole = run("windowed"), run("whole")
    assert windowed["n"] == 600_000 // 160 + 1 and windowed["shape"] == [windowed["n"], 192]
    assert windowed["first"] == 0.0 and windowed["last"] == 600_000.0
    assert windowed["hop_min"] == windowed["hop_max"] == 160.0
    assert windowed["finite"]
    # one whole pass over 60000 frames needs several hundred MiB; the windows need a small fraction of it
    assert whole["growth_mib"] > 300, whole
    assert windowed["growth_mib"] < 0.4 * whole["growth_mib"], (windowed, whole)
