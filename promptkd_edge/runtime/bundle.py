"""Open a bundle (export/BUNDLE.md; its layout: formats/bundle.py), checked before anything is loaded: manifest,
sha256 of every file.

Imports no torch: numpy, safetensors' numpy reader and the standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.bundle import (
    ALTERED,
    PREPROCESS_FILE,
    files_read,
    inside,
    read_manifest,
    require_listed,
    verify_files,
)
from promptkd_edge.formats.classes import CLASSES_FILE, VECTORS_FILE, ClassList
from promptkd_edge.formats.manifest import EngineEntry, Manifest, ModelEntry
from promptkd_edge.formats.preprocess import PreprocessSpec
from promptkd_edge.formats.run import STUDENT_FILE
from promptkd_edge.utils.files import read_json


@dataclass
class Bundle:
    """A checked bundle: its folder, manifest, class names and (when shipped) class vectors as numpy."""

    path: Path
    manifest: Manifest
    class_names: list[str]
    class_vectors: np.ndarray | None  # [C, D] float32
    logit_scale: float
    preprocess: PreprocessSpec  # preprocess.json, checked when the bundle opens

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


def open_bundle(path: str | os.PathLike, *, allow_invalid: bool = False) -> Bundle:
    """Read and verify a bundle folder: every file a reader opens is listed in manifest.json with the sha256 it has
    (a file left out of the list would be read unchecked). A bundle kept with `--force` after a failed parity gate
    is refused unless `allow_invalid`."""
    root = Path(path)
    if not root.is_dir():
        raise PkdError(f"bundle not found: {root}")
    manifest = read_manifest(root)
    require_listed(root, manifest, files_read(manifest))
    verify_files(root, manifest.files)
    classes = read_json(root / CLASSES_FILE, "class list")  # verified: it may now name the vectors file
    vectors = classes.get("vectors_file", VECTORS_FILE)
    if not isinstance(vectors, str):
        raise PkdError(f"bundle {root}: classes.json has vectors_file {vectors!r}, not a file name; {ALTERED}")
    require_listed(root, manifest, [name for name in (vectors, STUDENT_FILE)
                                    if name == classes.get("vectors_file") or inside(root, name).exists()])
    if not manifest.valid and not allow_invalid:
        raise PkdError(f"bundle {root} failed its parity gate at export (kept with --force); "
                       "re-export it, or accept it explicitly (allow_invalid=True / --allow-invalid)")
    names, vectors_w, scale = read_classes(root)
    preprocess = PreprocessSpec.from_dict(read_json(root / PREPROCESS_FILE, "preprocess description"))
    return Bundle(root, manifest, names, vectors_w, scale, preprocess)


def read_classes(root: Path) -> tuple[list[str], np.ndarray | None, float]:
    """(class names, W [C, D] float32 or None when not shipped, logit scale) of a bundle folder."""
    classes = ClassList.read(root)
    path = inside(root, classes.vectors_file)
    vectors = None
    if path.is_file():
        from safetensors.numpy import load_file

        vectors = load_file(str(path))["class_vectors"].astype(np.float32)
    return classes.names, vectors, classes.logit_scale
