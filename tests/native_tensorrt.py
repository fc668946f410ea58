"""What the native TensorRT backend's tests need (export/cpp/src/tensorrt_backend.cpp), prepared once and cached.

- The real TensorRT 10.3 (JetPack 6.1/6.2) and 11.1 C++ headers: tests/third_party/tensorrt (copies of
  ../shared/third_party/tensorrt, so a clean clone has them).
- The real CUDA 12.6 runtime from PyPI: nvidia-cuda-runtime-cu12 (cuda_runtime_api.h, libcudart.so.12) and the
  crt/ headers of nvidia-cuda-nvcc-cu12, which cuda_runtime_api.h includes.
- Stub libnvinfer.so.10 / .so.11 built with the C compiler, as tests/real_tensorrt.py does for the Python bindings: the
  backend's only undefined TensorRT symbols are createInferRuntime_INTERNAL (NULL: what TensorRT returns where no GPU
  can start) and the getInferLib*Version getters, whose version PKD_STUB_TENSORRT ("10.3.0.26") chooses.
- A stub libcudart.so.12 that fakes one GPU (PKD_FAKE_GPU="8.7:Orin"), loaded with LD_PRELOAD, so that the plan
  checks after the GPU probe run here. Without it the real libcudart finds no driver.

    build(major)             # the backend + tests/native/trt_driver.cpp, configured by export/cpp/cmake, cached
    driver_command(b, dir)   # the command that opens a bundle's plan (pkd-classify --backend tensorrt after the merge)
    env(fake_gpu=..., tensorrt=...)

Build folders: $PKD_TEST_CACHE or .cache/test, `native-trt-<hash of sources and options>`. PKD_NATIVE_CPP names another
export/cpp tree to build (the mutation tests build a mutated copy). Failures raise NativeTensorRTError with one line:
these tests run in CI, they do not skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADERS = {10: REPO / "tests" / "third_party" / "tensorrt" / "10.3.0" / "include",
           11: REPO / "tests" / "third_party" / "tensorrt" / "11.1" / "include"}
DEFAULT_VERSION = {10: "10.3.0.26", 11: "11.1.0.106"}  # NV_TENSORRT_{MAJOR..BUILD} of those headers
CUDA_WHEELS = ("nvidia-cuda-runtime-cu12==12.6.77", "nvidia-cuda-nvcc-cu12==12.6.77")
DRIVER_SOURCES = REPO / "tests" / "native"

# Every TensorRT symbol tensorrt_backend.cpp leaves undefined (nm -uC): the rest is inline through the mImpl vtables.
NVINFER_STUB = r"""#include <stdio.h>
#include <stdlib.h>
static int part(int i) {
  int v[4] = {DEFAULT_MAJOR, DEFAULT_MINOR, DEFAULT_PATCH, DEFAULT_BUILD};
  const char* s = getenv("PKD_STUB_TENSORRT");
  if (s) sscanf(s, "%d.%d.%d.%d", &v[0], &v[1], &v[2], &v[3]);
  return v[i];
}
void *createInferRuntime_INTERNAL(void *logger, int version) { (void)logger; (void)version; return NULL; }
int getInferLibVersion(void) { return part(0) * 10000 + part(1) * 100 + part(2); }
int getInferLibMajorVersion(void) { return part(0); }
int getInferLibMinorVersion(void) { return part(1); }
int getInferLibPatchVersion(void) { return part(2); }
int getInferLibBuildVersion(void) { return part(3); }
"""

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
    """The export/cpp tree to build (PKD_NATIVE_CPP: a mutated copy)."""
    return Path(os.environ.get("PKD_NATIVE_CPP") or REPO / "export" / "cpp").resolve()


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
    return out


def tensorrt_root(major: int) -> Path:
    """A TensorRT prefix for TensorRT_ROOT: the real headers and a stub libnvinfer.so.<major>. 10 is laid out like a
    TensorRT tarball (include/, lib/), 11 like JetPack (include/<arch>/, lib/<arch>/): FindTensorRT must find both."""
    key = hashlib.sha256((NVINFER_STUB + str(HEADERS[major])).encode()).hexdigest()[:10]
    root = cache_root() / f"native-trt-stub{major}-{key}"
    arch = [f"{os.uname().machine}-linux-gnu"] if major == 11 else []
    if (root / ".ready").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    include, lib = root.joinpath("include", *arch), root.joinpath("lib", *arch)
    include.parent.mkdir(parents=True)
    include.symlink_to(HEADERS[major], target_is_directory=True)
    lib.mkdir(parents=True)
    major_, minor, patch, build_ = DEFAULT_VERSION[major].split(".")
    source = (f"#define DEFAULT_MAJOR {major_}\n#define DEFAULT_MINOR {minor}\n#define DEFAULT_PATCH {patch}\n"
              f"#define DEFAULT_BUILD {build_}\n" + NVINFER_STUB)
    (root / "nvinfer_stub.c").write_text(source)
    soname = f"libnvinfer.so.{major}"
    _run([_compiler(), "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(lib / soname), f"-Wl,-soname,{soname}",
          str(root / "nvinfer_stub.c")], f"building the stub {soname}")
    (lib / "libnvinfer.so").symlink_to(soname)
    (root / ".ready").write_text(DEFAULT_VERSION[major] + "\n")
    return root


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
    folder = cache_root() / f"native-trt-{major}-{_sources_digest(_options(trt))}"
    if (folder / ".ready").is_file():
        return Build(major, folder, 0.0)
    start = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    done = configure(trt, folder)
    if done.returncode:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()] or ["no output"]
        raise NativeTensorRTError(f"configuring the TensorRT {major} backend failed: {lines[-1]}")
    (folder / "configure.log").write_text(done.stdout)
    _run(["cmake", "--build", str(folder), "-j", "2"], f"building the TensorRT {major} backend")
    (folder / ".ready").write_text("ok\n")
    return Build(major, folder, time.monotonic() - start)


def driver_command(built: Build, bundle: str | Path, device: int = 0) -> list[str]:
    """The command that opens `bundle`'s TensorRT plan natively and prints "error: <line>" / exit 2 when it cannot.
    After the merge with the core this becomes `pkd-classify BUNDLE IMAGE --backend tensorrt`."""
    return [str(built.driver), str(bundle), "--device", str(device)]


def env(fake_gpu: str | None = None, tensorrt: str | None = None) -> dict[str, str]:
    """The driver's environment: `fake_gpu` ("8.7:Orin") preloads the fake-GPU libcudart (else the real one runs and
    finds no driver); `tensorrt` ("10.3.0.26") is what the stub libnvinfer reports."""
    out = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PKD_FAKE_GPU", "PKD_STUB_TENSORRT")}
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
