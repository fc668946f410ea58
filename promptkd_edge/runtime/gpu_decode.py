"""JPEG files decoded on the GPU: torchvision.io.decode_jpeg(device="cuda") (nvJPEG, a batch in one call) and
torch's antialiased resize + centre crop to the bundle's crop, handed back as the usual uint8 HxWx3 crops.

The same code runs with device="cpu" (libjpeg-turbo inside torchvision), which is how the export gate and the tests
measure it where no GPU is. Its pixels differ from the reference (PIL decode + PIL bicubic) by rounding: torch's
antialiased bicubic is PIL's filter (a = -0.5) in float, PIL's is fixed-point; nvJPEG's IDCT and chroma upsampling
are not libjpeg's. So it is a precision, gated at export (export/decode_gate.py) and used only where it passed.

Imported only when that path is chosen: torch and torchvision are not part of the core runtime install. Safe to call
from several threads (one lock around the decoder: torchvision's CUDA decoder holds process-wide nvJPEG state).
"""

from __future__ import annotations

import functools
import io
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from promptkd_edge.errors import first_line
from promptkd_edge.formats.preprocess import PreprocessSpec
from promptkd_edge.utils.images import crop_axis, resize_plan

JPEG_MAGIC = b"\xff\xd8\xff"
TORCH_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest-exact"}  # nearest-exact: PIL's
_LOCK = threading.Lock()
# torchvision 0.29 deprecates its image decoders for TorchCodec's, per call; they still work (docs/preprocessing.md)
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


@functools.cache
def unavailable(device: str) -> str | None:
    """Why JPEGs cannot be decoded with torch on `device` ("cpu" or "cuda") here, or None when they can: torch and
    torchvision import, CUDA is there, and torchvision decodes a small JPEG on it (a build without nvJPEG cannot)."""
    try:
        import torch
        import torchvision.io  # noqa: F401
    except ImportError as e:
        return f"{e.name or 'torch'} is not installed (pip install torch torchvision)"
    if device == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        _probe(device)
    except RuntimeError as e:
        return f"torchvision cannot decode JPEGs on {device} ({first_line(e, with_type=False)})"
    return None


def _probe(device: str) -> None:
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, format="JPEG")
    decode_jpeg(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), device=device)


def is_jpeg(item: object) -> bool:
    """A path to a regular file that starts as a JPEG does (anything else takes the CPU path, which names any
    problem; a FIFO is never opened)."""
    if not isinstance(item, str | os.PathLike) or not Path(item).is_file():
        return False
    try:
        with open(item, "rb") as f:
            return f.read(3) == JPEG_MAGIC
    except OSError:
        return False


def decode_crops(paths: Sequence[str | os.PathLike], spec: PreprocessSpec, device: str
                 ) -> list[np.ndarray | None]:
    """The crop (HxWx3 uint8 of spec.size) of each JPEG file, decoded on `device` in one batch; None for a file
    torch cannot decode (CMYK, corrupt: the caller's CPU path names the reason)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [torch.from_numpy(np.fromfile(Path(p), dtype=np.uint8)) for p in paths]
    with _LOCK:
        try:
            images: list = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: decode one by one to find it
            images = [_decode_one(d, device) for d in datas]
        out = [None if img is None else _resize_crop(img, spec) for img in images]
        if device == "cuda":
            torch.cuda.synchronize()
    return [None if o is None else o.cpu().numpy() for o in out]


def _decode_one(data, device: str):
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _resize_crop(img, spec: PreprocessSpec):
    """A decoded 3xHxW uint8 tensor -> HxWx3 uint8 tensor of spec.size: open_clip's geometry (resize_plan,
    crop_axis: the same as the CPU path), torch's antialiased resize in float, rounded."""
    import torch
    import torch.nn.functional as F

    h, w = int(img.shape[1]), int(img.shape[2])
    new, filt = resize_plan(h, w, spec.size, spec.resize_mode, spec.interpolation)
    (y0, lh, top, bottom), (x0, lw, left, right) = crop_axis(new[0], spec.size[0]), crop_axis(new[1], spec.size[1])
    x = img[None]
    if new != (h, w):
        mode = TORCH_MODES[filt]
        x = F.interpolate(x.float(), size=new, mode=mode, antialias=mode != "nearest-exact")
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    x = x[0, :, y0:y0 + lh, x0:x0 + lw]
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return x.permute(1, 2, 0).contiguous()
