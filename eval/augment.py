"""Training augmentations of the fine-tuning recipes, each driven by an explicit ``numpy.random.Generator`` so that a
clip's augmentation depends only on ``(seed, epoch, position)`` and a resumed run repeats it exactly.

* :func:`mix_waves` / :func:`mixup_lambda`: AST/AuM waveform mixup (lambda ~ Beta(10, 10), labels mixed alike).
* :func:`spec_augment`: torchaudio ``FrequencyMasking`` / ``TimeMasking`` on the (un-normalised) fbank (AST/AuM).
* :func:`epic_spec_augment`: the EPIC-Sounds masks, whose widths are drawn differently (half as wide on average).
* :func:`time_warp`: SpecAugment time warping (EPIC-Sounds; not the official code's warp, see there).
* :func:`noise_and_roll`: Speech Commands' small uniform noise and random time roll, after normalisation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

__all__ = ["mixup_lambda", "mix_waves", "mix_targets", "spec_augment", "epic_spec_augment", "time_warp",
           "noise_and_roll"]


def mixup_lambda(rng: np.random.Generator, alpha: float = 10.0) -> float:
    """The mixing weight of the first clip: a draw from Beta(alpha, alpha)."""
    return float(rng.beta(alpha, alpha))


def mix_waves(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """AST/AuM waveform mixup: both clips lose their DC offset, ``second`` is zero-padded or cut to the length of
    ``first``, the mix ``lam * first + (1 - lam) * second`` loses its DC offset again."""
    a, b = first - first.mean(), second - second.mean()
    b = F.pad(b, (0, first.numel() - b.numel())) if b.numel() < first.numel() else b[:first.numel()]
    mixed = lam * a + (1.0 - lam) * b
    return mixed - mixed.mean()


def mix_targets(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """Labels of a mixed clip: ``lam * first + (1 - lam) * second``."""
    return lam * first + (1.0 - lam) * second


def spec_augment(fbank: torch.Tensor, rng: np.random.Generator, freqm: int, timem: int, freq_masks: int = 1,
                 time_masks: int = 1, mask_value: float = 0.0) -> torch.Tensor:
    """``freq_masks`` x ``FrequencyMasking(freqm)`` then ``time_masks`` x ``TimeMasking(timem)`` (torchaudio: a
    width uniform in [0, param), a uniform start) on ``fbank`` ``[T, F]``; masked cells get ``mask_value``."""
    if not (freqm and freq_masks) and not (timem and time_masks):
        return fbank
    spec = fbank.t().unsqueeze(0)                              # [1, F, T], as torchaudio expects
    with torch.random.fork_rng(devices=[]):                    # torchaudio draws from the global generator
        torch.manual_seed(int(rng.integers(0, 2 ** 62)))
        for _ in range(freq_masks if freqm else 0):
            spec = torchaudio.transforms.FrequencyMasking(freqm)(spec, mask_value)
        for _ in range(time_masks if timem else 0):
            spec = torchaudio.transforms.TimeMasking(timem)(spec, mask_value)
    return spec.squeeze(0).t().contiguous()


def _epic_masks(spec: torch.Tensor, rng: np.random.Generator, param: int, masks: int, dim: int) -> torch.Tensor:
    """``masks`` EPIC-Sounds masks along ``dim`` of ``spec`` (in place); see :func:`epic_spec_augment`."""
    size = spec.shape[dim]
    param = min(int(param), size)                              # keeps the start range [0, size - f) non-empty
    for _ in range(masks):
        f = int(rng.integers(0, param)) if param > 0 else 0
        if f == 0:                                             # the official loop stops here (no further masks)
            break
        start = int(rng.integers(0, size - f))
        width = int(rng.integers(0, f))                        # official: end uniform in [start, start + f)
        spec.narrow(dim, start, width).fill_(float(spec.mean()))
    return spec


def epic_spec_augment(fbank: torch.Tensor, rng: np.random.Generator, freqm: int, timem: int, freq_masks: int = 2,
                      time_masks: int = 2) -> torch.Tensor:
    """The EPIC-Sounds SpecAugment masks (official ``freq_mask`` / ``time_mask``, ``F_MASK = freqm``,
    ``T_MASK = timem``) on a copy of ``fbank`` ``[T, F]``: ``freq_masks`` frequency masks, then ``time_masks`` time
    masks. Each mask draws ``f`` uniform in [0, param), a start uniform in [0, size - f) and a width uniform in
    [0, f), and is filled with the mean of the spectrogram as it is at that moment. A draw of ``f = 0`` ends that
    kind of mask (as the official loop returns there). A mask is therefore on average ``(param - 1)(param - 2) /
    (4 param)`` wide, about a quarter of ``param``: 11.3 bins for ``freqm = 48`` and 47.3 frames for
    ``timem = 192``, under half the ``param / 2`` of the torchaudio masks of :func:`spec_augment`. ``param`` is
    capped at the axis length."""
    out = fbank.clone()
    _epic_masks(out, rng, freqm, freq_masks, dim=1)
    _epic_masks(out, rng, timem, time_masks, dim=0)
    return out


def time_warp(fbank: torch.Tensor, rng: np.random.Generator, w: int) -> torch.Tensor:
    """SpecAugment time warping (Park et al. 2019) of ``fbank`` ``[T, F]``: a centre frame ``c`` uniform in
    [w, T - w) moves by ``d`` uniform in [-w, w); both sides are linearly resampled so the length stays ``T``. A
    no-op when ``w == 0`` or ``T <= 2w + 1``.

    This is deliberately not the official EPIC-Sounds warp, which is a bug we do not reproduce: it takes the
    spectrogram's *value* at a random frame of the middle mel row (a log-mel magnitude, not a frame index) as the
    time coordinate of its single control point, and fits a thin-plate spline through that one point with no
    boundary points fixed, so it does not warp around a frame of the clip as SpecAugment describes. We draw the
    same ``c`` and ``d`` as it means to and warp piecewise-linearly."""
    t = fbank.shape[0]
    if w <= 0 or t <= 2 * w + 1:
        return fbank
    c, d = int(rng.integers(w, t - w)), int(rng.integers(-w, w))
    if d == 0:
        return fbank
    spec = fbank.t().unsqueeze(0)                              # [1, F, T]
    left = F.interpolate(spec[..., :c], size=c + d, mode="linear", align_corners=False)
    right = F.interpolate(spec[..., c:], size=t - c - d, mode="linear", align_corners=False)
    return torch.cat([left, right], dim=-1).squeeze(0).t().contiguous()


def noise_and_roll(fbank: torch.Tensor, rng: np.random.Generator, roll: int) -> torch.Tensor:
    """Speech Commands (AST ``noise=True``): ``fbank + U(0,1)[T, F] * U(0,1) / 10``, then a roll along time by an
    integer in [-roll, roll)."""
    noise = torch.from_numpy(rng.random(fbank.shape, dtype=np.float32)) * float(rng.random()) / 10.0
    out = fbank + noise
    return torch.roll(out, int(rng.integers(-roll, roll)), dims=0) if roll else out
