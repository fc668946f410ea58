"""Datasets over image paths: paired training views (teacher + student) and labeled evaluation images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from promptkd_edge.data.decode import read_rgb
from promptkd_edge.data.views import eval_view, render_view, sample_crop, view_rng
from promptkd_edge.errors import PkdError
from promptkd_edge.models.openclip import Preprocess

FALLBACK_TRIES = 8


class PairedViews(Dataset):
    """Item (index, view key) -> the same random crop + flip rendered for each model in `models`.

    `models` maps a name ('student', 'teacher') to that model's preprocess; the teacher is left out when its
    features come from the cache. An unreadable image is reported under 'bad' as (path, reason) and replaced by a
    readable neighbour (so batches keep their size, which BatchNorm and DDP need); 'index' is the image actually
    used.
    """

    def __init__(self, paths: list[Path], models: dict[str, Preprocess], seed: int,
                 crop_scale: tuple[float, float] = (0.08, 1.0), fallback: bool = True):
        self.paths, self.models, self.seed, self.crop_scale = paths, models, seed, crop_scale
        self.fallback = fallback

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, view = key
        bad: list[tuple[str, str]] = []
        tries = FALLBACK_TRIES if self.fallback else 1
        for attempt in range(min(tries, len(self.paths))):
            i = (index + attempt * 7919) % len(self.paths)
            img, why = read_rgb(self.paths[i])
            if img is None:
                bad.append((str(self.paths[i]), why))
                continue
            crop = sample_crop(img.width, img.height, view_rng(self.seed, view, i), scale=self.crop_scale)
            item: dict[str, Any] = {"index": i, "view": view, "bad": bad}
            item.update({name: render_view(img, crop, pre) for name, pre in self.models.items()})
            return item
        return {"bad": bad}


class LabeledViews(Dataset):
    """Item i -> (one test-time view per preprocess, label) or {'bad': [(path, reason)]}."""

    def __init__(self, samples: list[tuple[Path, int]], preprocesses: list[Preprocess]):
        self.samples, self.preprocesses = samples, preprocesses

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        img, why = read_rgb(path)
        if img is None:
            return {"bad": [(str(path), why)]}
        return {"index": i, "label": label, "views": [eval_view(img, p) for p in self.preprocesses], "bad": []}


BAD_IMAGES_ADVICE = "fix or remove them, or raise --max-bad-fraction"


class TooManyBadImages(PkdError):
    """More images are unreadable than the limit allows. `finding` is the message without its advice, for a
    caller that knows better what can be done (a resumed run cannot drop images); `bad` holds them all."""

    def __init__(self, finding: str, advice: str, bad: BadImages):
        super().__init__(f"{finding}; {advice}")
        self.finding, self.bad = finding, bad


class BadImages:
    """The unreadable images (path -> reason); past `max_fraction` of the data set it aborts with the first
    offenders (TooManyBadImages, its message ending in `advice`). `write` lists them all (path TAB reason), for the
    run directory's bad_images.txt."""

    def __init__(self, total: int, max_fraction: float, known: list | None = None, advice: str = BAD_IMAGES_ADVICE):
        self.total, self.max_fraction, self.advice = total, max_fraction, advice
        self.found: dict[str, str] = {}
        self.add(list(known or ()), check=False)

    @property
    def paths(self) -> set[str]:
        return set(self.found)

    def records(self) -> list[tuple[str, str]]:
        return sorted(self.found.items())

    def add(self, items: list, check: bool = True) -> None:
        """Record (path, reason) pairs (a bare path, from older checkpoints, gets reason 'unreadable')."""
        for item in items:
            path, why = (item, "unreadable") if isinstance(item, str) else (str(item[0]), str(item[1]))
            self.found.setdefault(path, why)
        if check:
            self.check()

    def check(self) -> None:
        """Raise TooManyBadImages when more than `max_fraction` of `total` are unreadable."""
        if len(self.found) > self.max_fraction * self.total:
            examples = ", ".join(sorted(self.found)[:3])
            raise TooManyBadImages(f"{len(self.found)} of {self.total} images are unreadable (more than "
                                   f"{self.max_fraction:.1%}; e.g. {examples})", self.advice, self)


def write_bad_images(path: Path, bad: BadImages) -> str | None:
    """Write `bad` as `path<TAB>reason` lines into `path` (a run's bad_images.txt; a tab, newline or carriage
    return inside a name is written as \\t, \\n, \\r, a byte of a name that is not UTF-8 as \\xNN); the file's
    name, or None (and no file: one from an earlier session of a resumed run is removed) if there are none."""
    from promptkd_edge.utils.files import write_text

    if not bad.found:
        path.unlink(missing_ok=True)
        return None

    def field(text: str) -> str:  # one line per image, whatever the name holds
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    write_text(path, "".join(f"{field(p)}\t{field(why)}\n" for p, why in bad.records()))
    return path.name


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
