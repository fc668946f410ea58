"""Teacher-feature cache: the teacher's normalised image features for K augmented views of every image,
computed once into a memory-mapped fp16 file and reused by every run with the same data, teacher and views.

PromptKD reruns the teacher on every step; with the cache a run trains on K fixed views per image (view
(epoch + offset_i) mod K in epoch e) and the teacher is not even loaded. The key covers the data listing
(paths, sizes, mtimes), the teacher (spec and weights sha256), its preprocessing, K, the seed and the crop scale.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from promptkd_edge.data.datasets import BadImages, PairedViews, collate_skipping_bad
from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import Preprocess
from promptkd_edge.train.distributed import Runtime, barrier, broadcast_object, gather_objects
from promptkd_edge.utils.files import sha256_text, user_cache_dir, write_json

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """Where caches go without --cache-dir: teacher-features/ in promptkd-edge's cache folder ($PKD_CACHE_DIR)."""
    return user_cache_dir() / "teacher-features"


def listing_digest(paths: list[Path]) -> str:
    """Paths with their sizes and modification times: a changed, added or removed image changes the digest."""
    lines = []
    for p in paths:
        try:
            st = p.stat()
            lines.append(f"{p.resolve()}\t{st.st_size}\t{st.st_mtime_ns}")
        except OSError:
            lines.append(f"{p}\tmissing")
    return sha256_text("\n".join(lines))


def cache_key(*, listing: str, teacher: dict[str, Any], preprocess: Preprocess, views: int, seed: int,
              crop_scale: tuple[float, float]) -> str:
    """The identity of a cache: everything that changes the features in it."""
    blob = json.dumps({"format": CACHE_FORMAT, "listing": listing, "teacher": teacher,
                       "preprocess": preprocess.to_dict(), "views": views, "seed": seed,
                       "crop_scale": list(crop_scale)}, sort_keys=True)
    return sha256_text(blob)


@dataclass
class TeacherFeatureCache:
    features: np.ndarray  # memory-mapped [N, K, D] float16
    bad: frozenset[int]
    path: Path

    @property
    def views(self) -> int:
        return int(self.features.shape[1])

    def lookup(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Features [B, D] (float32) of the given images and cached view slots."""
        rows = self.features[index.numpy(), view.numpy()]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32))


def open_cache(folder: Path) -> TeacherFeatureCache | None:
    """The published cache in `folder` (memory-mapped), or None when there is none."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    features = np.load(folder / "features.npy", mmap_mode="r")
    return TeacherFeatureCache(features, frozenset(meta["bad_indices"]), folder)


def build_or_open(rt: Runtime, *, paths: list[Path], key: str, cache_dir: Path, views: int, dim: int,
                  preprocess: Preprocess, seed: int, crop_scale: tuple[float, float],
                  encode: Callable[[], Callable[[torch.Tensor], torch.Tensor]], batch_size: int, workers: int,
                  max_bad_fraction: float, autocast: torch.dtype | None,
                  on_progress: Callable[[int, int], None] | None = None) -> tuple[TeacherFeatureCache, bool]:
    """Open the cache for `key`, or compute it (each rank a share of the views) and publish it atomically.

    `encode()` returns the teacher's image encoder; it is only called (and the teacher only loaded) when the
    cache must be built. Returns (cache, built).
    """
    folder = cache_dir / key[:32]
    existing = open_cache(folder)
    if existing is not None:
        return existing, False

    n = len(paths)
    tmp = cache_dir / f".{key[:32]}.building-{os.environ.get('TORCHELASTIC_RUN_ID', os.getpid())}"
    if rt.is_main:
        tmp.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16, shape=(n, views, dim)).flush()
    tmp = Path(broadcast_object(rt, str(tmp)))
    barrier(rt)
    try:  # a failed build (unreadable images, an interrupt) leaves no half-written folder behind
        bad = _compute_features(rt, tmp / "features.npy", paths, views=views, preprocess=preprocess, seed=seed,
                                crop_scale=crop_scale, encode=encode, batch_size=batch_size, workers=workers,
                                max_bad_fraction=max_bad_fraction, autocast=autocast, on_progress=on_progress)
        bad_paths = set().union(*gather_objects(rt, bad.paths))
        barrier(rt)
        if rt.is_main:
            index_of = {str(p): i for i, p in enumerate(paths)}
            write_json(tmp / "meta.json", {
                "format": CACHE_FORMAT, "key": key, "images": n, "views": views, "dim": dim,
                "bad_indices": sorted(index_of[p] for p in bad_paths),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if not folder.exists():  # else another run published the same key meanwhile: keep theirs
                os.replace(tmp, folder)
    finally:
        if rt.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
    barrier(rt)
    cache = open_cache(folder)
    if cache is None:
        raise PkdError(f"teacher-feature cache {folder} was not written (is {cache_dir} shared by all ranks?)")
    return cache, True


def _compute_features(rt: Runtime, file: Path, paths: list[Path], *, views: int, preprocess: Preprocess, seed: int,
                      crop_scale: tuple[float, float], encode: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
                      batch_size: int, workers: int, max_bad_fraction: float, autocast: torch.dtype | None,
                      on_progress: Callable[[int, int], None] | None) -> BadImages:
    """Encode this rank's share of the (image, view) jobs into the memory-mapped `file`; its unreadable images."""
    n = len(paths)
    features = np.load(file, mmap_mode="r+")
    jobs = [(i, k) for i in range(n) for k in range(views)][rt.rank::rt.world_size]
    dataset = PairedViews(paths, {"teacher": preprocess}, seed, crop_scale, fallback=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=jobs, num_workers=workers,
                        collate_fn=collate_skipping_bad, pin_memory=rt.device.type == "cuda")
    encoder = encode()
    bad = BadImages(n, max_bad_fraction)
    done = 0
    try:
        for batch in loader:
            bad.add(batch["bad"])
            if batch["size"]:
                with torch.autocast(rt.device.type, dtype=autocast, enabled=autocast is not None):
                    feats = encoder(batch["teacher"].to(rt.device, non_blocking=True))
                rows = feats.float().cpu().numpy().astype(np.float16)
                features[batch["index"].numpy(), batch["view"].numpy()] = rows
            done += batch["size"] + len(batch["bad"])
            if on_progress:
                on_progress(done, len(jobs))
        features.flush()
    finally:
        del features  # unmap the file
    return bad
