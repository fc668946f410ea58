"""A procedural image domain for the embedded demo: 10 texture classes (a DTD-like task), drawn from a seed.

Every image is a two-colour pattern with random colours, frequency, phase, centre and a small rotation, rendered
in one of three styles (see `render`): "web" (well exposed, clean), "varied" (any exposure, some noise) and
"target" (a camera at night). The tiny CLIPs' stand-in pre-training uses captioned web images: only "web" for
the student, half "varied" for the teacher, as a large CLIP's web-scale data holds photos taken in every light
while a small model's narrower data holds mostly good ones. The target domain, written as PNG ImageFolders
(few-shot labeled, unlabeled, test) exactly as a user's data would be, is the night camera: a style the teacher's
pre-training covered and the student's did not. That is where PromptKD pays off (see `DESCRIPTION`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "polka_dots",
           "concentric_rings", "grid", "zigzag", "sunburst", "gradient"]
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
          "orange": (240, 140, 30), "purple": (140, 60, 190), "white": (245, 245, 245), "black": (20, 20, 20)}


def _pattern(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A signed pattern field in roughly [-1, 1] over a size x size grid."""
    v, u = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    th = rng.uniform(-0.25, 0.25)
    ur, vr = u * math.cos(th) - v * math.sin(th), u * math.sin(th) + v * math.cos(th)
    f, ph = rng.uniform(2.5, 5.0), rng.uniform(0, 2 * math.pi)
    cx, cy = rng.uniform(-0.5, 0.5, 2)
    r, ang = np.hypot(u - cx, v - cy), np.arctan2(v - cy, u - cx)
    g = f / 2
    if name == "horizontal_stripes":
        return np.sin(math.pi * f * vr + ph)
    if name == "vertical_stripes":
        return np.sin(math.pi * f * ur + ph)
    if name == "diagonal_stripes":
        return np.sin(math.pi * f * (ur + vr * rng.choice([-1, 1])) / math.sqrt(2) + ph)
    if name == "checkerboard":
        return np.sin(math.pi * f * ur + ph) * np.sin(math.pi * f * vr + ph)
    if name == "polka_dots":
        return (0.3 - np.hypot((ur * g + ph) % 1 - 0.5, (vr * g) % 1 - 0.5)) * 3
    if name == "concentric_rings":
        return np.sin(2 * math.pi * f * r / 1.5 + ph)
    if name == "grid":
        du, dv = np.abs((ur * g + ph) % 1 - 0.5), np.abs((vr * g) % 1 - 0.5)
        return np.where(np.minimum(0.5 - du, 0.5 - dv) < 0.09, 1.0, -1.0)
    if name == "zigzag":
        return np.sin(2 * math.pi * (g * vr + 0.7 * np.abs((ur * g) % 1 - 0.5)) + ph)
    if name == "sunburst":
        return np.sin(int(rng.integers(6, 12)) * ang + ph)
    if name == "gradient":
        return (ur * math.cos(ph) + vr * math.sin(ph)) * 0.15
    raise ValueError(name)


def _pick_colors(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    names = list(COLORS)
    color_name = names[rng.integers(len(names))]
    fg = np.clip(np.array(COLORS[color_name]) + rng.integers(-25, 26, 3), 0, 255)
    while True:  # a second colour far enough from the first to see the pattern
        bg = rng.integers(0, 256, 3)
        if np.abs(fg - bg).sum() > 180:
            return color_name, fg, bg


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    label: int
    color: str
    style: str = "web"

    @property
    def name(self) -> str:
        return CLASSES[self.label].replace("_", " ")

    @property
    def caption(self) -> str:
        return f"a photo of a {self.color} {self.name}."


def _exposure(img: np.ndarray, rng: np.random.Generator, gain: float, noise: float) -> np.ndarray:
    """Scale the light by `gain` with an uneven falloff across the frame, then add sensor noise."""
    size = img.shape[0]
    v, u = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    falloff = 1 + 0.35 * (u * rng.uniform(-1, 1) + v * rng.uniform(-1, 1))
    return img * gain * falloff[..., None] + rng.normal(0, noise, img.shape)


STYLES = ("web", "varied", "target")
DESCRIPTION = (
    "The domain: 10 texture classes seen by a camera at night (20-45 % exposure, uneven light, sensor noise). "
    "The teacher's stand-in pre-training had photos in every light, like a large CLIP's web-scale data; the "
    "student's had well-lit photos only, like a small model's narrower data. So the student's zero-shot head "
    "misreads dark images, while its frozen features still tell the textures apart; PromptKD's prompts and "
    "projector, trained on unlabeled night images to match the tuned teacher, close most of that gap, with no "
    "labels.")
VERSION = 2  # bump when the rendering changes: cached demo data and weights are then regenerated


def render(label: int, rng: np.random.Generator, style: str, size: int = 64) -> Sample:
    """One image of class `label` in a style:

    - "web": well exposed and clean (the student's pre-training data);
    - "varied": any exposure from 15 % to 100 % with some noise (the broader data a large CLIP has seen);
    - "target": the deployment camera at night: 20-45 % exposure, uneven light, sensor noise.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}")
    color_name, fg, bg = _pick_colors(rng)
    mask = 1 / (1 + np.exp(-12 * _pattern(CLASSES[label], size, rng)))[..., None]
    img = mask * fg + (1 - mask) * bg
    if style == "varied":
        img = _exposure(img, rng, rng.uniform(0.15, 1.0), rng.uniform(0, 14))
    elif style == "target":
        img = _exposure(img, rng, rng.uniform(0.2, 0.45), 10)
    return Sample(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), label, color_name, style)


def web_samples(count: int, seed: int, size: int = 64, varied: bool = False) -> list[Sample]:
    """Captioned 'web' images, classes balanced, for pre-training the tiny CLIPs.

    `varied=True` renders every other image at a random exposure with noise (the teacher's broader pre-training
    data: a large CLIP has seen photos taken in all light, a small one mostly good ones); the target splits use
    other seeds.
    """
    rng = np.random.default_rng([seed, 1])
    n = len(CLASSES)  # every class in both styles: the style alternates per round over the classes
    return [render(i % n, rng, "varied" if varied and (i // n) % 2 else "web", size) for i in range(count)]


def write_target_splits(root: str | Path, seed: int, shots: int = 16, unlabeled_per_class: int = 100,
                        test_per_class: int = 50, size: int = 64) -> dict[str, Path]:
    """Write the target domain as ImageFolders: root/{fewshot,unlabeled,test}/<class>/<n>.png.

    The unlabeled split keeps class folders, as a real scrape might; training ignores sub-folder names.
    """
    root = Path(root)
    splits = {"fewshot": shots, "unlabeled": unlabeled_per_class, "test": test_per_class}
    for s, (split, per_class) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, 2, s])
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                render(label, rng, "target", size).image.save(folder / f"{n:04d}.png")
    return {split: root / split for split in splits}
