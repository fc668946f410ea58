"""Decode an image file to RGB, or report it as unreadable (callers skip and count, never crash). The rules (16-bit
and float images scaled by their range, FIFOs and folders never opened) are `promptkd_edge.utils.images`', shared
with the runtime."""

from __future__ import annotations

import os
from typing import IO

from PIL import Image

from promptkd_edge.utils.images import UnreadableImage, decode_rgb


def read_rgb(path: str | os.PathLike | IO[bytes]) -> tuple[Image.Image | None, str | None]:
    """(the image as RGB, None), or (None, why it cannot be read: missing, truncated, not an image, a FIFO, ...)."""
    try:
        return decode_rgb(path), None
    except UnreadableImage as e:
        return None, str(e)


def open_rgb(path: str | os.PathLike | IO[bytes]) -> Image.Image | None:
    """The image as RGB, or None when it is missing, truncated or not an image."""
    return read_rgb(path)[0]
