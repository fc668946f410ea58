"""Configure and build the native library (export/cpp) once per source/option hash, for the tests.

    build_dir = native_build.build()                                   # OpenVINO backend, test driver
    build_dir = native_build.build(["-DPKD_WITH_TENSORRT=ON", ...])    # more CMake arguments

The build folder is .cache/test/native-<hash> ($PKD_TEST_CACHE/native-<hash> when set), keyed by every file under
the source folder, the CMake arguments, the compiler and the OpenVINO wheel; a finished build is reused, a source
change makes a new one. $PKD_NATIVE_SOURCE builds another copy of export/cpp (a mutant of tests/test_mutations.py);
$PKD_NATIVE_BUILD names a build folder to configure once and rebuild incrementally on every call (mutants, one at a
time, recompile only the file they change: seconds instead of a full build).
A missing dependency is a NativeBuildError naming the apt packages (the tests fail on it, they do not skip).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APT_PACKAGES = "nlohmann-json3-dev libstb-dev libjpeg62-turbo-dev libssl-dev"
JOBS = "2"  # CI machines and shared workstations have 2 cores
SOURCE_SUFFIXES = {".cpp", ".hpp", ".h", ".c", ".cmake", ".in", ".txt"}


class NativeBuildError(RuntimeError):
    """The native library could not be configured or built here (the message says why and what to install)."""


def source_dir() -> Path:
    return Path(os.environ.get("PKD_NATIVE_SOURCE") or REPO / "export" / "cpp").resolve()


def cache_root() -> Path:
    root = os.environ.get("PKD_TEST_CACHE")
    return Path(root) if root else REPO / ".cache" / "test"


def openvino_cmake_dir() -> str:
    """The openvino wheel's CMake package folder (OpenVINOConfig.cmake)."""
    try:
        from openvino.utils import get_cmake_path
    except ImportError:
        raise NativeBuildError("the native tests need the openvino wheel (pip install openvino)") from None
    return str(get_cmake_path())


def _tools() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("cmake", "ninja", "c++")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise NativeBuildError(f"the native build needs {', '.join(missing)} (apt-get install cmake ninja-build g++)")
    return tools  # type: ignore[return-value]


def _key(source: Path, args: list[str], tools: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(f"{source}\n{args}\n".encode())
    for name in ("c++", "cmake"):
        h.update(os.path.realpath(tools[name]).encode())
    for path in _sources(source):
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _sources(source: Path) -> list[Path]:
    """The project's files: CMake and C/C++ sources, not a build folder someone made inside it."""
    builds = {p.parent for p in source.rglob("CMakeCache.txt")}
    return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
                  and not any(b in p.parents for b in builds))


def build(extra_args: list[str] | None = None, *, with_openvino: bool = True) -> Path:
    """The build folder of export/cpp configured with `extra_args` (and the test driver), built with ninja."""
    tools = _tools()
    source = source_dir()
    args = ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DPKD_BUILD_TESTS=ON",
            f"-DPKD_WITH_OPENVINO={'ON' if with_openvino else 'OFF'}"]
    if with_openvino:
        args.append(f"-DOpenVINO_DIR={openvino_cmake_dir()}")
    args += list(extra_args or [])
    if os.environ.get("PKD_NATIVE_BUILD"):
        return _incremental(Path(os.environ["PKD_NATIVE_BUILD"]), source, args, tools)
    out = cache_root() / f"native-{_key(source, args, tools)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per folder, whichever process comes first
        if (out / "build.done").is_file():
            return out
        shutil.rmtree(out, ignore_errors=True)
        _run([tools["cmake"], "-S", str(source), "-B", str(out), *args], "configure")
        _run([tools["cmake"], "--build", str(out), "-j", JOBS], "build")
        (out / "build.done").write_text("ok\n")
    return out


def _incremental(out: Path, source: Path, args: list[str], tools: dict[str, str]) -> Path:
    if not (out / "CMakeCache.txt").is_file():
        _run([tools["cmake"], "-S", str(source), "-B", str(out), *args], "configure")
    _run([tools["cmake"], "--build", str(out), "-j", JOBS], "build")
    return out


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])
        raise NativeBuildError(f"native {what} failed (it needs: apt-get install {APT_PACKAGES}, and the openvino "
                               f"wheel):\n$ {' '.join(cmd)}\n{tail}")


if __name__ == "__main__":
    print(build(sys.argv[1:]))
