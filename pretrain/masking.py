"""Which patches to hide: unstructured, time spans, frequency bands, or SSAST-style clusters.

Every strategy returns exactly ``n_mask`` masked patches per clip (so MAE batches stay rectangular): it
draws a priority for every patch and masks the ``n_mask`` highest. Structure comes from how priorities are
shared: a whole time span, frequency band or cluster gets one priority, so it is masked together.

Patches are indexed frequency-major over the ``(F', T')`` grid: ``index = f * T' + t``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

STRATEGIES = ("random", "time", "frequency", "cluster")


class Mask(NamedTuple):
    """A batch of masks: ``mask`` bool ``[B, N]`` (True = hidden), ``keep`` and ``hidden`` the ascending
    patch indices ``[B, N - n]`` and ``[B, n]``."""

    mask: torch.Tensor
    keep: torch.Tensor
    hidden: torch.Tensor


def n_masked(n_patches: int, ratio: float) -> int:
    """Number of patches to hide: ``round(ratio * N)``, at least 1 and at most ``N - 1``."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    return min(n_patches - 1, max(1, round(ratio * n_patches)))


def _span_priority(batch, length, span, generator):
    """One random priority per span of ``span`` consecutive positions (random phase), ``[B, length]``."""
    offset = torch.randint(0, span, (batch, 1), generator=generator)
    block = (torch.arange(length).unsqueeze(0) + offset) // span             # [B, length]
    per_block = torch.rand(batch, length // span + 2, generator=generator)
    return torch.gather(per_block, 1, block)


def _cluster_priority(batch, grid, n_mask, cluster, generator):
    """SSAST clusters: squares of side 3..3+cluster-1 at random centres, earlier squares first."""
    f_dim, t_dim = grid
    prio = torch.zeros(batch, f_dim * t_dim)
    for b in range(batch):
        covered, rank = 0, float(f_dim * t_dim)
        while covered < n_mask:
            f0 = int(torch.randint(0, f_dim, (1,), generator=generator))
            t0 = int(torch.randint(0, t_dim, (1,), generator=generator))
            side = 3 + int(torch.randint(0, max(cluster, 1), (1,), generator=generator))
            block = prio[b].view(f_dim, t_dim)[f0:f0 + side, t0:t0 + side]
            fresh = block == 0
            covered += int(fresh.sum())
            block[fresh] = rank
            rank -= 1.0
    return prio


def make_mask(batch: int, grid: tuple[int, int], ratio: float, strategy: str = "random",
              span: int = 2, cluster: int = 3, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Mask:
    """Draw masks for ``batch`` clips on a ``grid = (F', T')`` patch grid with ``round(ratio * N)`` hidden.

    ``strategy``: ``random`` (unstructured), ``time`` (spans of ``span`` time columns, all frequencies),
    ``frequency`` (bands of ``span`` frequency rows, all times), ``cluster`` (SSAST's squares of side
    3 to 2 + ``cluster``). The last span/band/cluster may be partly masked, to hit the count exactly.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose one of {STRATEGIES}")
    f_dim, t_dim = grid
    n = f_dim * t_dim
    k = n_masked(n, ratio)
    jitter = torch.rand(batch, n, generator=generator)                      # breaks ties inside a group
    if strategy == "random":
        prio = jitter
    elif strategy == "time":
        prio = _span_priority(batch, t_dim, span, generator).repeat(1, f_dim) + 1e-3 * jitter
    elif strategy == "frequency":
        prio = _span_priority(batch, f_dim, span, generator).repeat_interleave(t_dim, dim=1) + 1e-3 * jitter
    else:
        prio = _cluster_priority(batch, grid, k, cluster, generator) + 1e-3 * jitter
    order = prio.argsort(dim=1, descending=True)
    hidden = order[:, :k].sort(dim=1).values
    keep = order[:, k:].sort(dim=1).values
    mask = torch.zeros(batch, n, dtype=torch.bool).scatter_(1, hidden, True)
    return Mask(mask.to(device), keep.to(device), hidden.to(device))


def patchify(fbank: torch.Tensor, patch: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """``[B, frames, mel]`` -> ``[B, N, pf*pt]`` non-overlapping patches in the encoder's token order."""
    pf, pt = patch
    image = fbank.transpose(1, 2)                                            # [B, mel, frames]
    f_dim, t_dim = image.shape[1] // pf, image.shape[2] // pt
    image = image[:, : f_dim * pf, : t_dim * pt]
    tiles = image.reshape(image.shape[0], f_dim, pf, t_dim, pt).permute(0, 1, 3, 2, 4)
    return tiles.reshape(image.shape[0], f_dim * t_dim, pf * pt)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, pf*pt]`` -> ``[B, frames, mel]``."""
    (f_dim, t_dim), (pf, pt) = grid, patch
    tiles = patches.reshape(patches.shape[0], f_dim, t_dim, pf, pt).permute(0, 1, 3, 2, 4)
    return tiles.reshape(patches.shape[0], f_dim * pf, t_dim * pt).transpose(1, 2)
