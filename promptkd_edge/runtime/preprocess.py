"""Turn images into model input exactly as open_clip's eval transform does, with numpy and Pillow only (no torch).

The reference is `promptkd_edge.data.views.eval_transform` applied to the image converted to RGB (the data path
converts every image to RGB first, see `promptkd_edge.data.decode.open_rgb`); outputs agree to <= 1e-6. What the
input is (PreprocessSpec, INPUT_FORMATS) is described in promptkd_edge/formats/preprocess.py; this module does it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.formats.preprocess import (  # noqa: F401  (the runtime's API)
    INPUT_FORMATS,
    INTERPOLATIONS,
    PreprocessSpec,
    input_format_of,
)

FILTERS = {name: Image.Resampling[name.upper()] for name in INTERPOLATIONS}


def to_rgb(item: Any) -> Image.Image:
    """A path, a PIL image (any mode) or a uint8 array (HxWx3 RGB or HxW grayscale) as an RGB PIL image."""
    if isinstance(item, str | os.PathLike):
        return _open_rgb(Path(item))
    if isinstance(item, Image.Image):
        if item.width == 0 or item.height == 0:
            raise PkdError(f"image is empty ({item.width}x{item.height})")
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, np.ndarray):
        return _array_rgb(item)
    raise PkdError(f"cannot use a {type(item).__name__} as an image; pass a path, a PIL image or a uint8 numpy array")


def _open_rgb(path: Path) -> Image.Image:
    if not path.is_file():
        raise PkdError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise PkdError(f"cannot read image {path}: {first_line(e, with_type=False)}") from None
    if rgb.width == 0 or rgb.height == 0:
        raise PkdError(f"image {path} is empty")
    return rgb


def _array_rgb(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        raise PkdError(f"image arrays: expects uint8 (0-255) HxWx3 RGB or HxW, got {a.dtype}; "
                       "convert with (x * 255).round().astype(np.uint8) if it is in [0, 1]")
    if a.ndim not in (2, 3):
        raise PkdError(f"image array must be HxWx3 (RGB) or HxW (grayscale), got shape {list(a.shape)}")
    if a.size == 0:
        raise PkdError(f"image array is empty (shape {list(a.shape)})")
    if a.ndim == 3:
        channels = a.shape[2]
        if channels == 4:
            raise PkdError(f"image array {list(a.shape)} has 4 channels; pass RGB (drop alpha: a[..., :3])")
        if channels == 1:
            a = a[..., 0]
        elif channels != 3:
            raise PkdError(f"image array {list(a.shape)} has {channels} channels; expected HxWx3 (RGB) or HxW")
    a = np.ascontiguousarray(a)
    img = Image.fromarray(a)  # uint8 HxW -> "L", HxWx3 -> "RGB"
    return img.convert("RGB") if img.mode != "RGB" else img


def _resize(img: Image.Image, hw: tuple[int, int], interpolation: str) -> Image.Image:
    """torchvision's F.resize on PIL: nothing when the size is already right, else PIL's resize."""
    if (img.height, img.width) == hw:
        return img
    return img.resize((hw[1], hw[0]), FILTERS[interpolation])


def _shortest_side(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's output size for an int size: short side = size, long side = int(size * long / short)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def _keep_ratio(h: int, w: int, target: tuple[int, int], longest: float) -> tuple[int, int]:
    """open_clip's ResizeKeepRatio.get_params (no random scale/aspect)."""
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h / ratio), round(w / ratio)


def _center_crop_or_pad(a: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """torchvision's center_crop (= open_clip's center_crop_or_pad with fill 0) on an HxWx3 array."""
    crop_h, crop_w = crop
    h, w = a.shape[:2]
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        a = np.pad(a, ((top, bottom), (left, right), (0, 0)))
        h, w = a.shape[:2]
        if (h, w) == (crop_h, crop_w):
            return a
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return a[top:top + crop_h, left:left + crop_w]


def _resize_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """open_clip's eval resize + crop: HxWx3 uint8 of exactly spec.size."""
    target = spec.size
    if spec.resize_mode == "squash":
        return np.asarray(_resize(img, target, spec.interpolation))
    if spec.resize_mode == "longest":
        img = _resize(img, _keep_ratio(img.height, img.width, target, 1.0), spec.interpolation)
    elif target[0] == target[1]:
        img = _resize(img, _shortest_side(img.height, img.width, target[0]), spec.interpolation)
    else:  # open_clip uses ResizeKeepRatio(size) here, which resamples bicubic even when bilinear is asked for
        filt = "nearest" if spec.interpolation == "nearest" else "bicubic"
        img = _resize(img, _keep_ratio(img.height, img.width, target, 0.0), filt)
    return _center_crop_or_pad(np.asarray(img), target)


def _as_list(images: Any) -> Sequence[Any]:
    if isinstance(images, str | os.PathLike | Image.Image) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        return [images]
    return images


def prepare(images: Sequence[Any], spec: PreprocessSpec, *, input_format: str = "normalized") -> np.ndarray:
    """Images -> the model-ready batch of `input_format` (INPUT_FORMATS): by default float32 NCHW normalised as
    open_clip's eval transform.

    Each image may be a path, a PIL image or a uint8 array (see `to_rgb`); a single image is taken as a batch of one.
    """
    if input_format not in INPUT_FORMATS:
        raise PkdError(f"unknown input format '{input_format}'; choose one of {', '.join(INPUT_FORMATS)}")
    items = _as_list(images)
    if len(items) == 0:
        raise PkdError("no images given")
    batch = np.empty((len(items), *spec.size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        try:
            batch[i] = _resize_crop(to_rgb(item), spec)
        except PkdError as e:
            if len(items) == 1:
                raise
            raise PkdError(f"image {i}: {e}") from None
    if input_format == "uint8":
        return batch
    pixels = batch.transpose(0, 3, 1, 2).astype(np.float32)
    if input_format == "pixels":
        return np.ascontiguousarray(pixels)
    x = pixels / np.float32(255)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
