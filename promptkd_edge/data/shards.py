"""WebDataset tar shards for large unlabeled sets (the optional `[wds]` extra).

Each process (and DataLoader worker) streams shards resampled with a seed of (seed, epoch, rank, worker) and
renders the same paired views as the folder path does, keyed by the sample's `__key__`. The number of images
in an epoch is given by the user (`--shard-epoch-size`), since a stream has no length.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from promptkd_edge.data.decode import open_rgb
from promptkd_edge.data.views import render_view, sample_crop, view_rng
from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import Preprocess

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")


def is_shard_spec(data: str) -> bool:
    """`shards/train-{0000..0099}.tar`, `a.tar`, `pipe:...` or a remote URL of tar files."""
    return data.startswith("pipe:") or (".tar" in data and (data.endswith(".tar") or "{" in data))


def _stable_index(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def _require_webdataset():
    try:
        import webdataset
    except ImportError:
        raise PkdError("WebDataset shards need the optional extra: pip install 'promptkd-edge[wds]'") from None
    return webdataset


class ShardViews(IterableDataset):
    """Yields PairedViews-style items ({'index', 'view', 'bad', <model>: tensor}) from tar shards."""

    def __init__(self, urls: str, models: dict[str, Preprocess], seed: int, crop_scale: tuple[float, float],
                 batches: int, batch_size: int, epoch: int, rank: int = 0):
        _require_webdataset()
        self.urls, self.models, self.seed, self.crop_scale = urls, models, seed, crop_scale
        self.batches, self.batch_size, self.epoch, self.rank = batches, batch_size, epoch, rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # whole batches per worker, so that every batch is full and the process yields exactly `batches`
        count = (self.batches // workers + (1 if worker < self.batches % workers else 0)) * self.batch_size
        stream = wds.WebDataset(self.urls, resampled=True, nodesplitter=None, workersplitter=None,
                                handler=wds.warn_and_continue, empty_check=False,
                                seed=(self.seed * 1_000_003 + self.epoch) * 4099 + self.rank * 131 + worker)
        produced = 0
        for sample in stream:
            if produced >= count:
                return
            produced += 1
            key = sample.get("__key__", "")
            data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            img = open_rgb(io.BytesIO(data)) if data is not None else None
            if img is None:
                yield {"bad": [f"{sample.get('__url__', '?')}:{key}"]}
                continue
            index = _stable_index(key)
            crop = sample_crop(img.width, img.height, view_rng(self.seed, self.epoch, index), scale=self.crop_scale)
            item: dict[str, Any] = {"index": -1, "view": self.epoch, "bad": []}
            item.update({name: render_view(img, crop, pre) for name, pre in self.models.items()})
            yield item
