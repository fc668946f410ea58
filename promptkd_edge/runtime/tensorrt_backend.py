"""TensorRT backend: runs a bundle's plan (TensorRT 10 or 11) with host numpy in and out, via cuda-python.

Imports neither torch nor tensorrt at module level; TensorRT and the CUDA runtime are loaded when a backend is made.
The TensorRT/GPU probes used by the build step (`export/tensorrt_build.py`) live here so that the runtime never
needs the export package.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.formats.manifest import EngineEntry
from promptkd_edge.runtime.backends import Backend
from promptkd_edge.utils.files import sha256_file

REBUILD_HINT = "rebuild it here with `pkd export BUNDLE --trt`"


# How to install TensorRT + cuda-python where it runs. cuda-python N.x needs a CUDA N driver: JetPack 6 ships a
# CUDA 12.6 driver, so cuda-python stays < 13 there; desktop drivers >= 580 run CUDA 13.
INSTALL_HINT = ("on Jetson (JetPack 6) install JetPack's python3-libnvinfer, make the venv with "
                "--system-site-packages and `pip install 'promptkd-edge[jetson]'`; on a desktop GPU "
                "`pip install 'promptkd-edge[trt]'` (CUDA 12 driver) or `'promptkd-edge[trt-cu13]'` (driver >= 580), "
                "which need NVIDIA's package index, or use an nvcr.io/nvidia/tensorrt container")


def import_tensorrt():
    """The `tensorrt` module, or a one-line PkdError saying what to install."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise PkdError(f"TensorRT is not installed ({first_line(e, with_type=False)}): {INSTALL_HINT}") from None
    return trt


def tensorrt_version(trt) -> str:
    return str(trt.__version__)


def load_cudart():
    """cuda-python's CUDA runtime module (`cuda.bindings.runtime`, or `cuda.cudart` of cuda-python < 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except (ImportError, OSError):
        try:
            from cuda import cudart
        except (ImportError, OSError):
            raise PkdError("cuda-python is not installed: `pip install 'cuda-python>=12.6,<13'` on JetPack 6 or a "
                           "CUDA 12 driver, `'cuda-python>=13,<14'` with a driver >= 580 (the TensorRT backend "
                           "copies buffers with its CUDA runtime API)") from None
    return cudart


def cuda_bindings_version() -> str | None:
    """The installed cuda-python (cuda-bindings) version, e.g. "13.5.0"."""
    from promptkd_edge.utils.versions import distribution_version

    return distribution_version("cuda-bindings") or distribution_version("cuda-python")


def driver_mismatch(bindings: str | None, driver_cuda: int | None) -> str | None:
    """Why cuda-python `bindings` cannot run on a driver for CUDA `driver_cuda` (e.g. 12060), or None.

    cuda-python N.x needs a CUDA N driver: 13.x needs a driver >= 580, and JetPack 6's driver is CUDA 12.
    """
    if not bindings or not driver_cuda:
        return None
    try:
        major = int(str(bindings).split(".")[0])
    except ValueError:
        return None
    driver_major, driver_minor = int(driver_cuda) // 1000, (int(driver_cuda) % 1000) // 10
    if major <= driver_major:
        return None
    need = " (driver >= 580)" if major == 13 else ""
    return (f"cuda-python {bindings} needs a CUDA {major} driver{need}, but this driver runs CUDA "
            f"{driver_major}.{driver_minor} (JetPack 6 ships CUDA 12): `pip install "
            f"'cuda-python>={driver_major}.0,<{driver_major + 1}'`")


def _error_name(cudart, err) -> str:
    try:
        name = cudart.cudaGetErrorName(err)[1]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - only for a message
        return str(err)


def cuda_check(cudart, result, what: str):
    """Unpack a cuda-python result tuple `(err, *values)`; a CUDA error is a one-line PkdError."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise PkdError(f"CUDA call {what} failed: {_error_name(cudart, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class CudaRuntime:
    """What the CUDA runtime (through cuda-python) says: devices, its error when it sees none, driver and runtime
    CUDA versions (e.g. 12060), or None where a call failed."""

    device_count: int
    error: str | None
    driver_cuda: int | None
    runtime_cuda: int | None


def cuda_runtime(cudart=None) -> CudaRuntime:
    """The CUDA runtime's view of this machine (`cudart`: cuda-python's runtime module; loaded when None).
    Without a usable driver its calls return error codes, never raise."""
    cudart = cudart or load_cudart()
    ok = cudart.cudaError_t.cudaSuccess
    err, count = cudart.cudaGetDeviceCount()
    derr, driver = cudart.cudaDriverGetVersion()
    rerr, runtime = cudart.cudaRuntimeGetVersion()
    return CudaRuntime(device_count=int(count) if err == ok and count else 0,
                       error=None if err == ok else _error_name(cudart, err),
                       driver_cuda=int(driver) if derr == ok and driver else None,
                       runtime_cuda=int(runtime) if rerr == ok and runtime else None)


def _gpu_info_without_cudart(device_id: int) -> dict[str, str]:
    """Name and compute capability from NVML / nvidia-smi (utils/gpus.py) where cuda-python is not installed."""
    from promptkd_edge.utils import gpus

    scan = gpus.scan()
    gpu = gpus.select(scan.gpus, gpus.cuda_selector(f"cuda:{device_id}"))
    if gpu is None:
        why = scan.error or "0 devices"
        raise PkdError(f"no CUDA GPU is visible ({why}); TensorRT needs an NVIDIA GPU and driver")
    if not gpu.compute_capability:
        raise PkdError("cannot tell this GPU's compute capability: install cuda-python (`pip install cuda-python`)")
    major, minor = gpu.compute_capability.split(".")
    return {"name": gpu.name or "?", "compute_capability": gpu.compute_capability, "sm": f"{major}{minor}"}


def gpu_info(device_id: int = 0) -> dict[str, str]:
    """{"name", "compute_capability" ("8.7"), "sm" ("87")} of a GPU, via cuda-python (else NVML / nvidia-smi)."""
    try:
        cudart = load_cudart()
    except PkdError:
        return _gpu_info_without_cudart(device_id)
    view = cuda_runtime(cudart)
    if not view.device_count:
        why = driver_mismatch(cuda_bindings_version(), view.driver_cuda)
        if why:
            raise PkdError(why)
        raise PkdError(f"no CUDA GPU is visible ({view.error or '0 devices'}); TensorRT needs an NVIDIA GPU and "
                       "driver")
    if device_id >= view.device_count:
        raise PkdError(f"GPU {device_id} does not exist; this machine has {view.device_count}")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device_id), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\x00")[0].decode("utf-8", "replace")
    major, minor = int(props.major), int(props.minor)
    return {"name": str(name).strip(), "compute_capability": f"{major}.{minor}", "sm": f"{major}{minor}"}


def _sm(compute_capability: str) -> str:
    return str(compute_capability).replace(".", "")


PlanRecord = EngineEntry | Mapping[str, Any]  # a bundle's manifest entry, or the record a build just returned


def plan_field(record: PlanRecord, key: str, default: Any = None) -> Any:
    """A plan record's `key`: an EngineEntry's field (else its extra), or a build record's (a dict) key."""
    if isinstance(record, Mapping):
        return record.get(key, default)
    if key in {f.name for f in dataclasses.fields(record)}:
        return getattr(record, key)
    return record.extra.get(key, default)


def check_plan_compatible(record: PlanRecord, trt, gpu: dict[str, str]) -> None:
    """A plan loads only on the TensorRT version and GPU architecture it was built for: else a one-line PkdError."""
    version = tensorrt_version(trt)
    built, sm = plan_field(record, "tensorrt"), plan_field(record, "compute_capability", "?")
    if built == version and sm == gpu["compute_capability"]:
        return
    raise PkdError(
        f"{plan_field(record, 'file', 'the plan')} was built for TensorRT {built} on sm_{_sm(sm)} "
        f"({plan_field(record, 'gpu', '?')}); this machine has TensorRT {version} on "
        f"sm_{_sm(gpu['compute_capability'])} ({gpu['name']}): {REBUILD_HINT}")



def compatible_plan(records: list[PlanRecord], trt, gpu: dict[str, str]) -> tuple[PlanRecord | None, list[str]]:
    """(the first of `records` built for this TensorRT and GPU, or None; why each one before it does not load)."""
    reasons = []
    for record in records:
        try:
            check_plan_compatible(record, trt, gpu)
        except PkdError as e:
            reasons.append(str(e))
            continue
        return record, reasons
    return None, reasons

NUMPY_DTYPES = (("float32", np.float32), ("float16", np.float16), ("int8", np.int8), ("int32", np.int32),
                ("int64", np.int64), ("uint8", np.uint8), ("bool", np.bool_))  # TensorRT's module-level dtypes


def numpy_dtype(trt, dtype) -> np.dtype:
    """The numpy dtype of a TensorRT DataType (numpy has no bfloat16/fp8: those are a PkdError)."""
    for trt_name, np_type in NUMPY_DTYPES:
        if dtype == getattr(trt, trt_name):
            return np.dtype(np_type)
    raise PkdError(f"the engine has an I/O tensor of type {dtype} that numpy cannot hold; export with float32 I/O")


class _Buffers:
    """Device buffers and pinned (page-locked) host buffers per tensor, kept and grown across calls.

    A buffer is freed only after `stream` is synchronized: releasing memory that enqueued work still uses is
    undefined behaviour (NvInferRuntime.h, enqueueV3), and cudaFree only "may" synchronize.
    """

    def __init__(self, cudart, stream):
        self._cudart = cudart
        self._stream = stream
        self.device: dict[str, tuple[int, int]] = {}
        self.host: dict[str, tuple[int, int]] = {}

    def _get(self, pool: dict[str, tuple[int, int]], name: str, nbytes: int, pinned: bool) -> int:
        ptr, size = pool.get(name, (0, 0))
        if size >= nbytes:
            return ptr
        cudart = self._cudart
        if ptr:
            cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            del pool[name]
            if pinned:
                cuda_check(cudart, cudart.cudaFreeHost(ptr), "cudaFreeHost")
            else:
                cuda_check(cudart, cudart.cudaFree(ptr), "cudaFree")
        alloc = cudart.cudaMallocHost if pinned else cudart.cudaMalloc
        ptr = int(cuda_check(cudart, alloc(nbytes), "cudaMallocHost" if pinned else "cudaMalloc"))
        pool[name] = (ptr, nbytes)
        return ptr

    def device_ptr(self, name: str, nbytes: int) -> int:
        return self._get(self.device, name, max(nbytes, 1), pinned=False)

    def host_array(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A numpy view of pinned host memory for `name` (valid until the buffer grows)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ptr = self._get(self.host, name, max(nbytes, 1), pinned=True)
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def free(self) -> None:
        for ptr, _ in self.device.values():
            self._cudart.cudaFree(ptr)
        for ptr, _ in self.host.values():
            self._cudart.cudaFreeHost(ptr)
        self.device.clear()
        self.host.clear()


class TensorRTBackend(Backend):
    """One TensorRT engine on one GPU; `run` takes and returns host numpy arrays and is safe from many threads.

    Copies go through pinned host buffers (a copy from pageable memory is synchronous), on the backend's own stream
    (TensorRT adds synchronizations on the default stream), and device and host buffers are kept and grown across
    calls. `stage` and `run_staged` run a batch already on the GPU (what a benchmark's compute time measures). Every
    public method makes the backend's GPU current first: the CUDA current device is per host thread, and memory,
    streams and the engine belong to the device that was current when they were made.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, plan_path: str | Path, record: PlanRecord, device_id: int = 0):
        self.plan_path = Path(plan_path)
        self.record = record
        self.precision = plan_field(record, "precision")
        self.frame_sizes = plan_field(record, "frame_sizes")
        self.device_id = device_id
        trt = import_tensorrt()
        self._trt = trt
        self._cudart = cudart = load_cudart()
        self.gpu = gpu_info(device_id)
        check_plan_compatible(record, trt, self.gpu)
        if not self.plan_path.is_file():
            raise PkdError(f"TensorRT plan not found: {self.plan_path}")
        if plan_field(record, "sha256") and sha256_file(self.plan_path) != plan_field(record, "sha256"):
            raise PkdError(f"{self.plan_path} does not match its sha256 in the manifest")
        self._lock = threading.Lock()
        cuda_check(cudart, cudart.cudaSetDevice(device_id), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        try:
            self._runtime = trt.Runtime(self._logger)
        except TypeError as e:  # "factory function returned nullptr": no usable GPU/driver
            raise PkdError(f"TensorRT {tensorrt_version(trt)} found no usable GPU "
                           f"({first_line(e, with_type=False)})") from None
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise PkdError(f"{plan_field(record, 'file', self.plan_path.name)} cannot be loaded by this TensorRT/GPU "
                           f"(TensorRT {tensorrt_version(trt)}, {self.gpu['name']}); {REBUILD_HINT}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise PkdError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise PkdError(f"{self.plan_path.name} has {len(inputs)} inputs; promptkd-edge plans have one")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: numpy_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.profiles = [self._batch_range(p) for p in range(self.engine.num_optimization_profiles)]
        self._profile = 0  # a new context starts on profile 0
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers = _Buffers(cudart, self._stream)

    @property
    def max_batch(self) -> int:
        """The largest batch any optimization profile takes."""
        return max(hi for _, hi in self.profiles)

    def _batch_range(self, profile: int) -> tuple[int, int]:
        lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, profile)
        return int(tuple(lo)[0]), int(tuple(hi)[0])

    @property
    def description(self) -> str:
        return (f"TensorRT {tensorrt_version(self._trt)}, {self.gpu['name']} (sm_{self.gpu['sm']}), "
                f"plan {plan_field(self.record, 'file', self.plan_path.name)}")

    def _pick_profile(self, batch: int, profile: int | None = None) -> int:
        """`profile` when given (it must hold `batch`), else the first profile that holds `batch`."""
        ranges = ", ".join(f"{lo}..{hi}" for lo, hi in self.profiles)
        if profile is not None:
            if not 0 <= profile < len(self.profiles):
                raise PkdError(f"the engine has no optimization profile {profile} (it has {len(self.profiles)})")
            lo, hi = self.profiles[profile]
            if not lo <= batch <= hi:
                raise PkdError(f"batch {batch} is outside the engine's profile {profile} ({lo}..{hi})")
            return profile
        for i, (lo, hi) in enumerate(self.profiles):
            if lo <= batch <= hi:
                return i
        raise PkdError(f"batch {batch} is outside the engine's profiles [{ranges}]; rebuild with --trt-profile")

    def _use_device(self) -> None:
        """Make this backend's GPU current on the calling thread (held lock); refuses a closed backend."""
        if self.context is None:
            raise PkdError("this TensorRT backend was closed")
        cuda_check(self._cudart, self._cudart.cudaSetDevice(self.device_id), "cudaSetDevice")

    def _checked(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self._dtypes[self.input_name])
        expected = self._input_shape
        if x.ndim != len(expected) or any(e >= 0 and e != s for e, s in zip(expected[1:], x.shape[1:],
                                                                              strict=False)):
            want = "x".join("batch" if e < 0 else str(e) for e in expected)
            raise PkdError(f"input of shape {tuple(x.shape)} does not fit the engine's {want}")
        if x.shape[0] < 1:
            raise PkdError("empty batch")
        return x

    def run(self, batch: np.ndarray, profile: int | None = None) -> dict[str, np.ndarray]:
        """Outputs by name for one model-ready batch (converted to the engine's input dtype), run in optimization
        profile `profile` (default: the first that holds the batch; a server may pick any, so the gate runs each)."""
        with self._lock:
            self._use_device()
            x = self._checked(batch)
            shapes = self._set_shapes(x.shape, profile)
            cudart, stream = self._cudart, self._stream
            staging = self._buffers.host_array(self.input_name, x.shape, x.dtype)
            np.copyto(staging, x)
            h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            cuda_check(cudart, cudart.cudaMemcpyAsync(self._buffers.device_ptr(self.input_name, x.nbytes),
                                                      staging.ctypes.data, x.nbytes, h2d, stream), "cudaMemcpyAsync")
            self._execute()
            hosts = {}
            for name, shape in shapes.items():
                hosts[name] = host = self._buffers.host_array(name, shape, self._dtypes[name])
                cuda_check(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers.device[name][0],
                                                          host.nbytes, d2h, stream), "cudaMemcpyAsync")
            cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            return {name: host.copy() for name, host in hosts.items()}  # the pinned buffers are reused

    def stage(self, batch: np.ndarray) -> tuple[int, ...]:
        """Copy one batch to the GPU for `run_staged`; returns its shape."""
        with self._lock:
            self._use_device()
            x = self._checked(batch)
            cudart = self._cudart
            staging = self._buffers.host_array(self.input_name, x.shape, x.dtype)
            np.copyto(staging, x)
            ptr = self._buffers.device_ptr(self.input_name, x.nbytes)
            h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda_check(cudart, cudart.cudaMemcpyAsync(ptr, staging.ctypes.data, x.nbytes, h2d, self._stream),
                       "cudaMemcpyAsync")
            cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            return tuple(x.shape)

    def run_staged(self, shape: tuple[int, ...], wait: bool = True) -> None:
        """Run the engine on the batch `stage` put on the GPU; outputs stay there (no copies)."""
        with self._lock:
            self._use_device()
            self._set_shapes(tuple(shape))
            self._execute()
            if wait:
                cuda_check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def synchronize(self) -> None:
        """Wait for the work `run_staged(wait=False)` queued."""
        with self._lock:
            self._use_device()
            cuda_check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def _set_shapes(self, shape: tuple[int, ...], profile: int | None = None) -> dict[str, tuple[int, ...]]:
        """Select the profile, set the input shape and every tensor address; returns the output shapes."""
        ctx = self.context
        profile = self._pick_profile(shape[0], profile)
        if profile != self._profile:
            try:  # the binding raises RuntimeError("Error in set optimization profile async.") on failure
                ctx.set_optimization_profile_async(profile, int(self._stream))
            except RuntimeError as e:
                raise PkdError(f"TensorRT could not switch to optimization profile {profile} "
                               f"({first_line(e, with_type=False)})") from None
            self._profile = profile
        if not ctx.set_input_shape(self.input_name, tuple(int(d) for d in shape)):
            raise PkdError(f"TensorRT rejected input shape {tuple(shape)}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * self._dtypes[self.input_name].itemsize
        ctx.set_tensor_address(self.input_name, self._buffers.device_ptr(self.input_name, nbytes))
        shapes = {}
        for name in self.output_names:
            out = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in out):
                raise PkdError(f"TensorRT could not infer the shape of output {name} ({out})")
            shapes[name] = out
            size = int(np.prod(out, dtype=np.int64)) * self._dtypes[name].itemsize
            ctx.set_tensor_address(name, self._buffers.device_ptr(name, size))
        return shapes

    def _execute(self) -> None:
        if not self.context.execute_async_v3(int(self._stream)):
            raise PkdError("TensorRT failed to run the engine; see the TensorRT log above")

    def close(self) -> None:
        """Free the device and pinned buffers and the stream; the backend cannot run afterwards."""
        with self._lock:
            if self.context is None:
                return
            self._use_device()
            self._cudart.cudaStreamSynchronize(self._stream)
            self._buffers.free()
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = self.context = self.engine = None

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
