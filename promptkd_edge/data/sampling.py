"""Which (image, view) each process reads in each epoch: seeded, sharded across ranks, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def cached_view(seed: int, epoch: int, index: int, views: int) -> int:
    """With K cached views per image, epoch e uses view (e + offset_i) mod K: every view once per K epochs."""
    offset = int(np.random.default_rng([seed, 0x5EED, index]).integers(views))
    return (epoch + offset) % views


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (image index, view key) for one epoch of one rank.

    The order is a permutation seeded by (seed, epoch), padded to a multiple of `world_size` and dealt out
    round-robin, so ranks see disjoint shards. The view key is the epoch (a fresh augmentation every epoch)
    or, with `views=K`, one of K cached views. `skip` drops the first items (resuming mid-epoch).
    """

    def __init__(self, size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 views: int | None = None, skip: int = 0, shuffle: bool = True):
        self.size, self.seed, self.epoch = size, seed, epoch
        self.rank, self.world_size, self.views, self.skip, self.shuffle = rank, world_size, views, skip, shuffle

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        pad = (-len(order)) % self.world_size
        order += order[:pad]
        return order[self.rank::self.world_size][self.skip:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.indices():
            view = self.epoch if self.views is None else cached_view(self.seed, self.epoch, i, self.views)
            yield i, view

    def __len__(self) -> int:
        return max(0, -(-self.size // self.world_size) - self.skip)
