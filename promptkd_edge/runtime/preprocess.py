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
from dataclasses import dataclass, replace
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


CHANNEL_ORDERS = ("rgb", "bgr")  # of HxWx3 arrays: OpenCV and GStreamer (BGR/BGRx caps) hand out BGR


def check_channel_order(channel_order: str) -> str:
    """`channel_order` when it is one of CHANNEL_ORDERS, else a one-line PkdError."""
    if channel_order not in CHANNEL_ORDERS:
        raise PkdError(f"unknown channel order '{channel_order}'; choose rgb or bgr (OpenCV's frames are bgr)")
    return channel_order


def _checked_array(a: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """A uint8 HxWx3 array in RGB (a BGR one's channels reversed) or HxW grayscale; a one-line PkdError naming
    what is wrong. Arrays carry no format, so no range: only uint8 is taken (an app's uint16 may hold 10, 12 or 16
    bits)."""
    order = check_channel_order(channel_order).upper()
    if a.dtype != np.uint8:
        if a.dtype.kind == "f" and (a.ndim == 4 or (a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3)):
            raise PkdError(f"image arrays: expects uint8 (0-255) HxWx3 {order} or HxW, got a {a.dtype} "
                           f"{list(a.shape)} array, which looks like a model-ready (normalised NCHW) batch: pass the "
                           "images or frames themselves; the bundle's preprocessing makes its input")
        hint = _ARRAY_HINTS.get(a.dtype.kind, "convert it to uint8 0-255")
        raise PkdError(f"image arrays: expects uint8 (0-255) HxWx3 {order} or HxW, got {a.dtype}; {hint}")
    if a.ndim not in (2, 3):
        raise PkdError(f"image array must be HxWx3 ({order}) or HxW (grayscale), got shape {list(a.shape)}")
    if a.size == 0:
        raise PkdError(f"image array is empty (shape {list(a.shape)})")
    if a.ndim == 3:
        channels = a.shape[2]
        if channels == 4:
            raise PkdError(f"image array {list(a.shape)} has 4 channels; pass {order} (drop alpha: a[..., :3])")
        if channels == 1:
            return a[..., 0]
        if channels != 3:
            raise PkdError(f"image array {list(a.shape)} has {channels} channels; expected HxWx3 ({order}) or HxW")
        if order == "BGR":
            return a[..., ::-1]
    return a


def _array_rgb(a: np.ndarray, channel_order: str = "rgb") -> Image.Image:
    """A uint8 HxWx3 array (in `channel_order`) or HxW grayscale as an RGB PIL image (see `_checked_array`)."""
    a = np.ascontiguousarray(_checked_array(a, channel_order))
    img = Image.fromarray(a)  # uint8 HxW -> "L", HxWx3 -> "RGB"
    return img.convert("RGB") if img.mode != "RGB" else img


def as_rgb(item: Any, channel_order: str = "rgb") -> Any:
    """`item` with a BGR array turned RGB (checked first: dtype, channels, size); anything else unchanged."""
    if check_channel_order(channel_order) == "bgr" and isinstance(item, np.ndarray):
        return _array_rgb(item, "bgr")
    return item


def frame_of(item: Any, channel_order: str = "rgb") -> np.ndarray:
    """One whole frame for a frame graph (input_format "frame"): uint8 HxWx3 RGB at its own size, not resized. A
    path or PIL image is decoded to RGB; an array is checked as `_checked_array` does (grayscale becomes 3
    channels)."""
    if not isinstance(item, np.ndarray):
        return np.asarray(to_rgb(item))
    a = _checked_array(item, channel_order)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


@dataclass(frozen=True)
class FrameGroups:
    """Frames of a frame graph grouped by size, the order of first appearance kept: `groups` holds (positions in
    the input, uint8 [n, H, W, 3]); `count` frames in all."""

    count: int
    groups: list[tuple[list[int], np.ndarray]]


def frame_groups(images: Sequence[Any], channel_order: str = "rgb") -> FrameGroups:
    """Images (frames of any sizes) -> FrameGroups, one model batch per frame size; a bad image is one line naming
    its index."""
    items = _as_list(images)
    if len(items) == 0:
        raise PkdError("no images given")
    return group_frames([_indexed(i, len(items), lambda it=item: frame_of(it, channel_order))
                         for i, item in enumerate(items)])


def group_frames(frames: Sequence[np.ndarray]) -> FrameGroups:
    """uint8 HxWx3 frames -> FrameGroups: one stacked batch per frame size, positions in `frames` kept."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, frame in enumerate(frames):
        by_size.setdefault(frame.shape, []).append(i)
    return FrameGroups(len(frames), [(at, np.stack([frames[i] for i in at])) for at in by_size.values()])


def _indexed(i: int, count: int, make):
    """make(), its PkdError prefixed with the image's index when there are several."""
    try:
        return make()
    except PkdError as e:
        if count == 1:
            raise
        raise PkdError(f"image {i}: {e}") from None


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


def prepare(images: Sequence[Any], spec: PreprocessSpec, *, input_format: str = "normalized",
            channel_order: str = "rgb") -> np.ndarray:
    """Images -> the model-ready batch of `input_format` (INPUT_FORMATS): by default float32 NCHW normalised as
    open_clip's eval transform; "frame": the frames themselves, uint8 [B, H, W, 3] (all of one size: see
    `frame_groups` for several).

    Each image may be a path, a PIL image or a uint8 array (see `to_rgb`; HxWx3 arrays in `channel_order`, "rgb" or
    "bgr"); a single image is taken as a batch of one.
    """
    if input_format not in INPUT_FORMATS:
        raise PkdError(f"unknown input format '{input_format}'; choose one of {', '.join(INPUT_FORMATS)}")
    check_channel_order(channel_order)
    if input_format == "frame":
        groups = frame_groups(images, channel_order).groups
        if len(groups) > 1:
            sizes = ", ".join(f"{g[1].shape[2]}x{g[1].shape[1]} (image {g[0][0]})" for g in groups)
            raise PkdError(f"frames of different sizes make no one batch ({sizes}); run each size apart "
                           "(Classifier does)")
        return groups[0][1]
    items = _as_list(images)
    if len(items) == 0:
        raise PkdError("no images given")
    batch = np.empty((len(items), *spec.size, 3), dtype=np.uint8)
    on_torch = spec.decode.startswith("torch-")  # the JPEG files in one batch; the rest, and failures, exact
    done = _torch_crops(items, spec) if on_torch else [None] * len(items)
    cpu_spec = replace(spec, decode="exact") if on_torch else spec
    for i, (item, crop) in enumerate(zip(items, done, strict=True)):
        batch[i] = crop if crop is not None else _indexed(
            i, len(items), lambda it=item: load_crop(as_rgb(it, channel_order), cpu_spec))
    if input_format == "uint8":
        return batch
    pixels = batch.transpose(0, 3, 1, 2).astype(np.float32)
    if input_format == "pixels":
        return np.ascontiguousarray(pixels)
    x = pixels / np.float32(255)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
