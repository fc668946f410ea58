"""Fake `tensorrt` (10.x and 11.x API surfaces) and a fake cuda-python runtime that record every call.

TRT 10: weakly typed; BuilderFlag has FP16/INT8/FP8/OBEY_PRECISION_CONSTRAINTS; layers have `precision` and
`set_output_type`. TRT 11: strongly typed only; those flags and layer members do not exist (AttributeError), and
NetworkDefinitionCreationFlag has STRONGLY_TYPED but no EXPLICIT_BATCH. The parser really reads the ONNX file
(one layer per node); a plan embeds the ONNX, and the fake engine runs it with onnx.reference, reading and
writing the "device" buffers the fake cudart allocated (real host memory), so data movement is checked end to end.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from typing import Any

import numpy as np

PLAN_MAGIC = b"FAKETRT\n"


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class LayerType(enum.Enum):
    CONVOLUTION = enum.auto()
    ACTIVATION = enum.auto()
    SOFTMAX = enum.auto()
    CONCATENATION = enum.auto()
    ELEMENTWISE = enum.auto()
    UNARY = enum.auto()
    SHUFFLE = enum.auto()
    REDUCE = enum.auto()
    GATHER = enum.auto()
    MATRIX_MULTIPLY = enum.auto()
    CONSTANT = enum.auto()
    IDENTITY = enum.auto()
    SLICE = enum.auto()
    SHAPE = enum.auto()
    CAST = enum.auto()
    QUANTIZE = enum.auto()
    DEQUANTIZE = enum.auto()
    NORMALIZATION = enum.auto()


OP_TO_LAYER = {
    "LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX", "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY", "Conv": "CONVOLUTION", "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE",
    "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE", "Pow": "ELEMENTWISE", "Sqrt": "UNARY", "Exp": "UNARY",
    "Erf": "UNARY", "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "Gelu": "ACTIVATION", "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE", "Flatten": "SHUFFLE", "Concat": "CONCATENATION", "Gather": "GATHER",
    "Slice": "SLICE", "Shape": "SHAPE", "Cast": "CAST", "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE", "Constant": "CONSTANT", "Identity": "IDENTITY", "Expand": "SLICE",
    "Clip": "ACTIVATION", "Squeeze": "SHUFFLE", "Unsqueeze": "SHUFFLE",
    **{op: "REDUCE" for op in ("ReduceL2", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")},
}


def _onnx_dtype(elem_type: int) -> DataType:
    from onnx import TensorProto

    return {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF, TensorProto.UINT8: DataType.UINT8,
            TensorProto.INT8: DataType.INT8, TensorProto.INT32: DataType.INT32, TensorProto.INT64: DataType.INT64,
            TensorProto.BOOL: DataType.BOOL}[elem_type]


NP_OF = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.UINT8: np.uint8, DataType.INT8: np.int8,
         DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_}


class FakeTensor:
    def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...] = ()):
        self.name, self.dtype, self.shape = name, dtype, shape


def make_fake_trt(version: str = "10.3.0") -> types.ModuleType:
    """A `tensorrt` module for `version` (10.x or 11.x API). `trt.calls` records every call in order.

    Switches: `trt.builder_nullptr` (Builder raises TypeError like without a GPU), `trt.fail_build`
    (build_serialized_network returns None), `trt.foreign_timing_cache` (set_timing_cache returns False),
    `trt.cudart` (a fake cudart: the engine then checks its I/O addresses are big enough allocations).
    """
    api = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = []
    trt.builder_nullptr = False
    trt.fail_build = False
    trt.foreign_timing_cache = False
    trt.cudart = None

    def record(*call: Any) -> None:
        calls.append(call)

    trt.called = lambda name: [c for c in calls if c[0] == name]
    trt.DataType = DataType
    for alias, member in (("float32", "FLOAT"), ("float16", "HALF"), ("int8", "INT8"), ("int32", "INT32"),
                          ("bool", "BOOL"), ("uint8", "UINT8"), ("fp8", "FP8"), ("bfloat16", "BF16"),
                          ("int64", "INT64")):
        setattr(trt, alias, DataType[member])
    trt.LayerType = LayerType
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "TACTIC_DRAM"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    if api >= 11:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
        flags = ["TF32", "REFIT", "DISABLE_TIMING_CACHE", "DIRECT_IO", "SPARSE_WEIGHTS", "VERSION_COMPATIBLE"]
    else:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                         {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        flags = ["FP16", "BF16", "INT8", "FP8", "INT4", "TF32", "REFIT", "DISABLE_TIMING_CACHE",
                 "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "SPARSE_WEIGHTS",
                 "VERSION_COMPATIBLE"]
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity: int = 2):
            record("Logger", min_severity)

    class Layer10:
        def __init__(self, name: str, layer_type: LayerType, outputs: list[FakeTensor]):
            self.name, self.type, self._outputs = name, layer_type, outputs
            self._precision = DataType.FLOAT
            self.precision_is_set = False

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, i: int) -> FakeTensor:
            return self._outputs[i]

        @property
        def precision(self) -> DataType:
            return self._precision

        @precision.setter
        def precision(self, dtype: DataType) -> None:
            record("layer.precision", self.name, dtype)
            self._precision, self.precision_is_set = dtype, True

        def set_output_type(self, i: int, dtype: DataType) -> None:
            assert 0 <= i < len(self._outputs)
            record("set_output_type", self.name, i, dtype)

    class Layer11:  # no precision / set_output_type: assigning them raises AttributeError like pybind11
        __slots__ = ("name", "type", "_outputs")

        def __init__(self, name: str, layer_type: LayerType, outputs: list[FakeTensor]):
            self.name, self.type, self._outputs = name, layer_type, outputs

        @property
        def num_outputs(self) -> int:
            return len(self._outputs)

        def get_output(self, i: int) -> FakeTensor:
            return self._outputs[i]

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self._layers: list[Any] = []
            self._inputs: list[FakeTensor] = []
            self._outputs: list[FakeTensor] = []
            self.onnx_bytes = b""

        num_layers = property(lambda self: len(self._layers))
        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_layer(self, i: int):
            return self._layers[i]

        def get_input(self, i: int) -> FakeTensor:
            return self._inputs[i]

        def get_output(self, i: int) -> FakeTensor:
            return self._outputs[i]

    class ParserError:
        def __init__(self, desc: str):
            self._desc = desc

        def desc(self) -> str:
            return self._desc

        def __str__(self) -> str:
            return f"In node -1 with name: (parseGraph): INVALID_NODE: {self._desc}"

    def _dims(value_info) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger):
            record("OnnxParser")
            self.network = network
            self._errors: list[ParserError] = []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, i: int) -> ParserError:
            return self._errors[i]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            record("parse_from_file", path)
            model = onnx.load(path)
            g = model.graph
            inits = {t.name for t in g.initializer}
            layer_cls = Layer11 if api >= 11 else Layer10
            for node in g.node:
                kind = OP_TO_LAYER.get(node.op_type)
                if kind is None:
                    self._errors.append(ParserError(f"No importer registered for op: {node.op_type}"))
                    return False
                outs = [FakeTensor(o, DataType.INT64 if node.op_type == "Shape" else DataType.FLOAT)
                        for o in node.output]
                self.network._layers.append(layer_cls(node.name or f"{node.op_type}_{len(self.network._layers)}",
                                                      LayerType[kind], outs))
            self.network._inputs = [FakeTensor(v.name, _onnx_dtype(v.type.tensor_type.elem_type), _dims(v))
                                    for v in g.input if v.name not in inits]
            self.network._outputs = [FakeTensor(v.name, _onnx_dtype(v.type.tensor_type.elem_type), _dims(v))
                                     for v in g.output]
            self.network.onnx_bytes = model.SerializeToString()
            return True

    class Profile:
        def __init__(self):
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, lo, opt, hi) -> None:
            record("set_shape", name, tuple(lo), tuple(opt), tuple(hi))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self) -> bytes:
            record("timing_cache.serialize")
            return self.data + b"+tactics"

    class BuilderConfig:
        def __init__(self):
            object.__setattr__(self, "flags", set())
            object.__setattr__(self, "profiles", [])
            object.__setattr__(self, "pools", {})
            object.__setattr__(self, "timing_cache", None)
            object.__setattr__(self, "builder_optimization_level", 3)

        def __setattr__(self, name: str, value: Any) -> None:
            if name != "builder_optimization_level":
                raise AttributeError(f"'IBuilderConfig' object has no attribute '{name}'")
            record("builder_optimization_level", value)
            object.__setattr__(self, name, value)

        def set_flag(self, flag) -> None:
            record("set_flag", flag.name)
            self.flags.add(flag.name)

        def set_memory_pool_limit(self, pool, size: int) -> None:
            record("set_memory_pool_limit", pool.name, size)
            self.pools[pool.name] = size

        def add_optimization_profile(self, profile: Profile) -> int:
            record("add_optimization_profile", dict(profile.shapes))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profiles)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            record("create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            record("set_timing_cache", cache.data, ignore_mismatch)
            if trt.foreign_timing_cache and cache.data:
                return False
            object.__setattr__(self, "timing_cache", cache)
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.timing_cache

    class Builder:
        def __init__(self, logger: Logger):
            record("Builder")
            if trt.builder_nullptr:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags: int = 0) -> Network:
            record("create_network", flags)
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            record("create_builder_config")
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            record("create_optimization_profile")
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            record("build_serialized_network")
            if trt.fail_build or not network.num_layers or not config.profiles:
                return None
            profiles = []
            for profile in config.profiles:
                for t in network._inputs:  # every dynamic input needs a shape per profile, with matching rank/dims
                    if t.name not in profile.shapes:
                        return None
                    lo, opt, hi = profile.shapes[t.name]
                    if any(len(s) != len(t.shape) for s in (lo, opt, hi)):
                        return None
                    if any(d >= 0 and (a, b, c) != (d, d, d) for d, a, b, c in zip(t.shape, lo, opt, hi, strict=True)):
                        return None
                    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                        return None
                profiles.append({k: [list(s) for s in v] for k, v in profile.shapes.items()})
            header = {"version": version, "network_flags": network.flags, "flags": sorted(config.flags),
                      "profiles": profiles, "pools": config.pools, "opt_level": config.builder_optimization_level,
                      "fp32_layers": [layer.name for layer in network._layers
                                      if getattr(layer, "precision_is_set", False)],
                      "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._inputs],
                      "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._outputs]}
            return PLAN_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + network.onnx_bytes

    class Engine:
        def __init__(self, header: dict, onnx_bytes: bytes):
            self.header = header
            self.onnx_bytes = onnx_bytes
            self.io = [(n, DataType[d], tuple(s), trt.TensorIOMode.INPUT) for n, d, s in header["inputs"]]
            self.io += [(n, DataType[d], tuple(s), trt.TensorIOMode.OUTPUT) for n, d, s in header["outputs"]]

        num_io_tensors = property(lambda self: len(self.io))
        num_optimization_profiles = property(lambda self: len(self.header["profiles"]))

        def _find(self, name: str):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def get_tensor_mode(self, name: str):
            return self._find(name)[3]

        def get_tensor_dtype(self, name: str) -> DataType:
            return self._find(name)[1]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._find(name)[2]

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.header["profiles"][profile][name]]

        def create_execution_context(self):
            record("create_execution_context")
            return Context(self)

    class Context:
        def __init__(self, engine: Engine):
            self.engine = engine
            self.active_optimization_profile = 0
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            record("set_optimization_profile_async", index, stream)
            if not 0 <= index < self.engine.num_optimization_profiles:
                return False
            self.active_optimization_profile = index
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            record("set_input_shape", name, tuple(shape))
            lo, _opt, hi = self.engine.get_tensor_profile_shape(name, self.active_optimization_profile)
            if not all(a <= s <= c for a, s, c in zip(lo, shape, hi, strict=True)):
                return False  # real TRT logs an error and returns False outside the active profile
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            batch = next(iter(self.shapes.values()))[0]
            return tuple(batch if d < 0 else d for d in self.engine.get_tensor_shape(name))

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            record("set_tensor_address", name, ptr)
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream: int) -> bool:
            from onnx.reference import ReferenceEvaluator

            record("execute_async_v3", stream)
            feeds = {}
            for name, dtype, _shape, mode in self.engine.io:
                if mode == trt.TensorIOMode.INPUT:
                    if getattr(trt, "cudart", None) is not None:
                        nbytes = int(np.prod(self.shapes[name])) * np.dtype(NP_OF[dtype]).itemsize
                        assert trt.cudart.inside(self.addresses[name], nbytes), f"{name}: buffer too small"
                    feeds[name] = _read(self.addresses[name], self.shapes[name], NP_OF[dtype])
            results = ReferenceEvaluator(self.engine.onnx_bytes).run(None, feeds)
            outputs = [t for t in self.engine.io if t[3] == trt.TensorIOMode.OUTPUT]
            for (name, dtype, _shape, _mode), value in zip(outputs, results, strict=True):
                value = np.ascontiguousarray(value, dtype=NP_OF[dtype])
                assert value.shape == self.get_tensor_shape(name)
                if getattr(trt, "cudart", None) is not None:  # the output buffer must be a big enough allocation
                    assert trt.cudart.inside(self.addresses[name], value.nbytes), f"{name}: buffer too small"
                _write(self.addresses[name], value)
            return True

    class Runtime:
        def __init__(self, logger: Logger):
            record("Runtime")
            if trt.builder_nullptr:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def deserialize_cuda_engine(self, data: bytes):
            record("deserialize_cuda_engine", len(data))
            if not data.startswith(PLAN_MAGIC):
                return None
            header_line, onnx_bytes = data[len(PLAN_MAGIC):].split(b"\n", 1)
            header = json.loads(header_line)
            if header["version"] != version:
                return None
            return Engine(header, onnx_bytes)

    for cls in (Logger, Builder, OnnxParser, Runtime):
        setattr(trt, cls.__name__, cls)
    trt.ILogger = Logger
    return trt


# ---------------------------------------------------------------- fake cuda-python runtime (cuda.bindings.runtime)
class FakeStream:
    def __init__(self, handle: int):
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


def make_fake_cudart(devices: int = 1, name: str = "Orin", capability: tuple[int, int] = (8, 7),
                     count_error: bool = False) -> types.SimpleNamespace:
    """A `cuda.bindings.runtime` stand-in. Device memory is real host memory (ctypes buffers) so copies are checked
    against the allocations: a copy outside an allocated buffer fails the test."""
    cuda_error = enum.Enum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInsufficientDriver": 35,
                                           "cudaErrorInvalidValue": 1})
    memcpy_kind = enum.Enum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    ok = cuda_error.cudaSuccess
    rt = types.SimpleNamespace(cudaError_t=cuda_error, cudaMemcpyKind=memcpy_kind, calls=[], allocations={},
                               streams=[])

    def record(*call: Any) -> None:
        rt.calls.append(call)

    def inside(ptr: int, n: int) -> bool:
        return any(base <= ptr and ptr + n <= base + len(buf) for base, buf in rt.allocations.items())

    def get_device_count():
        record("cudaGetDeviceCount")
        return (cuda_error.cudaErrorInsufficientDriver, 0) if count_error else (ok, devices)

    def get_device_properties(i: int):
        record("cudaGetDeviceProperties", i)
        props = types.SimpleNamespace(name=name.encode() + b"\x00" * (256 - len(name)), major=capability[0],
                                      minor=capability[1])
        return ok, props

    def malloc(n: int):
        buf = ctypes.create_string_buffer(n)
        ptr = ctypes.addressof(buf)
        rt.allocations[ptr] = buf
        record("cudaMalloc", n)
        return ok, ptr

    def free(ptr: int):
        record("cudaFree", ptr)
        return (ok,) if rt.allocations.pop(int(ptr), None) is not None else (cuda_error.cudaErrorInvalidValue,)

    def memcpy_async(dst: int, src: int, n: int, kind, stream):
        record("cudaMemcpyAsync", kind.name, n)
        device = dst if kind == memcpy_kind.cudaMemcpyHostToDevice else src
        assert inside(int(device), n), "copy outside an allocated device buffer"
        assert stream in rt.streams
        ctypes.memmove(int(dst), int(src), n)
        return (ok,)

    def stream_create():
        stream = FakeStream(1000 + len(rt.streams))
        rt.streams.append(stream)
        record("cudaStreamCreate")
        return ok, stream

    def stream_sync(stream):
        record("cudaStreamSynchronize", int(stream))
        return (ok,)

    def stream_destroy(stream):
        record("cudaStreamDestroy", int(stream))
        rt.streams.remove(stream)
        return (ok,)

    def set_device(i: int):
        record("cudaSetDevice", i)
        return (ok,) if i < devices else (cuda_error.cudaErrorInvalidValue,)

    rt.inside = inside
    rt.cudaGetDeviceCount = get_device_count
    rt.cudaGetDeviceProperties = get_device_properties
    rt.cudaMalloc = malloc
    rt.cudaFree = free
    rt.cudaMemcpyAsync = memcpy_async
    rt.cudaStreamCreate = stream_create
    rt.cudaStreamSynchronize = stream_sync
    rt.cudaStreamDestroy = stream_destroy
    rt.cudaSetDevice = set_device
    rt.cudaGetErrorName = lambda err: (ok, err.name.encode())
    rt.called = lambda call: [c for c in rt.calls if c[0] == call]
    return rt


def _read(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(ptr, n), dtype=dtype).reshape(shape).copy()


def _write(ptr: int, value: np.ndarray) -> None:
    ctypes.memmove(ptr, value.ctypes.data, value.nbytes)
