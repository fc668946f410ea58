"""Turn images into model input exactly as open_clip's eval transform does, with numpy and Pillow only (no torch).

The reference is open_clip's transform (`promptkd_edge.data.views.eval_transform`) applied to the image decoded to
RGB by `promptkd_edge.utils.images` (as the data path decodes it); outputs agree to <= 1e-6, and the resize only
touches the region the crop keeps. What the input is (PreprocessSpec, INPUT_FORMATS) is described in
promptkd_edge/formats/preprocess.py; this module does it.

JPEG files may take a faster decode that changes pixels (spec.decode, formats/preprocess.py DECODES): the DCT-domain
downscale, or torch's decoder on the GPU (runtime/gpu_decode.py, imported only then). `decode_for` picks one only
where the bundle's gate for it passed (export/decode_gate.py); everything else, and every other input, is exact.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.preprocess import (  # noqa: F401  (the runtime's API)
    DECODE_GATES,
    DRAFT_OVERSAMPLE,
    INPUT_FORMATS,
    INTERPOLATIONS,
    PreprocessSpec,
    input_format_of,
)
from promptkd_edge.utils.images import UnreadableImage, decode_resize_crop, decode_rgb, resize_crop, rgb_image


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
    with _naming(path):
        return decode_rgb(path)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An unreadable file as the one-line PkdError naming it."""
    try:
        yield
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
    transform does: HxWx3 uint8 of exactly spec.size (work bounded by that size). A JPEG file takes spec.decode's
    path (the gated shortcuts: module docstring). Raises PkdError naming the problem. Thread-safe; Pillow and
    torch release the GIL while they decode and resample."""
    if spec.decode != "exact" and isinstance(item, str | os.PathLike):
        if spec.decode.startswith("torch-"):
            crop = _torch_crops([item], spec)[0]
            if crop is not None:
                return crop
        elif spec.decode == "draft":
            with _naming(Path(item)):
                return decode_resize_crop(item, spec.size, spec.resize_mode, spec.interpolation, DRAFT_OVERSAMPLE)
    return resize_crop(to_rgb(item), spec.size, spec.resize_mode, spec.interpolation)


def _torch_crops(items: Sequence[Any], spec: PreprocessSpec) -> list[np.ndarray | None]:
    """Crops of the JPEG files among `items` decoded by torch on spec.decode's device (one batch); None for the
    rest, which take the CPU path."""
    from promptkd_edge.runtime.gpu_decode import decode_crops, is_jpeg

    jpegs = [i for i, item in enumerate(items) if is_jpeg(item)]
    out: list[np.ndarray | None] = [None] * len(items)
    if jpegs:
        crops = decode_crops([items[i] for i in jpegs], spec, spec.decode.removeprefix("torch-"))
        for i, crop in zip(jpegs, crops, strict=True):
            out[i] = crop
    return out


def decode_for(passed: set[str], *, exact: bool = False, gpu: bool = False) -> tuple[str, list[str]]:
    """(spec.decode, notes) for a bundle whose passing gates are `passed` (Manifest.passed_gates): "exact" when the
    caller asks for it or no shortcut's gate passed; on a GPU backend torch's CUDA decoder where its gate passed and
    torch, torchvision and CUDA are here (else a note, and the CPU's choice); on the CPU the DCT-domain downscale
    where its gate passed."""
    if exact:
        return "exact", []
    notes = []
    if gpu and DECODE_GATES["torch-cuda"] in passed:
        from promptkd_edge.runtime.gpu_decode import unavailable

        reason = unavailable("cuda")
        if reason is None:
            return "torch-cuda", []
        notes.append(f"JPEG files are decoded on the CPU, not the GPU: {reason}")
    return ("draft" if DECODE_GATES["draft"] in passed else "exact"), notes


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
    on_torch = spec.decode.startswith("torch-")  # the JPEG files in one batch; the rest, and failures, exact
    done = _torch_crops(items, spec) if on_torch else [None] * len(items)
    cpu_spec = replace(spec, decode="exact") if on_torch else spec
    for i, (item, crop) in enumerate(zip(items, done, strict=True)):
        try:
            batch[i] = crop if crop is not None else load_crop(item, cpu_spec)
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
