"""Fake `tensorrt` modules generated from the REAL TensorRT API surface, and a fake cuda-python runtime.

The enums (members and values), the module's dtype aliases and the nested enums come from the real bindings of
the same generation (tests/real_tensorrt.py reads TensorRT 10.3 and 11.4 through stub libraries). The fake classes
add only what the real ones cannot do on a machine without a GPU: the parser reads the ONNX file (one layer per
node, extra layers named `<node>_<n>` as onnx-tensorrt does, Q/DQ types TensorRT rejects refused), a plan embeds
the ONNX and the engine runs it with onnx.reference, reading and writing the "device" buffers the fake cudart
allocated (real host memory). The fake CUDA runtime and execution context model behaviour (see their comments):
per-thread current devices, memory and streams tagged with their device, copies and launches queued on their
stream until it is synchronized, and what TensorRT refuses.

Every fake object is held against the real API while the code under test uses it: a public attribute that the real
class of that generation does not have raises AttributeError (as pybind11 does), property writes need a real
setter, and every method call and constructor is checked against the real pybind signatures: argument count,
keyword names and argument types; return values are checked against the declared return type. The fake
cuda-python runtime takes its enums from the real `cuda.bindings.runtime` and its functions are checked against
the real signatures in tests/test_tensorrt_conformance.py.

Test controls that do not exist in TensorRT live in `trt.fake` (a `FakeControls`), never on the module itself.
"""

from __future__ import annotations

import ctypes
import enum
import json
import threading
import types
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import real_tensorrt

PLAN_MAGIC = b"FAKETRT\n"
TIMING_MAGIC = b"FAKETC:"
VERSIONS = {major: version for major, (_, version) in real_tensorrt.WHEELS.items()}  # what the fakes come from


def plan_header(plan: bytes) -> dict:
    """What a fake plan records of its build: TensorRT version, the builder config's final flags, profiles, ..."""
    assert plan.startswith(PLAN_MAGIC), "not a fake plan"
    return json.loads(plan[len(PLAN_MAGIC):].split(b"\n", 1)[0])


@cache
def real_surface(major: int) -> dict:
    """The real API surface of TensorRT `major` (10 or 11), prepared on first use."""
    return real_tensorrt.surface(real_tensorrt.ensure(major))


# ------------------------------------------------------------------------------------------ checking against the API
def _short(type_name: str) -> str:
    return type_name.replace("tensorrt_bindings.tensorrt.", "").replace("tensorrt.", "").strip()


def real_member(api: dict, cls: str, name: str) -> dict | None:
    """The real member `cls.name` (searching the real bases too), or None."""
    seen = [cls]
    while seen:
        current = seen.pop(0)
        info = api["classes"].get(current)
        if info is None:
            continue
        if name in info["members"]:
            return info["members"][name]
        seen += info["bases"]
    return None


def _is_instance_of_real(api: dict, value: Any, cls: str) -> bool:
    real = getattr(type(value), "_real", None)
    if real is None:
        return False
    todo = [real]
    while todo:
        current = todo.pop()
        if current == cls:
            return True
        todo += api["classes"].get(current, {}).get("bases", [])
    return False


def _int_like(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, enum.Enum))


def accepts(api: dict, type_name: str, value: Any, *, nullable: bool = False) -> bool:
    """Whether pybind11 would accept `value` for a parameter (or return) declared as `type_name`."""
    t = _short(type_name)
    if value is None:
        return nullable or t in ("None", "object")
    if t in ("int", "typing.SupportsInt"):
        return _int_like(value)
    if t in ("float", "typing.SupportsFloat"):
        return _int_like(value) or isinstance(value, (float, np.floating))
    if t == "bool":
        return isinstance(value, (bool, np.bool_))
    if t == "str":
        return isinstance(value, str)
    if t in ("tuple", "list", "Dims") or t.startswith(("List[", "list[", "tuple[")):
        if t.startswith(("List[", "list[")) and "Dims" in t:
            return isinstance(value, (list, tuple)) and all(accepts(api, "Dims", v) for v in value)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            return False
        return all(_int_like(v) for v in value)
    if t in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer"):
        return isinstance(value, (bytes, bytearray, memoryview))
    enums = {**api["enums"], **{f"{c}.{m}": v["members"] for c, info in api["classes"].items()
                                 for m, v in info["members"].items() if v["kind"] == "enum"}}
    if t in enums:
        return isinstance(value, FakeEnum) and type(value).__name__ == t.split(".")[-1] and value.name in enums[t]
    if t in api["classes"]:
        return _is_instance_of_real(api, value, t)
    return True  # types the surface does not name (e.g. nvonnxparser::IParserError): not checked


def check_call(api: dict, cls: str, method: str, signatures: list[dict], args: tuple, kwargs: dict) -> dict:
    """The real signature that (args, kwargs) bind to, or TypeError like pybind11's "incompatible arguments"."""
    problems = []
    for sig in signatures:
        params = sig["params"]
        if len(args) > len(params):
            problems.append(f"{len(args)} positional arguments for {len(params)} parameters")
            continue
        bound = dict(zip((p["name"] for p in params), args, strict=False))
        unknown = [k for k in kwargs if k not in {p["name"] for p in params} or k in bound]
        if unknown:
            problems.append(f"unexpected keyword(s) {unknown}")
            continue
        bound.update(kwargs)
        missing = [p["name"] for p in params if p["name"] not in bound and not p["default"]]
        if missing:
            problems.append(f"missing {missing}")
            continue
        wrong = [p["name"] for p in params if p["name"] in bound and not accepts(api, p["type"], bound[p["name"]])]
        if wrong:
            problems.append(f"argument(s) {wrong} of the wrong type")
            continue
        return sig
    shown = "; ".join(f"({', '.join(p['name'] + ': ' + _short(p['type']) for p in s['params'])})"
                      for s in signatures)
    raise TypeError(f"{cls}.{method}(): incompatible function arguments in TensorRT {api['version']}: "
                    f"{'; '.join(problems)}. Supported: {shown}")


class Checked:
    """Base of fake TensorRT objects: held against the real class `_real` of the generation in `_api`."""

    _real = ""
    _api: dict = {}

    def __new__(cls, *args: Any, **kwargs: Any):
        init = real_member(cls._api, cls._real, "__init__")
        if init is None or not init.get("signatures"):
            raise TypeError(f"tensorrt.{cls._real}: No constructor defined!")
        check_call(cls._api, cls._real, "__init__", init["signatures"], args, kwargs)
        return object.__new__(cls)

    @classmethod
    def _make(cls, *args: Any, **kwargs: Any):
        """Internal construction by the fakes themselves (real objects come from factories)."""
        obj = object.__new__(cls)
        obj.__init__(*args, **kwargs)
        return obj

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        cls = type(self)
        member = real_member(cls._api, cls._real, name)
        if member is None:
            raise AttributeError(f"'tensorrt.{cls._real}' object has no attribute '{name}' "
                                 f"(TensorRT {cls._api['version']})")
        value = object.__getattribute__(self, name)
        if member["kind"] == "method" and callable(value):
            return _CheckedMethod(cls._api, cls._real, name, member["signatures"], value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            cls = type(self)
            member = real_member(cls._api, cls._real, name)
            if member is None or member["kind"] != "property" or not member["set"]:
                raise AttributeError(f"'tensorrt.{cls._real}' object attribute '{name}' cannot be set "
                                     f"(TensorRT {cls._api['version']})")
        object.__setattr__(self, name, value)


class _CheckedMethod:
    def __init__(self, api: dict, cls: str, name: str, signatures: list[dict], fn):
        self._api, self._cls, self._name, self._signatures, self._fn = api, cls, name, signatures, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sig = check_call(self._api, self._cls, self._name, self._signatures, args, kwargs)
        result = self._fn(*args, **kwargs)
        returns = sig["returns"]
        nullable = _short(returns) in self._api["classes"]  # pybind11 returns None for a null pointer
        if not accepts(self._api, returns, result, nullable=nullable):
            raise AssertionError(f"fake {self._cls}.{self._name} returned {type(result).__name__}; the real one "
                                 f"returns {_short(returns)}")
        return result


class FakeEnum(enum.Enum):
    """A pybind11 enum: `int(member)` works, arithmetic does not."""

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return int(self.value)


def _enum(name: str, members: dict[str, int]) -> type[FakeEnum]:
    return FakeEnum(name, sorted(members.items(), key=lambda kv: kv[1]))


class FakeControls:
    """Switches and records of a fake module; not part of TensorRT's API."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.no_gpu = False  # Builder/Runtime raise "factory function returned nullptr" (no usable CUDA device)
        self.fail_build = False  # build_serialized_network returns None
        self.fail_profile_switch = False  # set_optimization_profile_async raises as the binding does on failure
        self.cudart = None  # a fake cudart: the engine's launches are queued on its streams and checked
        self.log: list[tuple[str, str]] = []  # (severity, message) TensorRT's logger would get from the runtime
        self.lock = threading.Lock()

    def record(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def called(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


# The onnx-tensorrt parser's layers per ONNX op (extra layers of one node are named `<node>_<n>`).
OP_LAYERS = {
    "LayerNormalization": ["NORMALIZATION"], "Softmax": ["SOFTMAX"], "MatMul": ["MATRIX_MULTIPLY"],
    "Gemm": ["MATRIX_MULTIPLY", "CONSTANT", "ELEMENTWISE"], "Conv": ["CONVOLUTION"], "Add": ["ELEMENTWISE"],
    "Sub": ["ELEMENTWISE"], "Mul": ["ELEMENTWISE"], "Div": ["ELEMENTWISE"], "Pow": ["ELEMENTWISE"],
    "Sqrt": ["UNARY"], "Exp": ["UNARY"], "Erf": ["UNARY"], "Relu": ["ACTIVATION"], "Sigmoid": ["ACTIVATION"],
    "Gelu": ["ACTIVATION"], "Reshape": ["SHUFFLE"], "Transpose": ["SHUFFLE"], "Flatten": ["SHUFFLE"],
    "Concat": ["CONCATENATION"], "Gather": ["GATHER"], "Slice": ["SLICE"], "Shape": ["SHAPE"], "Cast": ["CAST"],
    "QuantizeLinear": ["QUANTIZE"], "DequantizeLinear": ["DEQUANTIZE"], "Constant": ["CONSTANT"],
    "Identity": ["IDENTITY"], "Expand": ["SLICE"], "Clip": ["ACTIVATION"], "Squeeze": ["SHUFFLE"],
    "Unsqueeze": ["SHUFFLE"], "ReduceL2": ["REDUCE", "UNARY"], "ReduceMean": ["REDUCE"], "ReduceSum": ["REDUCE"],
    "ReduceMax": ["REDUCE"], "ReduceMin": ["REDUCE"], "Neg": ["UNARY"], "Split": ["SLICE"],
    "ConstantOfShape": ["FILL"],  # EVA's rotary embeddings (onnx-tensorrt operators.md: all three supported)
    "BatchNormalization": ["SCALE"], "GlobalAveragePool": ["REDUCE"], "AveragePool": ["POOLING"],
    "MaxPool": ["POOLING"], "Range": ["FILL"],  # convolutional students (FastViT's attention pre-norm, pools)
    # --frame-input's in-graph resize (export/frame.py): onnx-tensorrt imports Round/Abs as IUnaryLayer, Min/Max/Less
    # as IElementWiseLayer, Where as ISelectLayer, Resize as IResizeLayer (docs/operators.md)
    "Round": ["UNARY"], "Abs": ["UNARY"], "Min": ["ELEMENTWISE"], "Max": ["ELEMENTWISE"], "Less": ["ELEMENTWISE"],
    "Where": ["SELECT"], "Resize": ["RESIZE"],
}


def resize_refusal(node) -> str | None:
    """What onnx-tensorrt's importResize refuses that a frame graph may hold: antialias=1 (TensorRT 10 reports
    `(antialias == 0) && "Antialiasing is not supported currently."`, NVIDIA/TensorRT#3560; IResizeLayer in
    NvInfer.h 10.3 and 11.1 has no antialias setting)."""
    if any(a.name == "antialias" and a.i for a in node.attribute):
        return 'Assertion failed: (antialias == 0) && "Antialiasing is not supported currently."'
    return None
# What TensorRT's Q/DQ take (onnx-tensorrt docs/operators.md; FP4 in the parser of 11)
QDQ_TYPES = {10: {"INT8", "FLOAT8E4M3FN", "INT4"}, 11: {"INT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"}}


def qdq_refusal(node, inits: dict, quantized: dict[str, str | None], major: int) -> str | None:
    """What onnx-tensorrt's QuantDequantLinearHelper (onnxOpImporters.cpp) refuses in a Q/DQ node, None if nothing;
    records a QuantizeLinear's output type in `quantized`. The type is the zero point's, else `output_dtype`, else
    INT8 (not ONNX's UINT8). The 10.3 parser refuses a UINT8 zero point, 11's reads it as INT8 (a warning; only its
    DLA flag keeps UINT8); both refuse `output_dtype` unlike the zero point's type and a DequantizeLinear of UINT8."""
    from onnx import TensorProto

    name = TensorProto.DataType.Name
    allowed = QDQ_TYPES[major]
    if node.op_type == "DequantizeLinear":
        data = node.input[0]
        dtype = quantized.get(data) or (name(inits[data].data_type) if data in inits else None)
        if dtype is not None and dtype not in allowed:
            return f"Assertion failed: ... DequantizeLinear input must be of type INT8, FP8 or INT4, not {dtype}"
        return None
    wanted = next((name(a.i) for a in node.attribute if a.name == "output_dtype"), None)
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
    dtype = wanted or "INT8"
    if zp is not None:
        dtype = name(inits[zp].data_type) if zp in inits else None
        if wanted and dtype and wanted != dtype:
            return f"Mismatch between attribute output_dtype {wanted} and zero-point data type {dtype}."
        if dtype == "UINT8" and major == 10:
            return "Found invalid input type of UINT8"
        dtype = "INT8" if dtype == "UINT8" else dtype
    if dtype is not None and dtype not in allowed:
        return f"TensorRT only allows FP8, INT8, INT4 and FP4 quantization. The specified quantization type is {dtype}."
    quantized[node.output[0]] = dtype
    return None


def make_fake_trt(version: str | int = 10) -> types.ModuleType:
    """A fake `tensorrt` of the real generation 10 (10.3.0) or 11 (11.4.0.106); `version` may also name another
    release of a supported generation (e.g. "10.16.1") to test version handling; the API stays that generation's."""
    text = str(version)
    major = int(text.split(".")[0])
    if major not in VERSIONS:
        trt = types.ModuleType("tensorrt")
        trt.__version__ = text  # an unsupported release: only its version can be read
        return trt
    api = {**real_surface(major)}
    api["version"] = VERSIONS[major] if "." not in text else text
    trt = types.ModuleType("tensorrt")
    trt.__version__ = api["version"]
    trt.fake = ctl = FakeControls()
    for name, members in api["enums"].items():
        setattr(trt, name, _enum(name, members))
    for name, value in api["values"].items():
        owner = getattr(trt, value["enum"], None)
        if owner is not None:
            setattr(trt, name, owner[value["member"]])
    E = types.SimpleNamespace(**{n: getattr(trt, n) for n in api["enums"]})
    record = ctl.record

    def cls(real: str, base: type = Checked, **body: Any) -> type:
        made = type(real, (base,), {"_real": real, "_api": api, **body})
        made.__qualname__ = real
        return made

    # ------------------------------------------------------------------------------------------ logger, errors
    severity = _enum("Severity", api["classes"]["ILogger"]["members"]["Severity"]["members"])

    class Logger(Checked):
        def __init__(self, min_severity=severity.WARNING):
            record("Logger", min_severity.name)
            self._min = min_severity

    Logger = cls("Logger", Logger, Severity=severity, **{m: severity[m] for m in severity.__members__})
    ILogger = cls("ILogger", Severity=severity)

    class ParserError(Checked):
        def __init__(self, node: int, name: str, op: str, desc: str):
            self._node, self._name, self._op, self._desc = node, name, op, desc

        def desc(self) -> str:
            return self._desc

        def node(self) -> int:
            return self._node

        def node_name(self) -> str:
            return self._name

        def node_operator(self) -> str:
            return self._op

        def __str__(self) -> str:  # the format of onnx-tensorrt's error printer
            return (f"In node {self._node} with name: {self._name} and operator: {self._op} "
                    f"(parseGraph): UNSUPPORTED_NODE: {self._desc}")

    ParserError = cls("ParserError", ParserError)

    # ------------------------------------------------------------------------------------------ network
    class ITensor(Checked):
        def __init__(self, name: str, dtype, shape: tuple[int, ...] = ()):
            self._name, self._dtype, self._shape = name, dtype, tuple(shape)

        name = property(lambda self: self._name)
        dtype = property(lambda self: self._dtype)
        shape = property(lambda self: self._shape)

    ITensor = cls("ITensor", ITensor)
    layer_members = set(api["classes"]["ILayer"]["members"])

    class ILayer(Checked):
        def __init__(self, name: str, kind: str, outputs: list):
            self._name, self._type, self._outputs = name, E.LayerType[kind], outputs
            self._precision, self._precision_set, self._output_types = E.DataType.FLOAT, False, {}

        name = property(lambda self: self._name)
        type = property(lambda self: self._type)
        num_outputs = property(lambda self: len(self._outputs))

        def get_output(self, index: int):
            return self._outputs[index]

    if "precision" in layer_members:  # TensorRT 10 (weakly typed)
        def _set_precision(self, dtype) -> None:
            record("layer.precision", self._name, dtype.name)
            self._precision, self._precision_set = dtype, True

        def set_output_type(self, index: int, dtype) -> None:
            if not 0 <= index < len(self._outputs):
                raise IndexError(index)
            record("set_output_type", self._name, index, dtype.name)
            self._output_types[index] = dtype

        ILayer.precision = property(lambda self: self._precision, _set_precision)
        ILayer.precision_is_set = property(lambda self: self._precision_set)
        ILayer.set_output_type = set_output_type
    ILayer = cls("ILayer", ILayer)

    class INetworkDefinition(Checked):
        def __init__(self, flags: int):
            self._flags = flags
            self._layers: list = []
            self._inputs: list = []
            self._outputs: list = []
            self._onnx = b""

        num_layers = property(lambda self: len(self._layers))
        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_layer(self, index: int):
            return self._layers[index]

        def get_input(self, index: int):
            return self._inputs[index]

        def get_output(self, index: int):
            return self._outputs[index]

    INetworkDefinition = cls("INetworkDefinition", INetworkDefinition)

    def onnx_dtype(elem_type: int):
        from onnx import TensorProto

        names = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "HALF", TensorProto.UINT8: "UINT8",
                 TensorProto.INT8: "INT8", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64",
                 TensorProto.BOOL: "BOOL", TensorProto.BFLOAT16: "BF16"}
        return E.DataType[names[elem_type]]

    def dims(value_info) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)

    class OnnxParser(Checked):
        def __init__(self, network, logger):
            record("OnnxParser")
            self._network = network
            self._errors: list = []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, index: int):
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors.clear()

        def parse_from_file(self, model: str) -> bool:
            import onnx

            record("parse_from_file", model)
            proto = onnx.load(model)
            graph = proto.graph
            inits = {t.name: t for t in graph.initializer}
            quantized: dict[str, str | None] = {}
            counter = 0
            for index, node in enumerate(graph.node):
                kinds = OP_LAYERS.get(node.op_type)
                name = node.name or f"node_of_{node.output[0]}"
                if kinds is None:
                    self._errors.append(ParserError._make(index, name, node.op_type,
                                                          f"No importer registered for op: {node.op_type}"))
                    return False
                qdq = node.op_type in ("QuantizeLinear", "DequantizeLinear")
                refused = qdq_refusal(node, inits, quantized, major) if qdq else None
                refused = refused or (resize_refusal(node) if node.op_type == "Resize" else None)
                if refused:
                    self._errors.append(ParserError._make(index, name, node.op_type, refused))
                    return False
                for k, kind in enumerate(kinds):
                    layer_name = name if k == 0 else f"{name}_{counter}"
                    counter += k > 0
                    outs = [ITensor._make(o if k == len(kinds) - 1 else f"{layer_name}_out",
                                          E.DataType.INT64 if node.op_type == "Shape" else E.DataType.FLOAT)
                            for o in node.output]
                    self._network._layers.append(ILayer._make(layer_name, kind, outs))
            self._network._inputs = [ITensor._make(v.name, onnx_dtype(v.type.tensor_type.elem_type), dims(v))
                                     for v in graph.input if v.name not in inits]
            self._network._outputs = [ITensor._make(v.name, onnx_dtype(v.type.tensor_type.elem_type), dims(v))
                                      for v in graph.output]
            self._network._onnx = proto.SerializeToString()
            return True

    OnnxParser = cls("OnnxParser", OnnxParser)

    # ------------------------------------------------------------------------------------------ builder
    class IHostMemory(bytes):
        """The buffer TensorRT returns (a plan, a serialized timing cache): bytes-like, two real properties."""

        _real, _api = "IHostMemory", api

        def __getattribute__(self, name: str) -> Any:
            if not name.startswith("_") and real_member(api, "IHostMemory", name) is None:
                raise AttributeError(f"'tensorrt.IHostMemory' object has no attribute '{name}'")
            return bytes.__getattribute__(self, name)

        nbytes = property(lambda self: len(self))
        dtype = property(lambda self: E.DataType.UINT8)

    class IOptimizationProfile(Checked):
        def __init__(self):
            self._shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the real parameter names
            lo, mid, hi = tuple(min), tuple(opt), tuple(max)
            record("set_shape", input, lo, mid, hi)
            if not (len(lo) == len(mid) == len(hi)) or not all(a <= b <= c for a, b, c in zip(lo, mid, hi,
                                                                                             strict=True)):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            self._shapes[input] = (lo, mid, hi)

        def get_shape(self, input: str) -> list:  # noqa: A002
            return list(self._shapes.get(input, ()))

    IOptimizationProfile = cls("IOptimizationProfile", IOptimizationProfile)

    class ITimingCache(Checked):
        def __init__(self, entries: str):
            self._entries = entries

        def serialize(self):
            record("timing_cache.serialize")
            return IHostMemory(TIMING_MAGIC + api["version"].encode() + b"\n" + (self._entries + "+tactics").encode())

    ITimingCache = cls("ITimingCache", ITimingCache)

    class IBuilderConfig(Checked):
        def __init__(self):
            # TF32 is the one flag a new config has set (NvInfer.h 10.3 and 11.1, BuilderFlag::kTF32: "Enabled by
            # default"); no other flag is documented as on by default
            self._flags: set[str] = {"TF32"}
            self._profiles: list = []
            self._pools: dict[str, int] = {}
            self._timing_cache = None
            self._opt_level = 3

        def _get_opt_level(self) -> int:
            return self._opt_level

        def _set_opt_level(self, value: int) -> None:
            if not _int_like(value):
                raise TypeError("builder_optimization_level takes an int")
            record("builder_optimization_level", value)
            self._opt_level = value

        builder_optimization_level = property(_get_opt_level, _set_opt_level)
        num_optimization_profiles = property(lambda self: len(self._profiles))

        def set_flag(self, flag) -> None:
            record("set_flag", flag.name)
            self._flags.add(flag.name)

        def clear_flag(self, flag) -> None:
            record("clear_flag", flag.name)
            self._flags.discard(flag.name)

        def get_flag(self, flag) -> bool:
            return flag.name in self._flags

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            record("set_memory_pool_limit", pool.name, pool_size)
            self._pools[pool.name] = pool_size

        def add_optimization_profile(self, profile) -> int:
            record("add_optimization_profile", dict(profile._shapes))
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            data = bytes(serialized_timing_cache)
            record("create_timing_cache", data)
            if not data:
                return ITimingCache._make("")
            if not data.startswith(TIMING_MAGIC) or b"\n" not in data:
                return None  # TensorRT logs "deserialization failed" and returns a null cache
            return ITimingCache._make(data.split(b"\n", 1)[1].decode())

        def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
            record("set_timing_cache", cache._entries, ignore_mismatch)
            if cache._entries.startswith("foreign") and not ignore_mismatch:
                return False  # a cache from another device
            self._timing_cache = cache
            return True

        def get_timing_cache(self):
            return self._timing_cache

    IBuilderConfig = cls("IBuilderConfig", IBuilderConfig)

    class Builder(Checked):
        def __init__(self, logger):
            record("Builder")
            if ctl.no_gpu:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags: int = 0):
            record("create_network", flags)
            return INetworkDefinition._make(flags)

        def create_builder_config(self):
            record("create_builder_config")
            return IBuilderConfig._make()

        def create_optimization_profile(self):
            record("create_optimization_profile")
            return IOptimizationProfile._make()

        def build_serialized_network(self, network, config):
            record("build_serialized_network")
            if ctl.fail_build or not network._layers or not config._profiles:
                return None
            profiles = []
            for profile in config._profiles:
                for t in network._inputs:  # every dynamic input needs a shape per profile, matching rank and dims
                    if t.name not in profile._shapes:
                        return None
                    lo, opt, hi = profile._shapes[t.name]
                    if any(len(s) != len(t.shape) for s in (lo, opt, hi)):
                        return None
                    if any(d >= 0 and (a, b, c) != (d, d, d) for d, a, b, c in zip(t.shape, lo, opt, hi,
                                                                                     strict=True)):
                        return None
                profiles.append({k: [list(s) for s in v] for k, v in profile._shapes.items()})
            header = {"version": api["version"], "network_flags": network._flags, "flags": sorted(config._flags),
                      "profiles": profiles, "pools": config._pools, "opt_level": config._opt_level,
                      "fp32_layers": [la.name for la in network._layers
                                      if getattr(la, "_precision_set", False)],
                      "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._inputs],
                      "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network._outputs]}
            return IHostMemory(PLAN_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + network._onnx)

    Builder = cls("Builder", Builder)

    # ------------------------------------------------------------------------------------------ runtime
    # Behaviour from NvInferRuntime.h (10.3 and 11.1) IExecutionContext: setOptimizationProfileAsync must precede
    # setInputShape, which must precede enqueueV3; a shape must agree with the network's static dimensions and lie
    # in the active profile (else an error is logged and false returned); before enqueueV3 every I/O tensor needs a
    # non-null, 256-byte aligned address; enqueueV3 only queues the kernels on the stream, and modifying or releasing
    # the tensors' memory before the stream is synchronized is undefined behaviour; not synchronizing the profile
    # switch's stream with the enqueue stream is undefined behaviour (refused here); the default stream gets a
    # warning and extra synchronizations. An engine's memory lives on the device that was current when it was
    # deserialized: its kernels fault on another device's memory (peer access is never enabled).
    def log(severity: str, message: str) -> None:
        with ctl.lock:
            ctl.log.append((severity, message))

    class ICudaEngine(Checked):
        def __init__(self, header: dict, onnx_bytes: bytes, device: int):
            self._header, self._onnx, self._device = header, onnx_bytes, device
            self._io = [(n, E.DataType[d], tuple(s), E.TensorIOMode.INPUT) for n, d, s in header["inputs"]]
            self._io += [(n, E.DataType[d], tuple(s), E.TensorIOMode.OUTPUT) for n, d, s in header["outputs"]]

        num_io_tensors = property(lambda self: len(self._io))
        num_optimization_profiles = property(lambda self: len(self._header["profiles"]))

        def _find(self, name: str):
            return next((t for t in self._io if t[0] == name), None)

        def get_tensor_name(self, index: int) -> str:
            return self._io[index][0]

        def get_tensor_mode(self, name: str):
            return self._find(name)[3]

        def get_tensor_dtype(self, name: str):
            return self._find(name)[1]

        def get_tensor_shape(self, name: str):
            return self._find(name)[2]

        def get_tensor_profile_shape(self, name: str, profile_index: int):
            return [tuple(s) for s in self._header["profiles"][profile_index][name]]

        def create_execution_context(self, strategy=None):
            record("create_execution_context")
            return IExecutionContext._make(self)

    ICudaEngine = cls("ICudaEngine", ICudaEngine)

    class IExecutionContext(Checked):
        def __init__(self, engine):
            self._engine = engine
            self._profile = 0  # a new context is assigned optimization profile 0
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}
            self._queued: dict[int, int] = {}  # stream handle -> launches not yet run

        active_optimization_profile = property(lambda self: self._profile)

        def _inputs(self) -> list[str]:
            return [t[0] for t in self._engine._io if t[3] == E.TensorIOMode.INPUT]

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            record("set_optimization_profile_async", profile_index, stream_handle)
            busy = [s for s, n in self._queued.items() if n and s != int(stream_handle)]
            if busy:  # undefined behaviour in TensorRT: refused, so that a test sees it
                log("ERROR", f"setOptimizationProfileAsync on stream {int(stream_handle)} while enqueued work on "
                             f"stream(s) {busy} is not synchronized with it")
            if busy or ctl.fail_profile_switch or not 0 <= profile_index < self._engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")  # pyCore.cpp: never returns False
            self._profile = profile_index
            self._shapes.clear()  # input shapes are set after the profile
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            record("set_input_shape", name, tuple(shape))
            if name not in self._inputs():
                log("ERROR", f"IExecutionContext::setInputShape: Error Code 3: API Usage Error ({name} is not an "
                             "input tensor)")
                return False
            static = self._engine._find(name)[2]
            lo, _opt, hi = self._engine._header["profiles"][self._profile][name]
            if len(shape) != len(static) or any(d >= 0 and d != s for d, s in zip(static, shape, strict=True)):
                log("ERROR", f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Static dimension "
                             f"mismatch while setting input shape for {name}. Set dimensions are {list(shape)}. "
                             f"Expected dimensions are {list(static)}.)")
                return False
            if not all(a <= s <= c for a, s, c in zip(lo, shape, hi, strict=True)):
                log("ERROR", f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Parameter check "
                             f"failed: {name} shape {list(shape)} is outside optimization profile {self._profile} "
                             f"[{list(lo)}, {list(hi)}])")
                return False
            self._shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str):
            found = self._engine._find(name)
            if found is None:
                return (-1,)
            if name in self._shapes:
                return self._shapes[name]
            batch = next(iter(self._shapes.values()))[0] if len(self._shapes) == len(self._inputs()) else -1
            return tuple(batch if d < 0 and found[3] == E.TensorIOMode.OUTPUT else d for d in found[2])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            record("set_tensor_address", name, memory)
            if self._engine._find(name) is None:
                return False
            self._addresses[name] = int(memory)
            return True

        def _refuse_enqueue(self) -> str | None:
            missing = [n for n in self._inputs() if n not in self._shapes]
            if missing:
                return f"input shape(s) not set for {missing} (set them after the optimization profile)"
            for name, *_ in self._engine._io:
                if not self._addresses.get(name):
                    return f"Address is not set for {'input' if name in self._inputs() else 'output'} tensor {name}"
                if self._addresses[name] % 256:
                    return f"the address of tensor {name} is not 256-byte aligned"
            return None

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("execute_async_v3", stream_handle)
            why = self._refuse_enqueue()
            if why:
                log("ERROR", f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error ({why}.)")
                return False
            rt = ctl.cudart
            if rt is None:  # no fake CUDA runtime: run at once
                self._run(dict(self._shapes), dict(self._addresses), None)
                return True
            stream = rt.stream_of(stream_handle)
            if stream is None:
                log("ERROR", "IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (invalid resource handle)")
                return False
            if stream.handle == 0:
                log("WARNING", DEFAULT_STREAM_WARNING)
            shapes, addresses, handle = dict(self._shapes), dict(self._addresses), stream.handle
            self._queued[handle] = self._queued.get(handle, 0) + 1

            def work():
                self._queued[handle] -= 1
                return self._run(shapes, addresses, rt, stream.device)

            rt.enqueue(stream, work, set(addresses.values()))
            if stream.handle == 0:  # "additional cudaDeviceSynchronize() calls by TensorRT" (enqueueV3)
                rt.synchronize_device(stream.device)
            return True

        def _run(self, shapes: dict, addresses: dict, rt, device: int = 0):
            """The queued kernels: None, or the CUDA error they end with."""
            from onnx.reference import ReferenceEvaluator

            io = {name: (numpy_of(dtype), mode) for name, dtype, _shape, mode in self._engine._io}
            shapes = {**shapes, **{n: self._output_shape(n, shapes) for n, (_, m) in io.items()
                                   if m == E.TensorIOMode.OUTPUT}}
            if rt is not None:
                for name, (dtype, _mode) in io.items():
                    nbytes = int(np.prod(shapes[name])) * np.dtype(dtype).itemsize
                    if device != self._engine._device or rt.device_of(addresses[name], nbytes) != device:
                        return rt.cudaError_t.cudaErrorIllegalAddress  # another device's memory, or past its end
            feeds = {n: _read(addresses[n], shapes[n], dtype) for n, (dtype, m) in io.items()
                     if m == E.TensorIOMode.INPUT}
            results = ReferenceEvaluator(self._engine._onnx).run(None, feeds)
            outputs = [n for n, (_, m) in io.items() if m == E.TensorIOMode.OUTPUT]
            for name, value in zip(outputs, results, strict=True):
                value = np.ascontiguousarray(value, dtype=io[name][0])
                assert value.shape == shapes[name], (name, value.shape, shapes[name])
                _write(addresses[name], value)
            return None

        def _output_shape(self, name: str, shapes: dict) -> tuple[int, ...]:
            batch = next(iter(shapes.values()))[0]
            return tuple(batch if d < 0 else d for d in self._engine._find(name)[2])

    IExecutionContext = cls("IExecutionContext", IExecutionContext)

    class Runtime(Checked):
        def __init__(self, logger):
            record("Runtime")
            if ctl.no_gpu:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def deserialize_cuda_engine(self, serialized_engine):
            data = bytes(serialized_engine)
            record("deserialize_cuda_engine", len(data))
            if not data.startswith(PLAN_MAGIC):
                return None
            header_line, onnx_bytes = data[len(PLAN_MAGIC):].split(b"\n", 1)
            header = json.loads(header_line)
            if header["version"] != api["version"]:
                return None
            device = ctl.cudart.current_device() if ctl.cudart is not None else 0
            return ICudaEngine._make(header, onnx_bytes, device)

    Runtime = cls("Runtime", Runtime)

    def numpy_of(dtype) -> type:
        return {"FLOAT": np.float32, "HALF": np.float16, "UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32,
                "INT64": np.int64, "BOOL": np.bool_}[dtype.name]

    for made in (Logger, ILogger, ParserError, ITensor, ILayer, INetworkDefinition, OnnxParser, IHostMemory,
                 IOptimizationProfile, ITimingCache, IBuilderConfig, Builder, ICudaEngine, IExecutionContext,
                 Runtime):
        setattr(trt, made.__name__, made)
    return trt


FAKE_CLASSES = ("Logger", "ILogger", "ParserError", "ITensor", "ILayer", "INetworkDefinition", "OnnxParser",
                "IHostMemory", "IOptimizationProfile", "ITimingCache", "IBuilderConfig", "Builder", "ICudaEngine",
                "IExecutionContext", "Runtime")


# ---------------------------------------------------------------- fake cuda-python runtime (cuda.bindings.runtime)
# What it models, from the CUDA runtime's own documentation (the docstrings of cuda.bindings.runtime, and "API
# synchronization behavior" of the CUDA runtime API reference):
# - cudaSetDevice: "Sets device as the current device for the calling host thread" (a per-thread current device,
#   0 until set); memory from cudaMalloc is "physically resident on device", streams are "associated with device",
#   and work launched on a non-NULL stream runs "on the device associated with the stream".
# - a kernel reads and writes only memory of its own device (no peer access is enabled here): anything else is
#   cudaErrorIllegalAddress when the work runs, a sticky error every later call returns.
# - streams are asynchronous: copies and engine launches are queued and run in order when the stream is
#   synchronized; the legacy default stream (0) waits for the device's other (blocking) streams and they for it.
# - cudaMemcpyAsync: from pageable host memory to the device "a stream sync is performed before the copy is
#   initiated" and the source is staged at once; "for transfers from device memory to pageable host memory, the
#   function will return only once the copy has completed"; between pinned memory and the device it is fully
#   asynchronous. A copy may be queued on a stream of another device than the current one.
# - cudaFree "may perform implicit synchronization": a program cannot rely on it, and TensorRT says releasing
#   memory bound to enqueued work before the stream is synchronized is undefined behaviour (NvInferRuntime.h
#   enqueueV3), so freeing memory that queued work still uses is refused (AssertionError: a bug of the caller).
ALIGNMENT = 256  # cudaMalloc's pointers are aligned for any kind of variable; TensorRT needs 256 (setTensorAddress)
DEFAULT_STREAM_WARNING = ("Using default stream in enqueueV3() may lead to performance issues due to additional calls "
                          "to cudaStreamSynchronize() by TensorRT to ensure correct synchronization. Please use "
                          "non-default stream instead.")  # what TensorRT 10 logs (kWARNING)


class FakeStream:
    """cudaStream_t: `int(stream)` is its handle; its queued work runs, in order, when it is synchronized."""

    def __init__(self, handle: int, device: int = 0):
        self.handle, self.device = handle, device
        self.queue: list[tuple[Any, set[int]]] = []  # (work returning None or a cudaError_t, pointers it uses)

    def __int__(self) -> int:
        return self.handle


def make_fake_cudart(devices: int = 1, name: str = "Orin", capability: tuple[int, int] = (8, 7),
                     count_error: bool = False, driver_cuda: int = 12060, runtime_cuda: int | None = None
                     ) -> types.SimpleNamespace:
    """A `cuda.bindings.runtime` stand-in whose enums are the real module's. Device and pinned host memory are real
    host memory (ctypes buffers) tagged with their device; copies and launches are queued on their stream."""
    from cuda.bindings import runtime as real

    err = real.cudaError_t
    ok = err.cudaSuccess
    rt = types.SimpleNamespace(cudaError_t=err, cudaMemcpyKind=real.cudaMemcpyKind, calls=[], device_calls=[],
                               allocations={}, pinned={}, streams=[], sticky=None)
    h2d, d2h = real.cudaMemcpyKind.cudaMemcpyHostToDevice, real.cudaMemcpyKind.cudaMemcpyDeviceToHost
    local, lock = threading.local(), threading.RLock()
    legacy = {d: FakeStream(0, d) for d in range(max(devices, 1))}  # the NULL stream of each device
    keep: dict[int, Any] = {}  # the ctypes buffers behind the pointers

    def current_device() -> int:
        return getattr(local, "device", 0)

    def record(*call: Any) -> None:
        with lock:
            rt.calls.append(call)
            rt.device_calls.append((call[0], current_device()))

    def allocation(ptr: int, n: int, device: bool = True) -> tuple[int, int, int | None] | None:
        """(base, size, device) of the allocation holding [ptr, ptr + n), or None."""
        for base, (size, dev) in (rt.allocations if device else rt.pinned).items():
            if base <= ptr and ptr + n <= base + size:
                return base, size, dev
        return None

    def inside(ptr: int, n: int, device: bool = True) -> bool:
        return allocation(int(ptr), n, device) is not None

    def device_of(ptr: int, n: int) -> int | None:
        """The device whose memory holds [ptr, ptr + n), or None when no device allocation does."""
        found = allocation(int(ptr), n)
        return None if found is None else found[2]

    def stream_of(stream: Any) -> FakeStream | None:
        """The stream a handle names (0: the current device's legacy default stream), or None."""
        handle = int(stream)
        if handle == 0:
            return legacy[current_device()]
        return next((s for s in rt.streams if s.handle == handle), None)

    def flush(stream: FakeStream):
        """Run a stream's queued work in order; the first error is sticky (as a device fault is)."""
        with lock:
            while stream.queue and rt.sticky is None:
                work, _uses = stream.queue.pop(0)
                rt.sticky = work()
            stream.queue.clear()
            return rt.sticky

    def enqueue(stream: FakeStream, work, uses: set[int]) -> None:
        """Queue work on a stream with the legacy default stream's implicit synchronization."""
        with lock:
            if stream.handle == 0:
                for other in rt.streams:
                    if other.device == stream.device:
                        flush(other)
            else:
                flush(legacy[stream.device])
            stream.queue.append((work, set(uses)))

    def synchronize_device(device: int):
        """What cudaDeviceSynchronize does: every stream of `device` runs its queued work."""
        with lock:
            for stream in [legacy[device], *(s for s in rt.streams if s.device == device)]:
                flush(stream)
            return rt.sticky

    def in_use(base: int, size: int) -> bool:
        """Whether work still queued on a stream uses memory in [base, base + size)."""
        return any(base <= p < base + size for s in [*rt.streams, *legacy.values()] for _, uses in s.queue
                   for p in uses)

    def cudaGetDeviceCount():  # noqa: N802 - the real names
        record("cudaGetDeviceCount")
        return (err.cudaErrorInsufficientDriver, None) if count_error else (ok, devices)

    def cudaGetDeviceProperties(device):  # noqa: N802
        record("cudaGetDeviceProperties", device)
        if not 0 <= int(device) < devices:
            return err.cudaErrorInvalidDevice, None
        props = types.SimpleNamespace(name=name.encode() + b"\x00" * (256 - len(name)), major=capability[0],
                                      minor=capability[1])
        return ok, props

    def _alloc(pool: dict, size: int, device: int | None) -> int:
        buf = ctypes.create_string_buffer(int(size) + ALIGNMENT)
        ptr = -(-ctypes.addressof(buf) // ALIGNMENT) * ALIGNMENT
        with lock:
            keep[ptr] = buf
            pool[ptr] = (int(size), device)
        return ptr

    def _free(pool: dict, ptr: Any, what: str):
        ptr = int(ptr)
        with lock:
            if ptr == 0:
                return (ok,)
            if ptr not in pool:
                return (err.cudaErrorInvalidValue,)
            assert not in_use(ptr, pool[ptr][0]), f"{what} of memory that work queued on a stream still uses " \
                                                  "(synchronize first)"
            del pool[ptr]
            keep.pop(ptr, None)
        return (ok,)

    def cudaMalloc(size):  # noqa: N802
        record("cudaMalloc", size)
        if rt.sticky is not None:
            return rt.sticky, None
        return ok, _alloc(rt.allocations, size, current_device())

    def cudaMallocHost(size):  # noqa: N802
        record("cudaMallocHost", size)
        return ok, _alloc(rt.pinned, size, None)  # portable: pinned memory is reachable from every device (UVA)

    def cudaFree(devPtr):  # noqa: N802, N803
        record("cudaFree", devPtr)
        return _free(rt.allocations, devPtr, "cudaFree")

    def cudaFreeHost(ptr):  # noqa: N802
        record("cudaFreeHost", ptr)
        return _free(rt.pinned, ptr, "cudaFreeHost")

    def cudaMemcpyAsync(dst, src, count, kind, stream):  # noqa: N802
        dst, src, count = int(dst), int(src), int(count)
        host = src if kind == h2d else dst
        pinned = inside(host, count, device=False)
        record("cudaMemcpyAsync", kind.name, count, pinned, int(stream))
        if kind not in (h2d, d2h):
            raise NotImplementedError(f"the fake copies only host<->device, not {kind.name}")
        if rt.sticky is not None:
            return (rt.sticky,)
        queue = stream_of(stream)
        if queue is None:
            return (err.cudaErrorInvalidResourceHandle,)
        if not inside(dst if kind == h2d else src, count):
            return (err.cudaErrorInvalidValue,)  # not a device allocation, or past its end
        if pinned:  # fully asynchronous: the bytes move when the stream runs the copy
            enqueue(queue, lambda: _copy(dst, src, count), {dst, src})
            return (ok,)
        flush(queue)  # pageable: the copy waits for the stream, then stages (H2D) or completes (D2H)
        if kind == h2d:
            staged = ctypes.create_string_buffer(ctypes.string_at(src, count), count)
            enqueue(queue, lambda: _copy(dst, ctypes.addressof(staged), count), {dst})
        else:
            _copy(dst, src, count)
        return (rt.sticky or ok,)

    def cudaStreamCreate():  # noqa: N802
        record("cudaStreamCreate")
        with lock:
            stream = FakeStream(999 + len(rt.called("cudaStreamCreate")), current_device())
            rt.streams.append(stream)
        return ok, stream

    def cudaStreamSynchronize(stream):  # noqa: N802
        record("cudaStreamSynchronize", int(stream))
        queue = stream_of(stream)
        if queue is None:
            return (err.cudaErrorInvalidResourceHandle,)
        if queue.handle != 0:
            flush(legacy[queue.device])
        return (flush(queue) or ok,)

    def cudaStreamDestroy(stream):  # noqa: N802
        record("cudaStreamDestroy", int(stream))
        queue = stream_of(stream)
        if queue is None or queue.handle == 0:
            return (err.cudaErrorInvalidResourceHandle,)
        flush(queue)  # queued work still completes; the stream's resources go afterwards
        with lock:
            rt.streams.remove(queue)
        return (ok,)

    def cudaSetDevice(device):  # noqa: N802
        record("cudaSetDevice", device)
        if not 0 <= int(device) < devices:
            return (err.cudaErrorInvalidDevice,)
        local.device = int(device)
        return (ok,)

    def cudaDriverGetVersion():  # noqa: N802
        return (err.cudaErrorInsufficientDriver, 0) if count_error else (ok, driver_cuda)

    def cudaRuntimeGetVersion():  # noqa: N802
        return ok, runtime_cuda if runtime_cuda is not None else driver_cuda

    def cudaGetErrorName(error):  # noqa: N802
        return ok, error.name.encode()

    for fn in (cudaGetDeviceCount, cudaGetDeviceProperties, cudaMalloc, cudaMallocHost, cudaFree, cudaFreeHost,
               cudaMemcpyAsync, cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy, cudaSetDevice,
               cudaDriverGetVersion, cudaRuntimeGetVersion, cudaGetErrorName):
        setattr(rt, fn.__name__, fn)
    # helpers of the fakes (not cuda-python names)
    rt.inside, rt.device_of, rt.stream_of, rt.current_device = inside, device_of, stream_of, current_device
    rt.enqueue, rt.synchronize_device = enqueue, synchronize_device
    rt.called = lambda call: [c for c in rt.calls if c[0] == call]
    return rt


FAKE_CUDART_FUNCTIONS = ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaMalloc", "cudaMallocHost", "cudaFree",
                         "cudaFreeHost", "cudaMemcpyAsync", "cudaStreamCreate", "cudaStreamSynchronize",
                         "cudaStreamDestroy", "cudaSetDevice", "cudaDriverGetVersion", "cudaRuntimeGetVersion",
                         "cudaGetErrorName")


def _read(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(ptr, n), dtype=dtype).reshape(shape).copy()


def _write(ptr: int, value: np.ndarray) -> None:
    ctypes.memmove(ptr, value.ctypes.data, value.nbytes)


def _copy(dst: int, src: int, count: int) -> None:
    ctypes.memmove(dst, src, count)


__all__ = ["DEFAULT_STREAM_WARNING", "FAKE_CLASSES", "FAKE_CUDART_FUNCTIONS", "FakeEnum", "FakeStream", "PLAN_MAGIC",
           "VERSIONS", "accepts", "check_call", "make_fake_cudart", "make_fake_trt", "plan_header", "qdq_refusal",
           "real_member", "real_surface"]
