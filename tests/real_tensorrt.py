"""The REAL TensorRT Python bindings (10.3, JetPack 6's, and 11.4) on a machine without TensorRT's libraries.

NVIDIA's PyPI `tensorrt-cuXX-bindings` wheels are real; only the `-libs` wheels are stubs that download from NVIDIA's
own index. The bindings' `tensorrt.so` links against libnvinfer, libnvinfer_plugin and libnvonnxparser and uses ten
entry points from them. Three stub libraries that export those names (returning NULL or 0), built with the system C
compiler, make `import tensorrt` work with the real enums, classes, methods, properties and pybind signatures.
Nothing can be built or run: `trt.Builder(...)` and `trt.Runtime(...)` raise "factory function returned nullptr",
exactly as on a machine whose CUDA driver cannot start.

    python tests/real_tensorrt.py          # fetch both wheels once into the cache and build the stubs
    ensure(10) / ensure(11)                # the same, from a test; returns a `Generation`
    run_python(gen, code)                  # `code` in a subprocess where `import tensorrt` is the real module
    surface(gen)                           # the real API surface as JSON-able data (see `_dump_surface`)

PKD_TEST_TRT10 / PKD_TEST_TRT11 name another release of a generation (e.g. PKD_TEST_TRT10=10.16.1.11): the
fakes are then generated from it and every TensorRT test runs against its API, so a new release is checked by
running the suite once with it; what it removed or changed fails there.

The cache is $PKD_TEST_CACHE/tensorrt, else .cache/test/tensorrt in the repository. Failures (no network, no C
compiler, a platform without these wheels) raise `RealTensorRTError` with one line saying what is missing: these
tests run in CI, they do not skip.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What the project supports: TensorRT 10.3 (JetPack 6) and the current 11.x. The bindings wheel of each, and the
# library major its tensorrt.so links against.
WHEELS = {10: ("tensorrt-cu12-bindings", os.environ.get("PKD_TEST_TRT10", "10.3.0")),
          11: ("tensorrt-cu13-bindings", os.environ.get("PKD_TEST_TRT11", "11.4.0.106"))}
PLATFORMS = {"x86_64": ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64"]}

# The entry points tensorrt.so needs (nm -D --undefined-only), per library. All return NULL / 0 / false.
STUB_SOURCES = {
    "libnvinfer": """#include <stddef.h>
void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
int getInferLibVersion(void) { return 0; }
""",
    "libnvinfer_plugin": """#include <stdbool.h>
bool initLibNvInferPlugins(void *logger, const char *name_space) { return false; }
""",
    "libnvonnxparser": """#include <stddef.h>
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
""",
}

# What the `tensorrt-cuXX` metapackage installs as `tensorrt/__init__.py` (read from its 10.3.0 and 11.4.0.106
# sdists): `import tensorrt` is the bindings module.
TENSORRT_SHIM = "from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n"


class RealTensorRTError(RuntimeError):
    """The real bindings could not be prepared here (one line: what is missing)."""


def cache_root() -> Path:
    root = os.environ.get("PKD_TEST_CACHE")
    return (Path(root) if root else REPO / ".cache" / "test") / "tensorrt"


@dataclass(frozen=True)
class Generation:
    """One prepared TensorRT generation: `site` goes on PYTHONPATH, `lib` on LD_LIBRARY_PATH."""

    major: int
    version: str
    root: Path

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment in which `import tensorrt` is this generation's real module (plus the repository)."""
        env = dict(os.environ if base is None else base)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), str(REPO), env.get("PYTHONPATH")) if p)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.lib), env.get("LD_LIBRARY_PATH")) if p)
        env["HF_HUB_OFFLINE"] = "1"
        return env


def _fetch_wheel(major: int, dest: Path) -> Path:
    name, version = WHEELS[major]
    machine = platform.machine()
    if machine not in PLATFORMS:
        raise RealTensorRTError(f"no {name}=={version} wheel for {machine}: the real-bindings tests need x86_64")
    dest.mkdir(parents=True, exist_ok=True)
    found = list(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
           "--python-version", py, "--implementation", "cp", "-d", str(dest), f"{name}=={version}"]
    for tag in PLATFORMS[machine]:
        cmd += ["--platform", tag]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = list(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if done.returncode or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RealTensorRTError(f"cannot download {name}=={version} from the package index: {last}")
    return found[0]


def _build_stubs(major: int, lib: Path) -> None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RealTensorRTError("no C compiler (cc, gcc or clang) to build the TensorRT stub libraries: install one "
                                "(Debian: apt-get install gcc)")
    lib.mkdir(parents=True, exist_ok=True)
    for stem, source in STUB_SOURCES.items():
        soname = f"{stem}.so.{major}"
        src = lib / f"{stem}.c"
        src.write_text(source)
        done = subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib / soname), f"-Wl,-soname,{soname}", str(src)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RealTensorRTError(f"{cc} failed to build {soname}: {(done.stderr.strip().splitlines() or ['?'])[0]}")


def ensure(major: int) -> Generation:
    """Fetch (once) and prepare the real bindings of TensorRT `major` (10 or 11)."""
    name, version = WHEELS[major]
    root = cache_root() / f"trt{major}-{version}"
    gen = Generation(major, version, root)
    marker = root / ".ready"
    if marker.is_file():
        return gen
    wheel = _fetch_wheel(major, cache_root() / "wheels")
    shutil.rmtree(root, ignore_errors=True)
    gen.site.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(gen.site)
    (gen.site / "tensorrt").mkdir()
    (gen.site / "tensorrt" / "__init__.py").write_text(TENSORRT_SHIM)
    _build_stubs(major, gen.lib)
    done = run_python(gen, "import tensorrt; print(tensorrt.__version__)")
    if done.returncode or done.stdout.strip() != version:
        raise RealTensorRTError(f"the real TensorRT {version} bindings do not import with the stubs: "
                                f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    marker.write_text(version + "\n")
    return gen


def run_python(gen: Generation, code: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -c code args...` where `import tensorrt` is the real module of `gen`."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=gen.env(env), timeout=timeout, cwd=str(REPO))


# ---------------------------------------------------------------------------------------------- the API surface
_DUNDERS = ("__init__", "__str__", "__len__", "__getitem__", "__iter__", "__int__", "__index__")


def _signatures(name: str, doc: str | None) -> list[dict]:
    """pybind11 docstring signatures of `name` -> [{"params": [{"name", "type", "default"}], "returns": str}].
    `self` is dropped. Overloads give one entry each."""
    lines = []
    for line in (doc or "").splitlines():
        text = line.strip()
        if text[:1].isdigit() and ". " in text:
            text = text.split(". ", 1)[1]
        if text.startswith(name + "(") and ") -> " in text and "*args, **kwargs" not in text:
            lines.append(text)
    out = []
    for text in lines:
        inner, returns = text[len(name) + 1:].rsplit(") -> ", 1)
        params = []
        for part in _split_top(inner):
            pname, _, rest = part.partition(":")
            ptype, eq, _default = rest.partition(" = ")
            params.append({"name": pname.strip(), "type": ptype.strip(), "default": bool(eq)})
        if params and params[0]["name"] == "self":
            params = params[1:]
        out.append({"params": params, "returns": returns.strip()})
    return out


def _split_top(text: str) -> list[str]:
    """Split a parameter list on commas outside brackets and <...> default reprs."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<{":
            depth += 1
        elif ch in "])>}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def _is_enum(obj) -> bool:
    return isinstance(obj, type) and hasattr(obj, "__members__")


def _class_surface(cls) -> dict:
    import inspect

    members: dict[str, dict] = {}
    for name in dir(cls):
        if name.startswith("_") and name not in _DUNDERS:
            continue
        try:
            raw = inspect.getattr_static(cls, name)
        except AttributeError:
            continue
        value = getattr(cls, name, None)
        if isinstance(raw, property):
            members[name] = {"kind": "property", "get": raw.fget is not None, "set": raw.fset is not None}
        elif _is_enum(value):
            members[name] = {"kind": "enum", "members": {k: int(v) for k, v in value.__members__.items()}}
        elif callable(value) and not isinstance(value, type):
            sigs = _signatures(name, getattr(value, "__doc__", None))
            if name in _DUNDERS and not sigs:
                continue  # object's own slot wrappers: not part of TensorRT's API
            members[name] = {"kind": "static" if isinstance(raw, staticmethod) else "method", "signatures": sigs}
        elif type(type(value)).__name__ == "pybind11_type" and _is_enum(type(value)):
            members[name] = {"kind": "value", "enum": type(value).__name__, "member": value.name}
        else:
            members[name] = {"kind": "other", "type": type(value).__name__}
    bases = [b.__name__ for b in cls.__mro__[1:] if b.__module__.startswith("tensorrt")]
    return {"members": members, "bases": bases, "doc": (cls.__doc__ or "").strip()[:400]}


def _dump_surface(path: str) -> None:
    """Inside a real-bindings subprocess: write the module's API surface as JSON."""
    import tensorrt as trt

    out = {"version": trt.__version__, "enums": {}, "classes": {}, "functions": {}, "values": {}}
    for name in sorted(dir(trt)):
        if name.startswith("_"):
            continue
        obj = getattr(trt, name)
        if _is_enum(obj):
            out["enums"][name] = {k: int(v) for k, v in obj.__members__.items()}
        elif isinstance(obj, type):
            out["classes"][name] = _class_surface(obj)
        elif _is_enum(type(obj)):
            out["values"][name] = {"enum": type(obj).__name__, "member": obj.name}
        elif callable(obj) and getattr(obj, "__module__", "").startswith("tensorrt"):
            out["functions"][name] = _signatures(name, obj.__doc__)
    Path(path).write_text(json.dumps(out, indent=1, sort_keys=True))


def surface(gen: Generation) -> dict:
    """The real API surface of `gen` (cached beside it)."""
    path = gen.root / "surface.json"
    if not path.is_file():
        code = ("import sys; sys.path.insert(0, sys.argv[2]); import real_tensorrt; "
                "real_tensorrt._dump_surface(sys.argv[1])")
        done = run_python(gen, code, str(path), str(Path(__file__).resolve().parent))
        if done.returncode:
            raise RealTensorRTError(f"cannot read the TensorRT {gen.version} API surface: "
                                    f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(path.read_text())


if __name__ == "__main__":
    try:
        for major in WHEELS:
            gen = ensure(major)
            api = surface(gen)
            print(f"TensorRT {gen.version}: real bindings ready in {gen.root} ({len(api['classes'])} classes, "
                  f"{len(api['enums'])} enums)")
    except RealTensorRTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
