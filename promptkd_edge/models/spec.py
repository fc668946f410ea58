"""A model spec `ARCH`, `ARCH:TAG` or `ARCH:/path/to/weights` as data: no torch, no open_clip (bundles name their
student's spec, and torch-free tools read it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from promptkd_edge.errors import PkdError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
SCHEMAS = ("hf-hub:", "local-dir:")


@dataclass(frozen=True)
class ModelSpec:
    """An open_clip model: architecture plus optional pretrained tag or local weights file."""

    arch: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        text = text.strip()
        if not text:
            raise PkdError("empty model spec; expected ARCH, ARCH:TAG or ARCH:/path/to/weights")
        if text.startswith(SCHEMAS):
            return cls(text, None)
        arch, sep, pretrained = text.partition(":")
        if sep and not pretrained:
            raise PkdError(f"model spec '{text}' ends with ':'; expected ARCH:TAG or ARCH:/path/to/weights")
        return cls(arch, pretrained or None)

    @property
    def is_file(self) -> bool:
        p = self.pretrained
        return p is not None and (os.sep in p or "/" in p or p.endswith(WEIGHT_SUFFIXES) or Path(p).exists())

    def __str__(self) -> str:
        return self.arch if self.pretrained is None else f"{self.arch}:{self.pretrained}"
