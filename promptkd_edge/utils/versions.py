"""Installed package versions, read from package metadata without importing the packages (torch-free)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import re
import sys

# import name -> distributions that may provide it (then any distribution that ships the module)
VERSION_PACKAGES = {
    "promptkd_edge": ("promptkd-edge",),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
    "openvino": ("openvino",),
}


def _version_from_source(module: str) -> str | None:
    """`__version__ = "x"` read from the package's __init__.py / version.py without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    folder = os.path.dirname(spec.origin)
    for path in (spec.origin, os.path.join(folder, "version.py"), os.path.join(folder, "_version.py")):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                m = re.search(r"^__version__\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)['\"]", f.read(), re.MULTILINE)
        except OSError:
            continue
        if m:
            return m.group(1)
    return None


def distribution_version(dist: str) -> str | None:
    """Version of the installed distribution `dist` (e.g. "onnxruntime-gpu"), or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_version(module: str) -> str | None:
    """Installed version of the package that provides import name `module`, or None; imports nothing."""
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return loaded.__version__
    for dist in VERSION_PACKAGES.get(module, (module,)):
        with contextlib.suppress(Exception):  # PackageNotFoundError, or a broken METADATA file
            return importlib.metadata.version(dist)
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    with contextlib.suppress(Exception):  # installed under another distribution name (a scan of all of them)
        for dist in importlib.metadata.packages_distributions().get(module, []):
            with contextlib.suppress(Exception):
                return importlib.metadata.version(dist)
    return _version_from_source(module)  # e.g. TensorRT from JetPack's apt packages: no dist-info


def recorded_versions(*modules: str) -> dict[str, str | None]:
    """What a run's config.json and a bundle's manifest record: this package's version, then each of `modules`'
    (`package_version`: an imported module's own `__version__`, else its installed metadata)."""
    from promptkd_edge import __version__

    return {"promptkd_edge": __version__, **{m: package_version(m) for m in modules}}
