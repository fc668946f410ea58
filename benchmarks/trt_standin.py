"""A stand-in `tensorrt` module whose engine computes on the buffers TensorRTBackend gives it, and the checks that
drive the backend through it (gpu_check.sh step 2).

The engine has the methods TensorRTBackend calls (runtime/tensorrt_backend.py) and behaves as TensorRT 10 does where
that matters to the backend (NvInferRuntime.h 10.3, IExecutionContext): a context starts on profile 0
(getOptimizationProfile), `set_optimization_profile_async` raises RuntimeError for a profile that does not exist
(the Python binding's "Error in set optimization profile async."), `set_input_shape` returns False for a shape
outside the ACTIVE profile (setInputShape), and `execute_async_v3` enqueues the work on the stream it is given
(enqueueV3) and fails when a shape or an address is missing. Its network is

    logits = scale * x @ W      (float32 [B, C])
    probs  = softmax(logits)    (float16 [B, C])

computed with an array module on the raw addresses: CuPy on the real device pointers (cupy.cuda.UnownedMemory(ptr,
size, owner, device_id) / MemoryPointer, cupy/cuda/memory.pyx) on the backend's own stream
(cupy.cuda.ExternalStream(ptr, device_id)) on a GPU, numpy on host addresses (ctypes)
on a CPU, so the same class runs in the CPU tests (over tests/fake_tensorrt.py's fake cudart) and on a GPU (over
the real cuda-bindings).
"""

from __future__ import annotations

import ctypes
import enum
import json
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PLAN_MAGIC = b"PKD-STANDIN-PLAN\n"
INPUT, LOGITS, PROBS = "features", "logits", "probs"


# ------------------------------------------------------------------------------------------ array modules
Launch = Callable[[int, Callable[[], None], set], None]


@dataclass
class ArrayDevice:
    """How the engine reads and writes raw addresses: `view(ptr, shape, dtype)` is a writable array over them,
    `launch(stream_handle, work, uses)` runs `work` on that stream (as kernels are enqueued: on a GPU it runs when
    the stream gets to it), `to_numpy` copies a result to the host."""

    name: str
    xp: Any
    view: Callable[[int, tuple[int, ...], np.dtype], Any]
    launch: Launch
    to_numpy: Callable[[Any], np.ndarray]


def numpy_device(launch: Launch | None = None) -> ArrayDevice:
    """Host memory at raw addresses (what a fake cudart hands out). `launch` queues work on a fake stream (e.g. one
    whose copies are asynchronous); by default work runs at once."""

    def view(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(int(ptr))
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def at_once(handle: int, work: Callable[[], None], uses: set) -> None:
        work()

    return ArrayDevice("numpy (host memory)", np, view, launch or at_once, np.array)


def cupy_device(device_id: int = 0) -> ArrayDevice:
    """Device memory at raw CUDA addresses through CuPy; work is enqueued on the caller's stream."""
    import warnings

    import cupy

    def view(ptr: int, shape: tuple[int, ...], dtype: np.dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        memory = cupy.cuda.UnownedMemory(int(ptr), max(nbytes, 1), owner=None, device_id=device_id)
        return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))

    def launch(handle: int, work: Callable[[], None], uses: set) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ExternalStream: deprecated from CuPy 14 on
            stream = cupy.cuda.ExternalStream(int(handle), device_id)
        with cupy.cuda.Device(device_id), stream:
            work()

    return ArrayDevice(f"cupy {cupy.__version__} on cuda:{device_id}", cupy, view, launch, cupy.asnumpy)


def reference(x: np.ndarray, weights: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """The network in float64 numpy: what every output is compared with."""
    logits = scale * (x.astype(np.float64) @ weights.astype(np.float64))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {LOGITS: logits, PROBS: e / e.sum(axis=1, keepdims=True)}


# ------------------------------------------------------------------------------------------ the module
class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


@dataclass
class Controls:
    """What the stand-in saw (never part of TensorRT's API; kept on `module.standin`)."""

    device: ArrayDevice
    weights: np.ndarray
    scale: float
    profiles: list[tuple[int, int, int]]
    calls: list[tuple] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    contexts: list[Any] = field(default_factory=list)

    _weights_on_device: Any = None

    def device_weights(self) -> Any:
        """W on the engine's device, copied once (as a plan holds its weights)."""
        if self._weights_on_device is None:
            self._weights_on_device = self.device.xp.asarray(self.weights)
        return self._weights_on_device

    def record(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def called(self, name: str) -> list[tuple]:
        with self.lock:
            return [c for c in self.calls if c[0] == name]


def make_plan(features: int, classes: int, profiles: list[tuple[int, int, int]]) -> bytes:
    header = {"features": features, "classes": classes, "profiles": [list(p) for p in profiles]}
    return PLAN_MAGIC + json.dumps(header).encode() + b"\n"


def make_standin_tensorrt(device: ArrayDevice, weights: np.ndarray, profiles: list[tuple[int, int, int]],
                          scale: float = 100.0, version: str = "10.3.0") -> types.ModuleType:
    """A module to put at sys.modules["tensorrt"], with exactly what TensorRTBackend uses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType, trt.TensorIOMode = DataType, TensorIOMode
    for alias, member in (("float32", "FLOAT"), ("float16", "HALF"), ("int8", "INT8"), ("int32", "INT32"),
                          ("int64", "INT64"), ("uint8", "UINT8"), ("bool", "BOOL")):
        setattr(trt, alias, DataType[member])
    ctl = trt.standin = Controls(device, np.asarray(weights, dtype=np.float32), float(scale), list(profiles))

    class Logger:
        WARNING = "WARNING"

        def __init__(self, min_severity: str = "WARNING"):
            self.min_severity = min_severity

    class Runtime:
        def __init__(self, logger: Logger):
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine: bytes):
            data = bytes(serialized_engine)
            if not data.startswith(PLAN_MAGIC):
                return None
            header = json.loads(data[len(PLAN_MAGIC):].split(b"\n", 1)[0])
            if (header["features"], header["classes"]) != ctl.weights.shape:
                return None
            return Engine(header)

    class Engine:
        def __init__(self, header: dict):
            d, c = header["features"], header["classes"]
            self._io = [(INPUT, DataType.FLOAT, (-1, d), TensorIOMode.INPUT),
                        (LOGITS, DataType.FLOAT, (-1, c), TensorIOMode.OUTPUT),
                        (PROBS, DataType.HALF, (-1, c), TensorIOMode.OUTPUT)]
            self._profiles = [tuple(p) for p in header["profiles"]]

        num_io_tensors = property(lambda self: len(self._io))
        num_optimization_profiles = property(lambda self: len(self._profiles))

        def _find(self, name: str) -> tuple:
            return next(t for t in self._io if t[0] == name)

        def get_tensor_name(self, index: int) -> str:
            return self._io[index][0]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return self._find(name)[3]

        def get_tensor_dtype(self, name: str) -> DataType:
            return self._find(name)[1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._find(name)[2]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            if self.get_tensor_mode(name) != TensorIOMode.INPUT:
                raise RuntimeError(f"{name} is not an input")
            d = self._io[0][2][1]
            return [(b, d) for b in self._profiles[profile_index]]

        def create_execution_context(self):
            context = Context(self)
            ctl.contexts.append(context)
            return context

    class Context:
        def __init__(self, engine: Engine):
            self._engine = engine
            self._profile = 0  # a new context starts on profile 0
            self._batch: int | None = None
            self._addresses: dict[str, int] = {}
            self.last: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}  # where execute wrote each output

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            ctl.record("set_optimization_profile_async", profile_index, int(stream_handle))
            if not 0 <= profile_index < self._engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")
            self._profile, self._batch = profile_index, None  # shapes are set again after a switch
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            shape = tuple(int(s) for s in shape)
            ctl.record("set_input_shape", name, shape, self._profile)
            lo, _opt, hi = self._engine._profiles[self._profile]
            if name != INPUT or len(shape) != 2 or shape[1] != self._engine._io[0][2][1] or not lo <= shape[0] <= hi:
                return False  # TensorRT logs an error and returns false outside the active profile
            self._batch = shape[0]
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            dims = self._engine._find(name)[2]
            return tuple((self._batch if self._batch is not None else -1) if d < 0 else d for d in dims)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            self._engine._find(name)
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            ctl.record("execute_async_v3", int(stream_handle), self._profile, self._batch)
            if self._batch is None or any(t[0] not in self._addresses for t in self._engine._io):
                return False  # enqueue fails when a shape or an address is missing
            dev, b, addresses = ctl.device, self._batch, dict(self._addresses)
            shapes = {LOGITS: (b, ctl.weights.shape[1]), PROBS: (b, ctl.weights.shape[1])}
            dtypes = {LOGITS: np.dtype(np.float32), PROBS: np.dtype(np.float16)}

            def work() -> None:  # what the plan's kernels do, in stream order
                x = dev.view(addresses[INPUT], (b, ctl.weights.shape[0]), np.float32)
                logits = ctl.scale * (x @ ctl.device_weights())
                z = dev.xp.exp(logits - logits.max(axis=1, keepdims=True))
                for name, value in ((LOGITS, logits), (PROBS, z / z.sum(axis=1, keepdims=True))):
                    dev.view(addresses[name], shapes[name], dtypes[name])[...] = value.astype(dtypes[name])

            dev.launch(int(stream_handle), work, set(addresses.values()))
            self.last = {name: (addresses[name], shapes[name], dtypes[name]) for name in shapes}
            return True

        def read_output(self, name: str) -> np.ndarray:
            """What the last execute wrote to `name` (after the stream was synchronized)."""
            ptr, shape, dtype = self.last[name]
            return ctl.device.to_numpy(ctl.device.view(ptr, shape, dtype))

    trt.Logger, trt.Runtime, trt.ICudaEngine, trt.IExecutionContext = Logger, Runtime, Engine, Context
    return trt


# ------------------------------------------------------------------------------------------ a counting cudart
class CountingCudart:
    """Passes every call to a cuda-python runtime module and counts them; notes which host side of each copy lies
    in memory from cudaMallocHost (pinned) and which streams copies ran on."""

    def __init__(self, cudart: Any):
        self._cudart = cudart
        self.counts: dict[str, int] = {}
        self.pinned: dict[int, int] = {}  # pointer -> size
        self.pageable_copies = 0
        self.copy_streams: set[int] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cudart, name)
        if not name.startswith("cuda") or not callable(value) or isinstance(value, type):
            return value  # enums and types (cudaError_t, cudaMemcpyKind, ...) as they are

        def call(*args: Any) -> Any:
            result = value(*args)
            with self._lock:
                self.counts[name] = self.counts.get(name, 0) + 1
                self._note(name, args, result)
            return result

        return call

    def _pinned(self, ptr: int, n: int) -> bool:
        return any(base <= ptr and ptr + n <= base + size for base, size in self.pinned.items())

    def _note(self, name: str, args: tuple, result: Any) -> None:
        err = result[0] if isinstance(result, tuple) else result
        if err != self._cudart.cudaError_t.cudaSuccess:
            return  # the backend turns it into its one-line error
        if name == "cudaMallocHost":
            self.pinned[int(result[1])] = int(args[0])
        elif name == "cudaFreeHost":
            self.pinned.pop(int(args[0]), None)
        elif name == "cudaMemcpyAsync":
            dst, src, count, kind, stream = args
            host = src if kind == self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice else dst
            self.pageable_copies += not self._pinned(int(host), int(count))
            self.copy_streams.add(int(stream))


# ------------------------------------------------------------------------------------------ the checks
PROFILES = [(1, 1, 1), (2, 4, 8), (9, 16, 32)]
FEATURES, CLASSES, SCALE = 64, 10, 100.0


def standin_weights(seed: int = 0) -> np.ndarray:
    """Unit-norm class vectors (as a real head's), so that logits are scale x cosine."""
    w = np.random.default_rng(seed).standard_normal((FEATURES, CLASSES)).astype(np.float32)
    return w / np.linalg.norm(w, axis=0, keepdims=True)


def batch_of(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _error(outputs: dict[str, np.ndarray], x: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    want = reference(x, weights, SCALE)
    return {name: float(np.max(np.abs(outputs[name].astype(np.float64) - want[name]))) for name in want}


TOLERANCE = {LOGITS: 2e-3, PROBS: 2e-3}  # float32 matmul at scale 100; float16 probabilities


class Failed(AssertionError):
    """A check of the backend's behaviour failed."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


def check_engine(device: ArrayDevice, alloc: Callable[[int], int]) -> dict[str, Any]:
    """The stand-in engine alone on `alloc`ed buffers: profile rules and outputs against numpy (no backend)."""
    weights = standin_weights()
    trt = make_standin_tensorrt(device, weights, PROFILES, SCALE)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(make_plan(FEATURES, CLASSES,
                                                                                             PROFILES))
    ctx = engine.create_execution_context()
    _require(not ctx.set_input_shape(INPUT, (5, FEATURES)), "profile 0 took batch 5")
    ctx.set_optimization_profile_async(1, 7)
    _require(ctx.set_input_shape(INPUT, (5, FEATURES)), "profile 1 refused batch 5")
    _require(not ctx.execute_async_v3(7), "executed without addresses")
    x = batch_of(5, 1)
    ptrs = {INPUT: alloc(x.nbytes), LOGITS: alloc(5 * CLASSES * 4), PROBS: alloc(5 * CLASSES * 2)}
    device.view(ptrs[INPUT], x.shape, np.float32)[...] = device.xp.asarray(x)
    for name, ptr in ptrs.items():
        ctx.set_tensor_address(name, ptr)
    _require(ctx.execute_async_v3(7), "execute failed")
    err = _error({n: ctx.read_output(n) for n in (LOGITS, PROBS)}, x, weights)
    _require(all(err[n] <= TOLERANCE[n] for n in err), f"outputs differ from numpy: {err}")
    try:
        ctx.set_optimization_profile_async(3, 7)
        raise Failed("profile 3 of 3 was accepted")
    except RuntimeError:
        pass
    return {"engine": device.name, "max_abs_error": err, "out_of_profile_refused": True}


def check_backend(make_backend: Callable[[], Any], trt: types.ModuleType, cudart: CountingCudart,
                  threads: int = 8, calls_per_thread: int = 12, timed_runs: int = 50) -> dict[str, Any]:
    """Drive a TensorRTBackend built over `trt` (the stand-in) and `cudart` (counted): profile switches, buffer
    growth, `threads` threads at once, stage/run_staged, each output against numpy. Raises Failed, else figures."""
    weights, ctl = trt.standin.weights, trt.standin
    figures: dict[str, Any] = {"threads": threads}
    backend = make_backend()
    try:
        _require(backend.profiles == [(lo, hi) for lo, _, hi in PROFILES], f"profiles {backend.profiles}")
        worst: dict[str, float] = {LOGITS: 0.0, PROBS: 0.0}

        def run_checked(n: int, seed: int) -> None:
            x = batch_of(n, seed)
            out = backend.run(x)
            _require(set(out) == {LOGITS, PROBS}, f"outputs {sorted(out)}")
            for name, e in _error(out, x, weights).items():
                _require(e <= TOLERANCE[name], f"batch {n}: {name} differs from numpy by {e:.3g}")
                worst[name] = max(worst[name], e)

        # profile switches: 1 -> 5 -> 32 -> 1 touches profiles 0, 1, 2, 0
        for i, n in enumerate((1, 5, 32, 1)):
            run_checked(n, 10 + i)
        switches = [c[1] for c in ctl.called("set_optimization_profile_async")]
        _require(switches == [1, 2, 0], f"profile switches {switches}, expected [1, 2, 0]")
        figures["profile_switches"] = switches
        # buffer growth: the largest batch already ran, so smaller ones allocate nothing more
        allocated = cudart.counts.get("cudaMalloc", 0), cudart.counts.get("cudaMallocHost", 0)
        for i, n in enumerate((2, 8, 9, 17, 31)):
            run_checked(n, 20 + i)
        _require((cudart.counts.get("cudaMalloc", 0), cudart.counts.get("cudaMallocHost", 0)) == allocated,
                 "buffers were allocated again for batches smaller than one already run")
        figures["allocations"] = {"device": allocated[0], "pinned": allocated[1]}

        # many threads on one backend: every result is its own input's
        errors: list[str] = []

        def worker(k: int) -> None:
            rng = np.random.default_rng(100 + k)
            try:
                for j in range(calls_per_thread):
                    run_checked(int(rng.integers(1, 33)), 1000 * k + j)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"thread {k}: {e}")

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        _require(not errors, "; ".join(errors[:3]))
        figures["threaded_calls"] = threads * calls_per_thread
        figures["threaded_seconds"] = round(time.perf_counter() - start, 3)

        # stage / run_staged: outputs stay on the device; read them where the engine wrote them
        x = batch_of(16, 7)
        shape = backend.stage(x)
        backend.run_staged(shape)
        ctx = ctl.contexts[-1]
        err = _error({n: ctx.read_output(n) for n in (LOGITS, PROBS)}, x, weights)
        _require(all(err[n] <= TOLERANCE[n] for n in err), f"run_staged outputs differ from numpy: {err}")
        times = []
        for _ in range(timed_runs):
            t0 = time.perf_counter()
            backend.run_staged(shape)
            times.append(time.perf_counter() - t0)
        figures["run_staged_p50_us"] = round(float(np.median(times)) * 1e6, 1)

        streams = {c[1] for c in ctl.called("execute_async_v3")}
        _require(0 not in streams and 0 not in cudart.copy_streams, "work ran on the default stream (0)")
        _require(streams == cudart.copy_streams and len(streams) == 1,
                 f"engine streams {streams} differ from the copies' {cudart.copy_streams}")
        _require(cudart.pageable_copies == 0, f"{cudart.pageable_copies} copies from pageable host memory")
        figures["max_abs_error"] = worst
        figures["executions"] = len(ctl.called("execute_async_v3"))
    finally:
        backend.close()
    figures["cuda_calls"] = dict(sorted(cudart.counts.items()))
    _require(not cudart.pinned, f"{len(cudart.pinned)} pinned buffers left after close")
    return figures
