"""EPIC-Sounds fidelity against the official code (epic-sounds-annotations / AuM ``src/epic_sounds``): the widths
of its frequency and time masks, its 10 s training window with only the first 1024 frames kept, and the recipe
that wires both into the fine-tuning dataset."""
import numpy as np
import pytest
import soundfile as sf
import torch

import eval.ft_data as ft_data
from aum.audio.features import epic_logmel
from eval.augment import epic_spec_augment, spec_augment
from eval.ft_data import FinetuneDataset
from eval.registry import load_benchmark

SR = 24000
CLASSES = ["water"] + [f"c{i}" for i in range(43)]


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py


def _official_mask_mean(param: int) -> float:
    """Expected width of one official mask: f ~ U{0..param-1}, width ~ U{0..f-1} (0 when f = 0)."""
    return (param - 1) * (param - 2) / (4 * param)


def _masked(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Lines along ``dim`` of ``y`` that one fill value covers (a random input has no constant line)."""
    return (y == y.select(1 - dim, 0).unsqueeze(1 - dim)).all(1 - dim)


def _widths(rng, n: int, freqm: int, timem: int, masks: int, fn=epic_spec_augment) -> tuple[float, float]:
    x = torch.rand(1024, 128)
    f = [_masked(fn(x, rng, freqm, 0, masks, masks), 1).sum().item() for _ in range(n)]
    t = [_masked(fn(x, rng, 0, timem, masks, masks), 0).sum().item() for _ in range(n)]
    return float(np.mean(f)), float(np.mean(t))


@pytest.mark.slow
def test_epic_mask_widths_match_the_official_expectation():
    rng = np.random.default_rng(0)
    n = 3000
    # one mask: the exact expectation, 11.26 bins / 47.25 frames (std of one width ~9.5 / ~40: 4 standard errors)
    f1, t1 = _widths(rng, n, 48, 192, 1)
    assert f1 == pytest.approx(_official_mask_mean(48), abs=4 * 9.5 / n ** 0.5)
    assert t1 == pytest.approx(_official_mask_mean(192), abs=4 * 40 / n ** 0.5)
    # the recipe's two masks of each kind: the official mean totals (about 20.5 bins and 93.5 frames), where the
    # torchaudio masks of the AST recipes average about twice that (42.4 / 180.8)
    f2, t2 = _widths(rng, n, 48, 192, 2)
    assert 19.0 < f2 < 22.5 and 88.0 < t2 < 97.0
    fa, ta = _widths(rng, 500, 48, 192, 2, fn=spec_augment)
    assert 38.0 < fa < 46.0 and 170.0 < ta < 192.0


def test_epic_masks_fill_with_the_current_mean_and_leave_the_input():
    x = torch.rand(200, 128)
    before = x.clone()
    rng = np.random.default_rng(3)
    y = epic_spec_augment(x, rng, 48, 0, 1, 1)
    cols = _masked(y, 1)
    assert not torch.equal(x, y) and torch.equal(x, before)         # a copy is masked
    assert torch.allclose(y[:, cols], x.mean().expand(200, int(cols.sum())))
    idx = cols.nonzero().flatten()
    assert idx[-1] - idx[0] + 1 == len(idx)                          # one contiguous stripe
    assert torch.equal(epic_spec_augment(x, np.random.default_rng(1), 48, 192),
                       epic_spec_augment(x, np.random.default_rng(1), 48, 192))
    short = torch.rand(30, 8)                                        # params beyond the axis are capped, no error
    assert epic_spec_augment(short, np.random.default_rng(2), 48, 192).shape == short.shape
    assert torch.equal(epic_spec_augment(x, rng, 0, 0), x)


def _epic_dataset(tmp_path, seconds: float, train: bool):
    wave = (np.random.default_rng(0).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "clip.wav", wave, SR)
    bf = load_benchmark("epic_sounds")
    ds = FinetuneDataset([{"path": str(tmp_path / "clip.wav"), "labels": ["water"]}], CLASSES, bf.benchmark,
                         bf.recipe if train else None)
    return ds, bf


def test_epic_training_crop_is_a_random_10s_window_and_its_first_1024_frames(tmp_path):
    ds, bf = _epic_dataset(tmp_path, 1.0, True)
    assert (bf.benchmark.train_crop, bf.benchmark.train_window_s, bf.recipe.mask_style) == ("window", 10.0, "epic")
    keep = 1024 * 120                          # the samples 1024 frames of a 5 ms hop, 10 ms window see
    rng = np.random.default_rng(0)
    long = torch.arange(16 * SR, dtype=torch.float64)
    offs = []
    for _ in range(1500):
        out = ds._crop(long, rng)
        assert out.numel() == keep
        offs.append(int(out[0]))
    delta = 16 * SR - 10 * SR                  # the window's start is uniform in [0, len - 10 s]
    assert 0 <= min(offs) and max(offs) <= delta and max(offs) > 0.95 * delta
    assert np.mean(offs) == pytest.approx(delta / 2, rel=0.05)
    mid = torch.arange(7 * SR, dtype=torch.float64)                      # shorter than the window: its start
    assert all(int(ds._crop(mid, rng)[0]) == 0 for _ in range(50))
    # the kept samples give exactly the first 1024 frames of the whole window's spectrogram
    wave = torch.randn(12 * SR) * 0.1
    off = 4321
    window = epic_logmel(wave[off:off + 10 * SR], SR)[:1024]
    ours = ds._features(wave[off:off + keep])
    assert ours.shape == (1024, 128) and torch.allclose(ours, window, atol=1e-4)
    ev, _ = _epic_dataset(tmp_path, 1.0, False)                         # evaluation: the start, same length
    assert int(ev._crop(long, rng)[0]) == 0 and ev._crop(long, rng).numel() == keep


def test_epic_training_items_use_the_official_masks(tmp_path, monkeypatch):
    ds, _ = _epic_dataset(tmp_path, 12.0, True)
    calls = []

    def spy(fbank, rng, *args):
        calls.append(args)
        return fbank

    monkeypatch.setattr(ft_data, "epic_spec_augment", spy)
    monkeypatch.setattr(ft_data, "spec_augment", lambda *a, **k: pytest.fail("torchaudio masks on EPIC-Sounds"))
    item = ds[(0, 0)]
    assert item["fbank"].shape == (1024, 128) and calls == [(48, 192, 2, 2)]


def test_recipe_checks_name_the_bad_mask_style_and_window():
    from aum.config import ConfigError
    with pytest.raises(ConfigError, match="recipe.mask_style must be one of"):
        load_benchmark("epic_sounds", ["recipe.mask_style=wide"])
    with pytest.raises(ConfigError, match="benchmark.train_window_s must be > 0"):
        load_benchmark("epic_sounds", ["benchmark.train_window_s=0"])
