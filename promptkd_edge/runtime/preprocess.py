"""Turn images into model input exactly as open_clip's eval transform does, with numpy and Pillow only (no torch).

The reference is open_clip's transform (`promptkd_edge.data.views.eval_transform`) applied to the image decoded to
RGB by `promptkd_edge.utils.images` (as the data path decodes it); outputs agree to <= 1e-6, and the resize only
touches the region the crop keeps. What the input is (PreprocessSpec, INPUT_FORMATS) is described in
promptkd_edge/formats/preprocess.py; this module does it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.preprocess import (  # noqa: F401  (the runtime's API)
    INPUT_FORMATS,
    INTERPOLATIONS,
    PreprocessSpec,
    input_format_of,
)
from promptkd_edge.utils.images import UnreadableImage, decode_rgb, resize_crop, rgb_image


def to_rgb(item: Any) -> Image.Image:
    """A path, a PIL image (any mode: 16-bit and float scaled by their range, see `rgb_image`) or a uint8 array
    (HxWx3 RGB or HxW grayscale) as an 8-bit RGB PIL image."""
    if isinstance(item, str | os.PathLike):
        return _open_rgb(Path(item))
    if isinstance(item, Image.Image):
        if item.width == 0 or item.height == 0:
            raise PkdError(f"image is empty ({item.width}x{item.height})")
        try:
            return rgb_image(item)
        except UnreadableImage as e:
            raise PkdError(f"cannot use this PIL image: {e}") from None
    if isinstance(item, np.ndarray):
        return _array_rgb(item)
    raise PkdError(f"cannot use a {type(item).__name__} as an image; pass a path, a PIL image or a uint8 numpy array")


def _open_rgb(path: Path) -> Image.Image:
    try:
        return decode_rgb(path)
    except UnreadableImage as e:
        if str(e) == "file not found":
            raise PkdError(f"image not found: {path}") from None
        raise PkdError(f"cannot read image {path}: {e}") from None


_ARRAY_HINTS = {"u": "scale it to 0-255 first (16-bit data: (x / 257).round().astype(np.uint8); other bit depths "
                     "by their own maximum)",
                "i": "scale it to 0-255 first",
                "f": "convert with (x * 255).round().astype(np.uint8) if it is in [0, 1]",
                "b": "convert with x.astype(np.uint8) * 255"}


def _array_rgb(a: np.ndarray) -> Image.Image:
    """Arrays carry no format, so no range: only uint8 is taken (an app's uint16 may hold 10, 12 or 16 bits)."""
    if a.dtype != np.uint8:
        hint = _ARRAY_HINTS.get(a.dtype.kind, "convert it to uint8 0-255")
        raise PkdError(f"image arrays: expects uint8 (0-255) HxWx3 RGB or HxW, got {a.dtype}; {hint}")
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


def load_crop(item: Any, spec: PreprocessSpec) -> np.ndarray:
    """One image (path, PIL image or uint8 array, see `to_rgb`) decoded, resized and cropped as open_clip's eval
    transform does: HxWx3 uint8 of exactly spec.size (work bounded by that size). Raises PkdError naming the
    problem."""
    return resize_crop(to_rgb(item), spec.size, spec.resize_mode, spec.interpolation)


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
            batch[i] = load_crop(item, spec)
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
