"""Image views: the same random crop + flip rendered for each model, and the evaluation transform.

A training view is fully determined by (seed, view key, image index), whatever process or worker renders it:
that is what makes runs repeatable, resumable, and what lets the teacher-feature cache find the student's view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from promptkd_edge.models.openclip import Preprocess
from promptkd_edge.utils.images import resize_crop

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    height: int
    width: int
    flip: bool


def view_rng(seed: int, view: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, view, index])


def sample_crop(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = CROP_SCALE,
                ratio: tuple[float, float] = CROP_RATIO, flip: bool = True) -> Crop:
    """RandomResizedCrop's box (torchvision's algorithm, our generator) plus a horizontal flip."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
            break
    if box is None:  # fall back to a central crop, as torchvision does
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    return Crop(*box, flip=bool(flip and rng.random() < 0.5))


def _interpolation(name: str) -> InterpolationMode:
    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BICUBIC)


def to_model_tensor(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(img), pre.mean, pre.std)


def render_view(img: Image.Image, crop: Crop, pre: Preprocess) -> torch.Tensor:
    """Cut `crop` out of `img`, resample it once to the model's size, flip, normalise."""
    out = TF.resized_crop(img, crop.top, crop.left, crop.height, crop.width, list(pre.size),
                          interpolation=_interpolation(pre.interpolation), antialias=True)
    if crop.flip:
        out = TF.hflip(out)
    return to_model_tensor(out, pre)


def eval_view(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """The test-time view of an RGB image: open_clip's eval transform (equal to `eval_transform`, the same code the
    runtime runs), with the resize bounded by the output size, so a 1 x 1,000,000 image costs no more than a crop."""
    return to_model_tensor(Image.fromarray(resize_crop(img, pre.size, pre.resize_mode, pre.interpolation)), pre)


def eval_transform(pre: Preprocess):
    """open_clip's own test-time transform for `pre` (resize by its resize_mode, centre-crop, normalise): the
    reference `eval_view` and the runtime are tested against. It resizes the whole image first: unbounded."""
    from open_clip import image_transform

    return image_transform(pre.size, is_train=False, mean=pre.mean, std=pre.std,
                           resize_mode=pre.resize_mode, interpolation=pre.interpolation)
