"""Batch samplers that split a data set over the ranks deterministically and resume mid-epoch.

:class:`ResumableBatchSampler` is what the training engine (:mod:`aum.train.engine`) draws its batches with;
:class:`aum.data.datasets.EpochSampler` is the single-process sampler of ``(epoch, index)`` keys.
"""
from __future__ import annotations

import torch

__all__ = ["ResumableBatchSampler"]


class ResumableBatchSampler:
    """Infinite, deterministic, resumable batch sampler (``DistributedSampler``-like, drop_last).

    Epoch ``e`` permutes the dataset with a generator seeded ``seed + e``, keeps the first
    ``world_size * (n // world_size)`` entries and gives rank ``r`` every ``world_size``-th one from ``r``; the
    rank's share is cut into ``n // world_size // batch_size`` full batches. Global batch ``b`` of a world of
    ``W`` ranks with batch ``B`` therefore holds the same samples as batch ``b`` of one process with batch
    ``W*B``. With ``epoch_keys`` it yields ``(epoch, index)`` pairs so a dataset can derive per-item randomness
    from them, whatever the worker count. Iteration starts at :attr:`epoch`/:attr:`offset` (batches already
    consumed in that epoch) and never ends.
    """

    def __init__(self, dataset_len: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 epoch_keys: bool = False):
        self.n, self.batch_size, self.rank, self.world_size = dataset_len, batch_size, rank, world_size
        self.seed, self.epoch_keys = seed, epoch_keys
        self.per_rank = dataset_len // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {dataset_len} items is smaller than one global batch "
                             f"({world_size} ranks x {batch_size})")
        self.epoch, self.offset = 0, 0

    def indices(self, epoch: int) -> list[int]:
        """This rank's sample order in ``epoch`` (whole batches only)."""
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        mine = perm[: self.per_rank * self.world_size][self.rank:: self.world_size]
        return mine[: self.batches_per_epoch * self.batch_size].tolist()

    def set_position(self, epoch: int, offset: int) -> None:
        """Start the next iteration at batch ``offset`` of ``epoch``."""
        epoch, offset = epoch + offset // self.batches_per_epoch, offset % self.batches_per_epoch
        self.epoch, self.offset = int(epoch), int(offset)

    def position_after(self, consumed: int) -> tuple[int, int]:
        """``(epoch, offset)`` after ``consumed`` batches from the current start position."""
        return divmod(self.epoch * self.batches_per_epoch + self.offset + consumed, self.batches_per_epoch)

    def __iter__(self):
        epoch, offset, bs = self.epoch, self.offset, self.batch_size
        while True:
            idx = self.indices(epoch)
            for b in range(offset, self.batches_per_epoch):
                chunk = idx[b * bs:(b + 1) * bs]
                yield [(epoch, i) for i in chunk] if self.epoch_keys else chunk
            epoch, offset = epoch + 1, 0
