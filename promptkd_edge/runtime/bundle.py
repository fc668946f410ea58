"""Read a bundle (export/BUNDLE.md) and check it before anything is loaded: manifest, sha256 of every file.

Imports no torch: numpy, safetensors' numpy reader and the standard library only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import MANIFEST_FILE, EngineEntry, Manifest, ModelEntry
from promptkd_edge.utils.files import read_json, sha256_file

CLASSES_FILE = "classes.json"
PREPROCESS_FILE = "preprocess.json"
VECTORS_FILE = "class_vectors.safetensors"  # classes.json's vectors_file when it names none
STUDENT_FILE = "student.safetensors"  # the PyTorch student (backend "torch", `pkd bench`), when shipped
ALTERED = "the bundle was altered or written by a broken tool"


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


def inside(root: Path, name: str) -> Path:
    """`root / name` for a file name read from a bundle's manifest or classes.json; refused when it could lead out of
    the bundle (absolute or with a drive on any system, a `..` between '/' or '\\' separators, empty)."""
    parts = re.split(r"[\\/]", name)  # `..` between either separator: the bundle may be read on Windows too
    if not name or ".." in parts or PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        raise PkdError(f"bundle {root}: manifest.json names {name!r}, a path outside the bundle; {ALTERED}")
    return root / name


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Every named file exists and has its recorded sha256, else one line naming the first that does not."""
    for name, expected in files.items():
        path = inside(root, name)
        if not path.is_file():
            raise PkdError(f"bundle {root} is incomplete: {name} is missing")
        if sha256_file(path) != expected:
            raise PkdError(f"bundle {root} was modified: {name} does not match its sha256 in manifest.json")


def files_read(manifest: Manifest) -> list[str]:
    """The files of a bundle that readers open by what the manifest names: the model, classes.json, preprocess.json,
    each engine's plan and graph, the text encoder's graphs and tokenizer merges. (The class vectors file is named by
    classes.json: see `open_bundle`.)"""
    names = [manifest.model.file, CLASSES_FILE, PREPROCESS_FILE]
    for engine in manifest.engines:
        names += [engine.file] + ([engine.onnx] if engine.onnx else [])
    if manifest.text_encoder is not None:
        names += [*manifest.text_encoder.files.values(), manifest.text_encoder.tokenizer["merges"]]
    return list(dict.fromkeys(names))


def require_listed(root: Path, manifest: Manifest, names: list[str]) -> None:
    """Each of `names` has a sha256 in manifest.json (so `verify_files` checks it), else one line naming it."""
    for name in names:
        inside(root, name)
        if name not in manifest.files:
            raise PkdError(f"bundle {root}: manifest.json does not list {name}; {ALTERED}")


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
    preprocess = read_json(root / PREPROCESS_FILE, "preprocess description")
    return Bundle(root, manifest, names, vectors_w, scale, preprocess)


def read_manifest(root: Path) -> Manifest:
    """The bundle's manifest.json as typed records (files not yet checked: see `open_bundle`)."""
    path = root / MANIFEST_FILE
    try:
        return Manifest.from_dict(read_json(path, "bundle manifest"))
    except PkdError as e:
        raise PkdError(f"{path}: {e}") from None


def read_classes(root: Path) -> tuple[list[str], np.ndarray | None, float]:
    """(class names, W [C, D] float32 or None when not shipped, logit scale) of a bundle folder."""
    classes = read_json(root / CLASSES_FILE, "class list")
    path = inside(root, str(classes.get("vectors_file", VECTORS_FILE)))
    names, scale = classes.get("names"), classes.get("logit_scale")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PkdError(f"{root / CLASSES_FILE} has no list of class names ('names')")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise PkdError(f"{root / CLASSES_FILE} has no number 'logit_scale'")
    vectors = None
    if path.is_file():
        from safetensors.numpy import load_file

        vectors = load_file(str(path))["class_vectors"].astype(np.float32)
    return list(names), vectors, float(scale)
