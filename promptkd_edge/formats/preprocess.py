"""How an image becomes model input, as data: the bundle's preprocess.json and the graph input formats.

Torch-free and numpy-free: models/ (which derives it from open_clip), export/ (which writes it) and runtime/ (which
applies it, runtime/preprocess.py) all read this one description.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Any

from promptkd_edge.errors import PkdError
from promptkd_edge.utils.files import read_json

RESIZE_MODES = ("shortest", "squash", "longest")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# How the runtime decodes JPEG files (PreprocessSpec.decode). "exact" is the reference; the others change pixels, so
# each is a precision: the runtime uses one only where the bundle's manifest holds a passing parity entry whose
# `runtime` is DECODE_GATES[name] (export/decode_gate.py writes it; runtime.preprocess.decode_for reads it).
DECODES = {
    "exact": "full decode + open_clip's resize (the reference)",
    "draft": "JPEG decoded by libjpeg at 1/2, 1/4 or 1/8 scale, kept >= DRAFT_OVERSAMPLE x the resize size "
             "(Pillow's Image.draft), + open_clip's resize",
    "torch-cpu": "torchvision.io.decode_jpeg on the CPU + torch's antialiased resize (the GPU path, on the CPU)",
    "torch-cuda": "torchvision.io.decode_jpeg on the GPU (nvJPEG, batched) + torch's antialiased resize",
}
DECODE_GATES = {"draft": "decode-jpeg-draft", "torch-cpu": "decode-jpeg-torch", "torch-cuda": "decode-jpeg-torch"}
DRAFT_OVERSAMPLE = 1.5  # docs/preprocessing.md: 1/2 scale for 1080p and 720p frames to a 224 crop


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes model input: the bundle's preprocess.json (open_clip's preprocess config)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    decode: str = "exact"  # DECODES: the runtime's choice from the bundle's gates, never read from preprocess.json

    def __post_init__(self) -> None:
        if isinstance(self.size, numbers.Integral):
            object.__setattr__(self, "size", (self.size, self.size))
        if len(self.size) != 2 or any(not isinstance(s, numbers.Integral) or isinstance(s, bool) or s <= 0
                                      for s in self.size):
            raise PkdError(f"preprocess size must be two positive integers [height, width], got {list(self.size)}")
        for name, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) != 3 or any(not isinstance(v, numbers.Real) or isinstance(v, bool) for v in vals):
                raise PkdError(f"preprocess {name} must be three numbers, got {list(vals)}")
        if any(v == 0 for v in self.std):
            raise PkdError(f"preprocess std must not contain 0, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise PkdError(f"preprocess interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise PkdError(f"preprocess resize_mode '{self.resize_mode}' is not one of {', '.join(RESIZE_MODES)}")
        if self.decode not in DECODES:
            raise PkdError(f"preprocess decode '{self.decode}' is not one of {', '.join(DECODES)}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """From a preprocess.json object (or `Preprocess.to_dict()`); an int size means a square."""
        try:
            size = d["size"]
            return cls(size=size if isinstance(size, int) else tuple(size), mean=tuple(d["mean"]), std=tuple(d["std"]),
                       interpolation=d.get("interpolation", "bicubic"), resize_mode=d.get("resize_mode", "shortest"))
        except KeyError as e:
            raise PkdError(f"preprocess config lacks {e.args[0]!r}") from None
        except TypeError as e:
            raise PkdError(f"preprocess config is malformed: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """preprocess.json's object (without `decode`, which the manifest's gates decide)."""
        return {"size": list(self.size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode}

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreprocessSpec:
        """Read a bundle's preprocess.json."""
        try:
            return cls.from_dict(read_json(path, "preprocess.json"))
        except PkdError as e:
            if str(path) in str(e):
                raise
            raise PkdError(f"{path}: {e}") from None


# What a graph takes (manifest model "input_format"): the model-ready batch `prepare` makes for it.
INPUT_FORMATS = {
    "normalized": "float32 NCHW [B, 3, H, W] normalised as open_clip's eval transform",
    "uint8": "uint8 NHWC [B, H, W, 3], resized and cropped; the graph does /255 and mean/std",
    "pixels": "float32 NCHW [B, 3, H, W] in pixel units 0-255, resized and cropped; the graph does /255 and "
              "mean/std (DeepStream nvinfer's input with net-scale-factor 1 and offsets 0)",
    "frame": "uint8 NHWC [B, H, W, 3] whole frames of any H and W (one size per batch); the graph resizes, "
             "centre-crops, does /255 and mean/std (pkd export --frame-input)",
}


def input_format_of(model: dict[str, Any]) -> str:
    """The input format of a manifest's model (bundles written before `input_format` have `uint8_input`)."""
    return model.get("input_format") or ("uint8" if model.get("uint8_input") else "normalized")
