"""Decode an image file to RGB, or report it as unreadable (callers skip and count, never crash)."""

from __future__ import annotations

import os
import warnings

from PIL import Image, UnidentifiedImageError

from promptkd_edge.errors import first_line


def read_rgb(path: str | os.PathLike) -> tuple[Image.Image | None, str | None]:
    """(the image as RGB, None), or (None, why it cannot be read: missing, truncated, not an image, ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB"), None
    except FileNotFoundError:
        return None, "file not found"
    except UnidentifiedImageError:
        return None, "not an image file PIL can read"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return None, first_line(e, with_type=False)


def open_rgb(path: str | os.PathLike) -> Image.Image | None:
    """The image as RGB, or None when it is missing, truncated or not an image."""
    return read_rgb(path)[0]
