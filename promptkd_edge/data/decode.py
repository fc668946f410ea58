"""Decode an image file to RGB, or report it as unreadable (callers skip and count, never crash)."""

from __future__ import annotations

import os
import warnings

from PIL import Image


def open_rgb(path: str | os.PathLike) -> Image.Image | None:
    """The image as RGB, or None when it is missing, truncated or not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
