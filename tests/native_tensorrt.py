"""What the native TensorRT backend's tests need (export/cpp/src/tensorrt_backend.cpp), prepared once and cached.

- The real TensorRT 10.3 (JetPack 6.1/6.2) and 11.1 C++ headers: tests/third_party/tensorrt (copies of
  ../shared/third_party/tensorrt, so a clean clone has them).
- The real CUDA 12.6 runtime from PyPI: nvidia-cuda-runtime-cu12 (cuda_runtime_api.h, libcudart.so.12) and the
  crt/ headers of nvidia-cuda-nvcc-cu12, which cuda_runtime_api.h includes.
- A stand-in libnvinfer.so.10 / .so.11 (tests/native/fake_nvinfer.cpp) built against each header set, as
  tests/real_tensorrt.py stubs the libraries of the Python bindings: the backend's only undefined TensorRT symbols are
  createInferRuntime_INTERNAL and the getInferLib*Version getters (PKD_STUB_TENSORRT="10.3.0.26" chooses the version).
  createInferRuntime returns NULL, what TensorRT returns where no GPU can start, unless PKD_FAKE_TRT_RUNTIME=1: then a
  runtime whose plans are text and whose engine runs on the fake libcudart's host memory. Its implementation classes
  override every pure virtual of TensorRT's apiv::VRuntime/VCudaEngine/VExecutionContext, generated from that
  version's NvInferImpl.h (`fake_overrides`).
- A stub libcudart.so.12 that fakes one GPU (PKD_FAKE_GPU="8.7:Orin"), loaded with LD_PRELOAD, so that the plan
  checks after the GPU probe run here. Without it the real libcudart finds no driver.

    build(major)             # the backend + tests/native/trt_driver.cpp, configured by export/cpp/cmake, cached
    driver_command(b, dir)   # the command that opens a bundle's plan through the backend alone
    env(fake_gpu=..., tensorrt=...)

Build folders: $PKD_NATIVE_BUILD_ROOT, else $PKD_TEST_CACHE or .cache/test, `native-trt-<generation>-<hash of sources
and options>`. PKD_NATIVE_SOURCE names another export/cpp tree to build (a mutant of tests/native_mutations.py, ~10 s
per generation, with PKD_NATIVE_BUILD_ROOT in its temporary folder). Failures raise NativeTensorRTError with one line:
these tests run in CI, they do not skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADERS = {10: REPO / "tests" / "third_party" / "tensorrt" / "10.3.0" / "include",
           11: REPO / "tests" / "third_party" / "tensorrt" / "11.1" / "include"}
DEFAULT_VERSION = {10: "10.3.0.26", 11: "11.1.0.106"}  # NV_TENSORRT_{MAJOR..BUILD} of those headers
CUDA_WHEELS = ("nvidia-cuda-runtime-cu12==12.6.77", "nvidia-cuda-nvcc-cu12==12.6.77")
DRIVER_SOURCES = REPO / "tests" / "native"

# What the fake libnvinfer's implementation classes do where the backend calls them (tests/native/fake_nvinfer.cpp):
# class -> method -> (a text the parameter list must hold, the body). Every other pure virtual aborts.
FAKE_BODIES = {
    "VRuntime": {"deserializeCudaEngine": ("blob", "return fake_deserialize(blob, size);")},
    "VCudaEngine": {
        "createExecutionContext": ("", "return fake_context();"),
        "getNbIOTensors": ("", "return static_cast<int32_t>(names_.size());"),
        "getIOTensorName": ("", "return names_.at(static_cast<size_t>(index)).c_str();"),
        "getTensorIOMode": ("", "return is_output(tensorName) ? TensorIOMode::kOUTPUT : TensorIOMode::kINPUT;"),
        "getTensorDataType": ("", "return is_output(tensorName) ? spec_.outdtype : spec_.dtype;"),
        "getTensorShape": ("", "return is_output(tensorName) ? dims_of(-1, {spec_.out}) : dims_of(-1, spec_.shape);"),
        "getNbOptimizationProfiles": ("", "return static_cast<int32_t>(spec_.profiles.size());"),
        "getProfileShape": ("", "return fake_profile_shape(profileIndex, select);"),
    },
    "VExecutionContext": {
        "setOptimizationProfileAsync": ("", "return fake_set_profile(profileIndex);"),
        "setInputShape": ("", "return fake_set_input_shape(dims);"),
        "getTensorShape": ("", "return fake_shape(tensorName);"),
        "setTensorAddress": ("", "return fake_set_address(tensorName, data);"),
        "enqueueV3": ("", "return fake_enqueue();"),
    },
}


def fake_overrides(impl_header: Path) -> str:
    """An override of every pure virtual of apiv::VRuntime, VCudaEngine and VExecutionContext in `impl_header`
    (NvInferImpl.h of one TensorRT version), with the FAKE_BODIES bodies, else std::abort()."""
    text = impl_header.read_text()
    out = []
    for cls, bodies in FAKE_BODIES.items():
        match = re.search(rf"^class {cls} : public VRoot\n{{(.*?)^}};", text, re.S | re.M)
        if match is None:
            raise NativeTensorRTError(f"{impl_header} has no class {cls}")
        out.append(f"#ifdef PKD_FAKE_CLASS_{cls}")
        body = re.sub(r"//[^\n]*", "", match.group(1)).replace("public:", "")
        for statement in (" ".join(s.split()) for s in body.split(";")):
            found = re.fullmatch(r"(?:TRT_NODISCARD )?virtual (.+?)\b(\w+)\( ?(.*)\)( const)? noexcept = 0",
                                 statement)
            if not statement:
                continue
            if found is None:
                raise NativeTensorRTError(f"cannot read {cls} member '{statement}' in {impl_header}")
            ret, name, params, const = found.groups()
            need, code = bodies.get(name, ("", ""))
            code = code if code and need in params else "std::abort();"
            out.append(f"  {ret.strip()} {name}({params}){const or ''} noexcept override {{ {code} }}")
        out.append(f"#endif  // {cls}")
    return "\n".join(out) + "\n"


# One fake GPU from PKD_FAKE_GPU="M.m:Name" (none without it: the real runtime's answer here). Built against the CUDA 12
# headers, whose cudaGetDeviceProperties is cudaGetDeviceProperties_v2. Memory and streams are host stand-ins.
CUDART_STUB = r"""#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int fake(int *major, int *minor, const char **name) {
  const char *v = getenv("PKD_FAKE_GPU");
  if (!v || sscanf(v, "%d.%d", major, minor) != 2) return 0;
  const char *colon = strchr(v, ':');
  *name = colon ? colon + 1 : "Fake GPU";
  return 1;
}
cudaError_t cudaGetDeviceCount(int *n) {
  int a, b; const char *s;
  if (fake(&a, &b, &s)) { *n = 1; return cudaSuccess; }
  *n = 0; return cudaErrorNoDevice;
}
cudaError_t cudaGetDeviceProperties_v2(struct cudaDeviceProp *p, int dev) {
  int a, b; const char *s;
  if (dev != 0 || !fake(&a, &b, &s)) return cudaErrorInvalidDevice;
  memset(p, 0, sizeof *p);
  strncpy(p->name, s, sizeof p->name - 1); p->major = a; p->minor = b;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  int a, b; const char *s;
  return d == 0 && fake(&a, &b, &s) ? cudaSuccess : cudaErrorInvalidDevice;
}
const char *cudaGetErrorName(cudaError_t e) {
  return e == cudaErrorNoDevice ? "cudaErrorNoDevice" : e == cudaErrorInvalidDevice ? "cudaErrorInvalidDevice"
       : e == cudaSuccess ? "cudaSuccess" : "cudaErrorUnknown";
}
const char *cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
cudaError_t cudaDriverGetVersion(int *v) { *v = CUDART_VERSION; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int *v) { *v = CUDART_VERSION; return cudaSuccess; }
cudaError_t cudaStreamCreate(cudaStream_t *s) { *s = (cudaStream_t)malloc(1); return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { free((void *)s); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t s) { (void)s; return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t n) { *p = malloc(n); return *p ? cudaSuccess : cudaErrorMemoryAllocation; }
cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind k, cudaStream_t st) {
  (void)k; (void)st; memcpy(d, s, n); return cudaSuccess;
}
"""


class NativeTensorRTError(RuntimeError):
    """What the native TensorRT tests need could not be prepared here (one line: what is missing)."""


def cache_root() -> Path:
    root = os.environ.get("PKD_TEST_CACHE")
    return Path(root) if root else REPO / ".cache" / "test"


def cpp_root() -> Path:
    """The export/cpp tree to build (PKD_NATIVE_SOURCE: a mutated copy)."""
    return Path(os.environ.get("PKD_NATIVE_SOURCE") or REPO / "export" / "cpp").resolve()


@contextmanager
def _locked(folder: Path) -> Iterator[bool]:
    """Hold `folder`.lock (one builder at a time across processes); yields whether `folder` is already ready."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield (folder / ".ready").is_file()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode:
        lines = [ln for ln in (done.stderr + done.stdout).strip().splitlines() if ln.strip()] or ["no output"]
        errors = [ln for ln in lines if "error" in ln.lower()]
        raise NativeTensorRTError(f"{what} failed: {(errors or lines)[-1].strip()}")
    return done


def _compiler() -> str:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise NativeTensorRTError("no C compiler (cc, gcc or clang) for the stub libraries: apt-get install gcc")
    return cc


@dataclass(frozen=True)
class Cuda:
    """The CUDA 12.6 runtime wheels, unpacked: `roots` for PKD_CUDA_ROOTS, the real `libcudart`, the fake one."""

    runtime: Path
    nvcc: Path
    fake: Path

    @property
    def roots(self) -> list[Path]:
        return [self.runtime, self.nvcc]

    @property
    def libcudart(self) -> Path:
        return self.runtime / "lib" / "libcudart.so.12"


def cuda() -> Cuda:
    """Download (once) and unpack the CUDA 12.6 runtime wheels and build the fake-GPU libcudart."""
    root = cache_root() / "native-trt-cuda12.6"
    out = Cuda(root / "cuda_runtime", root / "cuda_nvcc", root / "fake" / "libcudart.so.12")
    if (root / ".ready").is_file():
        return out
    with _locked(root) as ready:
        if not ready:
            _prepare_cuda(root, out)
    return out


def _prepare_cuda(root: Path, out: Cuda) -> None:
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for spec in CUDA_WHEELS:
        name, version = spec.split("==")
        if not list(wheels.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
            _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "-d",
                  str(wheels), spec], f"pip download {spec}")
    for wheel in wheels.glob("*.whl"):
        package = "cuda_runtime" if "runtime" in wheel.name else "cuda_nvcc"
        prefix = f"nvidia/{package}/"
        keep = prefix if package == "cuda_runtime" else prefix + "include/crt/"  # the nvcc wheel: only crt/
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.startswith(keep) and not member.endswith("/"):
                    target = root / package / member[len(prefix):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(member))
    if not out.libcudart.is_file() or not (out.nvcc / "include" / "crt" / "host_defines.h").is_file():
        raise NativeTensorRTError(f"the CUDA wheels in {wheels} lack libcudart.so.12 or crt/host_defines.h")
    out.fake.parent.mkdir(parents=True, exist_ok=True)
    src = out.fake.parent / "cudart_stub.c"
    src.write_text(CUDART_STUB)
    versions = out.fake.parent / "cudart.map"  # the real library's symbol version: no "no version information" line
    versions.write_text("libcudart.so.12 { global: *; };\n")
    _run([_compiler(), "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(out.fake), "-Wl,-soname,libcudart.so.12",
          f"-Wl,--version-script={versions}",
          f"-I{out.runtime / 'include'}", f"-I{out.nvcc / 'include'}", str(src)], "building the fake-GPU libcudart")
    (root / ".ready").write_text("\n".join(CUDA_WHEELS) + "\n")


def tensorrt_root(major: int) -> Path:
    """A TensorRT prefix for TensorRT_ROOT: the real headers and the fake libnvinfer.so.<major> built against them.
    10 is laid out like a TensorRT tarball (include/, lib/), 11 like JetPack (include/<arch>/, lib/<arch>/):
    FindTensorRT must find both."""
    fake = DRIVER_SOURCES / "fake_nvinfer.cpp"
    overrides = fake_overrides(HEADERS[major] / "NvInferImpl.h")
    key = hashlib.sha256((fake.read_text() + overrides + str(HEADERS[major])).encode()).hexdigest()[:10]
    root = cache_root() / f"native-trt-stub{major}-{key}"
    arch = [f"{os.uname().machine}-linux-gnu"] if major == 11 else []
    if (root / ".ready").is_file():
        return root
    with _locked(root) as ready:
        if not ready:
            _build_fake_nvinfer(major, root, arch, overrides)
    return root


def _build_fake_nvinfer(major: int, root: Path, arch: list[str], overrides: str) -> None:
    fake = DRIVER_SOURCES / "fake_nvinfer.cpp"
    cu = cuda()
    shutil.rmtree(root, ignore_errors=True)
    include, lib = root.joinpath("include", *arch), root.joinpath("lib", *arch)
    include.parent.mkdir(parents=True)
    include.symlink_to(HEADERS[major], target_is_directory=True)
    lib.mkdir(parents=True)
    (root / "fake_overrides.inc").write_text(overrides)
    soname = f"libnvinfer.so.{major}"
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        raise NativeTensorRTError("no C++ compiler (c++, g++ or clang++): apt-get install g++")
    _run([cxx, "-std=c++17", "-shared", "-fPIC", "-o", str(lib / soname), f"-Wl,-soname,{soname}", f"-I{root}",
          "-isystem", str(HEADERS[major]), "-isystem", str(cu.runtime / "include"),
          "-isystem", str(cu.nvcc / "include"),
          str(fake)], f"building the fake {soname}")
    (lib / "libnvinfer.so").symlink_to(soname)
    (root / ".ready").write_text(DEFAULT_VERSION[major] + "\n")


def _sources_digest(options: list[str]) -> str:
    h = hashlib.sha256("\0".join(options).encode())
    for folder in (cpp_root(), DRIVER_SOURCES):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class Build:
    major: int
    folder: Path
    seconds: float  # 0 when cached

    @property
    def driver(self) -> Path:
        return self.folder / "pkd_trt_driver"

    @property
    def configure_log(self) -> str:
        return (self.folder / "configure.log").read_text()


def _options(trt_root: Path) -> list[str]:
    return [f"-DPKD_CPP_DIR={cpp_root()}", f"-DTensorRT_ROOT={trt_root}",
            f"-DPKD_CUDA_ROOTS={';'.join(str(r) for r in cuda().roots)}", "-DCMAKE_BUILD_TYPE=",
            "-DCMAKE_CXX_FLAGS=-Wall -Wextra -Werror"]


def configure(trt_root: Path, folder: Path) -> subprocess.CompletedProcess:
    """CMake's configure step of tests/native with TensorRT_ROOT=`trt_root` (its output; no exception)."""
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise NativeTensorRTError(f"{tool} is not installed (apt-get install cmake ninja-build g++ libssl-dev "
                                      "nlohmann-json3-dev)")
    return subprocess.run(["cmake", "-S", str(DRIVER_SOURCES), "-B", str(folder), "-G", "Ninja",
                           *_options(trt_root)], capture_output=True, text=True)


def build(major: int) -> Build:
    """tensorrt_backend.cpp and the test driver, configured through export/cpp/cmake/TensorRTBackend.cmake against
    the real TensorRT `major` headers, the stub libnvinfer and the real CUDA 12.6 runtime (-Wall -Wextra -Werror)."""
    trt = tensorrt_root(major)
    builds = Path(os.environ.get("PKD_NATIVE_BUILD_ROOT") or cache_root())
    folder = builds / f"native-trt-{major}-{_sources_digest(_options(trt))}"
    if (folder / ".ready").is_file():
        return Build(major, folder, 0.0)
    with _locked(folder) as ready:
        if ready:
            return Build(major, folder, 0.0)
        start = time.monotonic()
        _build(major, trt, folder)
        return Build(major, folder, time.monotonic() - start)


def _build(major: int, trt: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    done = configure(trt, folder)
    if done.returncode:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()] or ["no output"]
        raise NativeTensorRTError(f"configuring the TensorRT {major} backend failed: {lines[-1]}")
    (folder / "configure.log").write_text(done.stdout)
    _run(["cmake", "--build", str(folder), "-j", "2"], f"building the TensorRT {major} backend")
    (folder / ".ready").write_text("ok\n")


def driver_command(built: Build, bundle: str | Path, device: int = 0, batches: tuple[int, ...] = (),
                   threads: int = 0) -> list[str]:
    """The command that opens `bundle`'s TensorRT plan natively (and runs `batches` of made-up images, then again on
    `threads` threads at once), printing "error: <line>" / exit 2 when it cannot (pkd-classify's convention)."""
    runs = [a for b in batches for a in ("--run", str(b))]
    return [str(built.driver), str(bundle), "--device", str(device), *runs, "--threads", str(threads)]


def env(fake_gpu: str | None = None, tensorrt: str | None = None, engine: bool = False) -> dict[str, str]:
    """The driver's environment: `fake_gpu` ("8.7:Orin") preloads the fake-GPU libcudart (else the real one runs and
    finds no driver); `tensorrt` ("10.3.0.26") is what the fake libnvinfer reports; `engine`: its createInferRuntime
    returns the fake runtime whose plans are text (else NULL)."""
    out = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "PKD_FAKE_GPU", "PKD_STUB_TENSORRT", "PKD_FAKE_TRT_RUNTIME")}
    if engine:
        out["PKD_FAKE_TRT_RUNTIME"] = "1"
    if fake_gpu is not None:
        out["LD_PRELOAD"] = str(cuda().fake)
        out["PKD_FAKE_GPU"] = fake_gpu
    if tensorrt is not None:
        out["PKD_STUB_TENSORRT"] = tensorrt
    return out


if __name__ == "__main__":
    try:
        for generation in HEADERS:
            b = build(generation)
            print(f"TensorRT {generation}: {b.driver} ({b.seconds:.1f} s)")
    except NativeTensorRTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
