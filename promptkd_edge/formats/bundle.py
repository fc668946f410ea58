"""A bundle's layout (export/BUNDLE.md): what its files are called, which a reader opens, and the checks made before
any is loaded (every file read is listed in manifest.json with its sha256; no name leads out of the bundle). No
torch, no numpy: runtime/bundle.py opens a bundle through this, export/ writes one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import CLASSES_FILE
from promptkd_edge.formats.manifest import MANIFEST_FILE, Manifest
from promptkd_edge.utils.files import read_json, sha256_file

MODEL_FILE = "model.onnx"  # the graph the manifest's model entry names (FP32, or FP16/INT8 beside the master)
FP32_MASTER_FILE = "model.fp32-master.onnx"  # the FP32 graph, kept when model.onnx is of a lower precision
PREPROCESS_FILE = "preprocess.json"  # formats/preprocess.py
ENGINES_DIR = "engines"  # TensorRT plans built on the target (`pkd export BUNDLE --trt`)
# and the run's student.safetensors (formats/run.py), shipped as is for the torch backend and `pkd bench`
ALTERED = "the bundle was altered or written by a broken tool"


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


def read_manifest(root: Path) -> Manifest:
    """The bundle's manifest.json as typed records (files not yet checked: see `open_bundle`)."""
    path = root / MANIFEST_FILE
    try:
        return Manifest.from_dict(read_json(path, "bundle manifest"))
    except PkdError as e:
        raise PkdError(f"{path}: {e}") from None
