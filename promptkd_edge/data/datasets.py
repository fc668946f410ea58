"""Datasets over image paths: paired training views (teacher + student) and labeled evaluation images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from promptkd_edge.data.decode import open_rgb
from promptkd_edge.data.views import eval_transform, render_view, sample_crop, view_rng
from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import Preprocess

FALLBACK_TRIES = 8


class PairedViews(Dataset):
    """Item (index, view key) -> the same random crop + flip rendered for each model in `models`.

    `models` maps a name ('student', 'teacher') to that model's preprocess; the teacher is left out when its
    features come from the cache. An unreadable image is reported under 'bad' and replaced by a readable
    neighbour (so batches keep their size, which BatchNorm and DDP need); 'index' is the image actually used.
    """

    def __init__(self, paths: list[Path], models: dict[str, Preprocess], seed: int,
                 crop_scale: tuple[float, float] = (0.08, 1.0), fallback: bool = True):
        self.paths, self.models, self.seed, self.crop_scale = paths, models, seed, crop_scale
        self.fallback = fallback

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, view = key
        bad: list[str] = []
        tries = FALLBACK_TRIES if self.fallback else 1
        for attempt in range(min(tries, len(self.paths))):
            i = (index + attempt * 7919) % len(self.paths)
            img = open_rgb(self.paths[i])
            if img is None:
                bad.append(str(self.paths[i]))
                continue
            crop = sample_crop(img.width, img.height, view_rng(self.seed, view, i), scale=self.crop_scale)
            item: dict[str, Any] = {"index": i, "view": view, "bad": bad}
            item.update({name: render_view(img, crop, pre) for name, pre in self.models.items()})
            return item
        return {"bad": bad}


class LabeledViews(Dataset):
    """Item i -> (one test-time view per preprocess, label) or {'bad': path}."""

    def __init__(self, samples: list[tuple[Path, int]], preprocesses: list[Preprocess]):
        self.samples = samples
        self.transforms = [eval_transform(p) for p in preprocesses]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        img = open_rgb(path)
        if img is None:
            return {"bad": [str(path)]}
        return {"index": i, "label": label, "views": [t(img) for t in self.transforms], "bad": []}


class BadImages:
    """Counts unreadable images; past `max_fraction` of the data set it aborts with the first offenders."""

    def __init__(self, total: int, max_fraction: float, known: set[str] | None = None):
        self.total, self.max_fraction = total, max_fraction
        self.paths: set[str] = set(known or ())

    def add(self, paths: list[str]) -> None:
        self.paths.update(paths)
        if len(self.paths) > self.max_fraction * self.total:
            examples = ", ".join(sorted(self.paths)[:3])
            raise PkdError(f"{len(self.paths)} of {self.total} images are unreadable (more than "
                           f"{self.max_fraction:.1%}; e.g. {examples}); fix or remove them, or raise "
                           "--max-bad-fraction")


def collate_skipping_bad(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the items that hold an image; gather every unreadable path under 'bad'."""
    good = [it for it in items if "index" in it]
    batch: dict[str, Any] = {"bad": [p for it in items for p in it["bad"]], "size": len(good)}
    if not good:
        return batch
    for key in (k for k in good[0] if k != "bad"):
        values = [it[key] for it in good]
        if key == "views":
            batch[key] = [torch.stack(v) for v in zip(*values, strict=True)]
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values)
    return batch
