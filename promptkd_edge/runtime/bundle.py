"""Read a bundle (export/BUNDLE.md) and check it before anything is loaded: manifest, sha256 of every file.

Imports no torch: numpy, safetensors' numpy reader and the standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import MANIFEST_FILE, EngineEntry, Manifest, ModelEntry
from promptkd_edge.utils.files import read_json, sha256_file


@dataclass
class Bundle:
    """A checked bundle: its folder, manifest, class names and (when shipped) class vectors as numpy."""

    path: Path
    manifest: Manifest
    class_names: list[str]
    class_vectors: np.ndarray | None  # [C, D] float32
    logit_scale: float
    preprocess: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> ModelEntry:
        return self.manifest.model

    @property
    def model_path(self) -> Path:
        return self.path / self.model.file

    @property
    def valid(self) -> bool:
        return self.manifest.valid

    @property
    def engines(self) -> list[EngineEntry]:
        return list(self.manifest.engines)


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Every named file exists and has its recorded sha256, else one line naming the first that does not."""
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            raise PkdError(f"bundle {root} is incomplete: {name} is missing")
        if sha256_file(path) != expected:
            raise PkdError(f"bundle {root} was modified: {name} does not match its sha256 in manifest.json")


def open_bundle(path: str | os.PathLike, *, allow_invalid: bool = False) -> Bundle:
    """Read and verify a bundle folder. A bundle kept with `--force` after a failed parity gate is refused
    unless `allow_invalid`."""
    root = Path(path)
    if not root.is_dir():
        raise PkdError(f"bundle not found: {root}")
    manifest = read_manifest(root)
    verify_files(root, manifest.files)
    if not manifest.valid and not allow_invalid:
        raise PkdError(f"bundle {root} failed its parity gate at export (kept with --force); "
                       "re-export it, or accept it explicitly (allow_invalid=True / --allow-invalid)")
    names, vectors, scale = read_classes(root)
    preprocess = read_json(root / "preprocess.json", "preprocess description")
    return Bundle(root, manifest, names, vectors, scale, preprocess)


def read_manifest(root: Path) -> Manifest:
    """The bundle's manifest.json as typed records (files not yet checked: see `open_bundle`)."""
    path = root / MANIFEST_FILE
    try:
        return Manifest.from_dict(read_json(path, "bundle manifest"))
    except PkdError as e:
        raise PkdError(f"{path}: {e}") from None


def read_classes(root: Path) -> tuple[list[str], np.ndarray | None, float]:
    """(class names, W [C, D] float32 or None when not shipped, logit scale) of a bundle folder."""
    classes = read_json(root / "classes.json", "class list")
    path = root / classes.get("vectors_file", "class_vectors.safetensors")
    vectors = None
    if path.is_file():
        from safetensors.numpy import load_file

        vectors = load_file(str(path))["class_vectors"].astype(np.float32)
    return list(classes["names"]), vectors, float(classes["logit_scale"])
