"""Images as the models see them, torch-free and shared by training, `pkd eval` and the runtime: a file or a PIL
image of any mode as 8-bit RGB scaled by its format's real range, and open_clip's eval resize + centre crop with the
work bounded by the output size (a 1 x 1,000,000 image costs what a 32 x 32 crop costs, not 5.7 GB)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.utils.paths import file_problem

FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
RESIZE_BUDGET = 1 << 24  # pixels (48 MB of RGB): a larger full resize resamples only the region the crop keeps
FLOAT_SLACK = 1e-3  # float pixels this far outside [0, 1] are rounding, clipped; further out the image is refused


class UnreadableImage(PkdError):
    """An image that cannot be decoded or mapped to RGB; the message is the reason alone (callers add the path)."""


def rgb_image(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB, scaled by the real range of its format (one rule for training, eval and the runtime):

    - 8-bit modes (1, L, P, RGB, RGBA, LA, PA, CMYK, YCbCr, LAB, HSV, ...): PIL's conversion, alpha dropped. PIL
      itself reads 16-bit-per-channel RGB(A) and gray+alpha PNGs as 8-bit (their high byte).
    - 16-bit gray (I;16, I;16B, I;16L; mode I read from a PNG, which has no 32-bit gray): 0..65535 -> 0..255,
      rounded (the format's range whatever the content: 32768 -> 128, 65535 -> 255).
    - float (F, e.g. a float32 TIFF): 0..1 -> 0..255, rounded; values up to FLOAT_SLACK outside [0, 1] are clipped,
      anything further out (HDR, 0..255 floats) or NaN is refused rather than clipped to white.
    - 32-bit integer (mode I from elsewhere): refused, it has no standard range.
    Raises UnreadableImage with the reason.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in SIXTEEN_BIT or (mode == "I" and img.format == "PNG"):
        a = np.asarray(img)
        if mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise UnreadableImage(f"16-bit PNG with values outside 0..65535 ({a.min()}..{a.max()})")
        a = a.astype(np.uint32)  # 65535 * 255 fits; rounded to nearest below
        a *= 255
        a += 32767
        a //= 65535
        return _gray(a.astype(np.uint8))
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise UnreadableImage("float image with NaN or infinite pixels")
        low, high = float(a.min()), float(a.max())
        if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
            raise UnreadableImage(f"float image with pixels in [{low:.4g}, {high:.4g}], outside the [0, 1] range of "
                                  "float images; scale it to [0, 1] (or save it as 8 or 16 bits)")
        return _gray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))
    if mode == "I":
        raise UnreadableImage("32-bit integer image (mode I): no standard range to map to 0..255; save it as 8 or "
                              "16 bits")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise UnreadableImage(f"cannot convert PIL mode {mode} to RGB ({first_line(e, with_type=False)})") from None


def _gray(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a), "L").convert("RGB")


def decode_rgb(source: str | os.PathLike | IO[bytes]) -> Image.Image:
    """Decode an image file (or binary file object) to 8-bit RGB by `rgb_image`'s rules. A path is checked before
    it is opened: a folder, FIFO, device, broken symlink or symlink loop is named as such and never opened. Raises
    UnreadableImage with the reason ("file not found", "is a FIFO (named pipe), not a file", "not an image file PIL
    can read", "image file is truncated ...")."""
    return _decode(source)[0]


def _decode(source: str | os.PathLike | IO[bytes], at_least: Callable[[int, int], tuple[int, int]] | None = None
            ) -> tuple[Image.Image, tuple[int, int], int]:
    """(RGB image, full (height, width), DCT scale) of `decode_rgb`; a JPEG given `at_least` (full height, width ->
    the smallest (width, height) wanted) is decoded by libjpeg at 1/2, 1/4 or 1/8 scale where that stays at least
    that large (Pillow's `Image.draft`, JpegImagePlugin.draft picks the scale); the image then covers the full
    extent divided by the scale (its last row and column partly)."""
    if isinstance(source, str | os.PathLike):
        problem = file_problem(source)
        if problem:
            raise UnreadableImage(problem)
    scale = 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as img:
                full = (img.height, img.width)
                if at_least is not None and img.format == "JPEG" and min(full) > 0:
                    drafted = img.draft(img.mode, at_least(*full))  # (mode, (0, 0, width / s, height / s))
                    if drafted is not None:
                        scale = round(full[1] / drafted[1][2])
                img.load()
                rgb = rgb_image(img)
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(first_line(e, with_type=False)) from None
    if rgb.width == 0 or rgb.height == 0:
        raise UnreadableImage("image is empty (0 pixels)")
    return rgb, full, scale


def decode_resize_crop(source: str | os.PathLike | IO[bytes], size: tuple[int, int], resize_mode: str,
                       interpolation: str, oversample: float) -> np.ndarray:
    """`resize_crop(decode_rgb(source), ...)` with a JPEG decoded in the DCT domain at the smallest of 1/2, 1/4,
    1/8 scale that keeps it at least `oversample` times the size the crop is resized from (a 1920x1080 frame for a
    224 crop at oversample 1.5: 960x540, a quarter of the pixels to decode and resample). Not bit-equal with the full
    decode (the IDCT's low-pass replaces part of the bicubic's), so a bundle uses it only where its gate passed
    (export/decode_gate.py). Other formats decode in full. The geometry is the full image's."""
    def at_least(h: int, w: int) -> tuple[int, int]:
        new_h, new_w = resize_plan(h, w, size, resize_mode, interpolation)[0]
        return max(1, math.ceil(new_w * oversample)), max(1, math.ceil(new_h * oversample))

    img, full, scale = _decode(source, at_least)
    return resize_crop(img, size, resize_mode, interpolation, full=full, scale=scale)


# ---------------------------------------------------------------------------------------------- resize + crop


def _shortest_side(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's output size for an int size: short side = size, long side = int(size * long / short)."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def _keep_ratio(h: int, w: int, target: tuple[int, int], longest: float) -> tuple[int, int]:
    """open_clip's ResizeKeepRatio.get_params (no random scale/aspect); at least 1 pixel a side (open_clip fails
    on an image so thin that a side rounds to 0)."""
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return max(1, round(h / ratio)), max(1, round(w / ratio))


def crop_axis(new: int, crop: int) -> tuple[int, int, int, int]:
    """One axis of torchvision's center_crop (open_clip's center_crop_or_pad, fill 0) of a side resized to `new`:
    (start, length) of the part kept, in resized pixels, and the zero padding (before, after) around it."""
    if new < crop:
        return 0, new, (crop - new) // 2, (crop - new + 1) // 2
    return int(round((new - crop) / 2.0)), crop, 0, 0


def _resized_center_crop(img: Image.Image, new: tuple[int, int], crop: tuple[int, int], interpolation: str,
                         extent: tuple[float, float] | None = None) -> np.ndarray:
    """`img` resized to `new` (h, w) then centre-cropped or zero-padded to `crop`. Bit-exact with open_clip's
    full resize while that stays under RESIZE_BUDGET pixels (every image of a sane aspect ratio). Beyond it only the
    region the crop keeps is resampled (PIL's resize with a source box), which bounds the work by the output size;
    the filter positions are the same up to PIL's float32 box and its choice of pass order, so pixels are close to,
    not bit-equal with, the full resize (which would not fit in memory). `extent` (width, height): the part of
    `img` that is the whole image (a DCT-scaled JPEG's, see `_decode`), by default all of it."""
    (y0, lh, top, bottom), (x0, lw, left, right) = crop_axis(new[0], crop[0]), crop_axis(new[1], crop[1])
    whole = extent is None or extent == (img.width, img.height)
    ext_w, ext_h = (img.width, img.height) if extent is None else extent
    if whole and new == (img.height, img.width):  # torchvision does not resample an image already at the size
        out = np.asarray(img)[y0:y0 + lh, x0:x0 + lw]
    elif new[0] * new[1] <= RESIZE_BUDGET:
        box = None if whole else (0.0, 0.0, ext_w, ext_h)
        out = np.asarray(img.resize((new[1], new[0]), FILTERS[interpolation], box=box))[y0:y0 + lh, x0:x0 + lw]
    else:
        sy, sx = ext_h / new[0], ext_w / new[1]
        box = (x0 * sx, y0 * sy, (x0 + lw) * sx, (y0 + lh) * sy)
        out = np.asarray(img.resize((lw, lh), FILTERS[interpolation], box=box))
    if top or bottom or left or right:
        out = np.pad(out, ((top, bottom), (left, right), (0, 0)))
    return out


def resize_plan(h: int, w: int, size: tuple[int, int], resize_mode: str, interpolation: str
                 ) -> tuple[tuple[int, int], str]:
    """(size (h, w) open_clip resizes an h x w image to before its centre crop, the filter it resamples with)."""
    if resize_mode == "squash":
        return size, interpolation
    if resize_mode == "longest":
        return _keep_ratio(h, w, size, 1.0), interpolation
    if size[0] == size[1]:
        return _shortest_side(h, w, size[0]), interpolation
    # a non-square size: open_clip uses ResizeKeepRatio(size), which resamples bicubic even when bilinear is asked for
    return _keep_ratio(h, w, size, 0.0), "nearest" if interpolation == "nearest" else "bicubic"


def resize_crop(img: Image.Image, size: tuple[int, int], resize_mode: str, interpolation: str, *,
                full: tuple[int, int] | None = None, scale: int = 1) -> np.ndarray:
    """open_clip's eval resize + crop of an RGB image (resize_mode shortest, longest or squash), as an HxWx3 uint8
    array of exactly `size`; equal to open_clip's transform, which resizes the whole image first. For a JPEG
    decoded at 1/`scale` (`_decode`), `full` is the (height, width) of the whole image: the geometry is its."""
    h, w = full or (img.height, img.width)
    new, filt = resize_plan(h, w, size, resize_mode, interpolation)
    extent = None if full is None else (w / scale, h / scale)
    return _resized_center_crop(img, new, size, filt, extent)
