"""Fake `tensorrt` modules generated from the REAL TensorRT API surface, and a fake cuda-python runtime.

The enums (members and values), the module's dtype aliases and the nested enums come from the real bindings of
the same generation (tests/real_tensorrt.py reads TensorRT 10.3 and 11.4 through stub libraries). The fake classes
add only what the real ones cannot do on a machine without a GPU: the parser reads the ONNX file (one layer per
node, extra layers named `<node>_<n>` as onnx-tensorrt does, Q/DQ types TensorRT rejects refused), a plan embeds
the ONNX and the engine runs it with onnx.reference, reading and writing the "device" buffers the fake cudart
allocated (real host memory).

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
        self.cudart = None  # a fake cudart: the engine then checks its I/O addresses are big enough allocations
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
    "ReduceMax": ["REDUCE"], "ReduceMin": ["REDUCE"],
}
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
    class ICudaEngine(Checked):
        def __init__(self, header: dict, onnx_bytes: bytes):
            self._header, self._onnx = header, onnx_bytes
            self._io = [(n, E.DataType[d], tuple(s), E.TensorIOMode.INPUT) for n, d, s in header["inputs"]]
            self._io += [(n, E.DataType[d], tuple(s), E.TensorIOMode.OUTPUT) for n, d, s in header["outputs"]]

        num_io_tensors = property(lambda self: len(self._io))
        num_optimization_profiles = property(lambda self: len(self._header["profiles"]))

        def _find(self, name: str):
            return next(t for t in self._io if t[0] == name)

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
            self._profile = 0
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}

        active_optimization_profile = property(lambda self: self._profile)

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            record("set_optimization_profile_async", profile_index, stream_handle)
            if ctl.fail_profile_switch or not 0 <= profile_index < self._engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")  # pyCore.cpp: never returns False
            self._profile = profile_index
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            record("set_input_shape", name, tuple(shape))
            lo, _opt, hi = self._engine._header["profiles"][self._profile][name]
            if not all(a <= s <= c for a, s, c in zip(lo, shape, hi, strict=True)):
                return False  # TensorRT logs an error and returns False outside the active profile
            self._shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str):
            batch = next(iter(self._shapes.values()))[0]
            return tuple(batch if d < 0 else d for d in self._engine._find(name)[2])

        def set_tensor_address(self, name: str, memory: int) -> bool:
            record("set_tensor_address", name, memory)
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            from onnx.reference import ReferenceEvaluator

            record("execute_async_v3", stream_handle)
            rt = ctl.cudart
            feeds = {}
            for name, dtype, _shape, mode in self._engine._io:
                if mode == E.TensorIOMode.INPUT:
                    nbytes = int(np.prod(self._shapes[name])) * np.dtype(numpy_of(dtype)).itemsize
                    if rt is not None:
                        assert rt.inside(self._addresses[name], nbytes, device=True), f"{name}: not device memory"
                    feeds[name] = _read(self._addresses[name], self._shapes[name], numpy_of(dtype))
            results = ReferenceEvaluator(self._engine._onnx).run(None, feeds)
            outputs = [t for t in self._engine._io if t[3] == E.TensorIOMode.OUTPUT]
            for (name, dtype, _shape, _mode), value in zip(outputs, results, strict=True):
                value = np.ascontiguousarray(value, dtype=numpy_of(dtype))
                assert value.shape == self.get_tensor_shape(name)
                if rt is not None:
                    assert rt.inside(self._addresses[name], value.nbytes, device=True), f"{name}: buffer too small"
                _write(self._addresses[name], value)
            return True

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
            return ICudaEngine._make(header, onnx_bytes)

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
def make_fake_cudart(devices: int = 1, name: str = "Orin", capability: tuple[int, int] = (8, 7),
                     count_error: bool = False, driver_cuda: int = 12060, runtime_cuda: int | None = None
                     ) -> types.SimpleNamespace:
    """A `cuda.bindings.runtime` stand-in whose enums are the real module's. Device and pinned host memory are real
    host memory (ctypes buffers), so copies are checked against the allocations they claim to use."""
    from cuda.bindings import runtime as real

    ok = real.cudaError_t.cudaSuccess
    rt = types.SimpleNamespace(cudaError_t=real.cudaError_t, cudaMemcpyKind=real.cudaMemcpyKind, calls=[],
                               allocations={}, pinned={}, streams=[])
    h2d, d2h = real.cudaMemcpyKind.cudaMemcpyHostToDevice, real.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def record(*call: Any) -> None:
        rt.calls.append(call)

    def inside(ptr: int, n: int, device: bool = True) -> bool:
        pool = rt.allocations if device else rt.pinned
        return any(base <= ptr and ptr + n <= base + len(buf) for base, buf in pool.items())

    def cudaGetDeviceCount():  # noqa: N802 - the real names
        record("cudaGetDeviceCount")
        return (real.cudaError_t.cudaErrorInsufficientDriver, None) if count_error else (ok, devices)

    def cudaGetDeviceProperties(device):  # noqa: N802
        record("cudaGetDeviceProperties", device)
        props = types.SimpleNamespace(name=name.encode() + b"\x00" * (256 - len(name)), major=capability[0],
                                      minor=capability[1])
        return ok, props

    def _alloc(pool: dict, size: int) -> int:
        buf = ctypes.create_string_buffer(size)
        ptr = ctypes.addressof(buf)
        pool[ptr] = buf
        return ptr

    def cudaMalloc(size):  # noqa: N802
        record("cudaMalloc", size)
        return ok, _alloc(rt.allocations, size)

    def cudaMallocHost(size):  # noqa: N802
        record("cudaMallocHost", size)
        return ok, _alloc(rt.pinned, size)

    def cudaFree(devPtr):  # noqa: N802, N803
        record("cudaFree", devPtr)
        return (ok,) if rt.allocations.pop(int(devPtr), None) is not None else (real.cudaError_t.cudaErrorInvalidValue,)

    def cudaFreeHost(ptr):  # noqa: N802
        record("cudaFreeHost", ptr)
        return (ok,) if rt.pinned.pop(int(ptr), None) is not None else (real.cudaError_t.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(dst, src, count, kind, stream):  # noqa: N802
        record("cudaMemcpyAsync", kind.name, count, inside(int(src if kind == h2d else dst), count, device=False))
        device = dst if kind == h2d else src
        assert kind in (h2d, d2h), kind
        assert inside(int(device), count), "copy outside an allocated device buffer"
        assert stream in rt.streams
        ctypes.memmove(int(dst), int(src), count)
        return (ok,)

    def cudaStreamCreate():  # noqa: N802
        stream = FakeStream(1000 + len(rt.streams))
        rt.streams.append(stream)
        record("cudaStreamCreate")
        return ok, stream

    def cudaStreamSynchronize(stream):  # noqa: N802
        record("cudaStreamSynchronize", int(stream))
        return (ok,)

    def cudaStreamDestroy(stream):  # noqa: N802
        record("cudaStreamDestroy", int(stream))
        rt.streams.remove(stream)
        return (ok,)

    def cudaSetDevice(device):  # noqa: N802
        record("cudaSetDevice", device)
        return (ok,) if device < devices else (real.cudaError_t.cudaErrorInvalidValue,)

    def cudaDriverGetVersion():  # noqa: N802
        return (real.cudaError_t.cudaErrorInsufficientDriver, 0) if count_error else (ok, driver_cuda)

    def cudaRuntimeGetVersion():  # noqa: N802
        return ok, runtime_cuda if runtime_cuda is not None else driver_cuda

    def cudaGetErrorName(error):  # noqa: N802
        return ok, error.name.encode()

    for fn in (cudaGetDeviceCount, cudaGetDeviceProperties, cudaMalloc, cudaMallocHost, cudaFree, cudaFreeHost,
               cudaMemcpyAsync, cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy, cudaSetDevice,
               cudaDriverGetVersion, cudaRuntimeGetVersion, cudaGetErrorName):
        setattr(rt, fn.__name__, fn)
    rt.inside = inside
    rt.called = lambda call: [c for c in rt.calls if c[0] == call]
    return rt


FAKE_CUDART_FUNCTIONS = ("cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaMalloc", "cudaMallocHost", "cudaFree",
                         "cudaFreeHost", "cudaMemcpyAsync", "cudaStreamCreate", "cudaStreamSynchronize",
                         "cudaStreamDestroy", "cudaSetDevice", "cudaDriverGetVersion", "cudaRuntimeGetVersion",
                         "cudaGetErrorName")


class FakeStream:
    """cudaStream_t: `int(stream)` is its handle."""

    def __init__(self, handle: int):
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


def _read(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(ptr, n), dtype=dtype).reshape(shape).copy()


def _write(ptr: int, value: np.ndarray) -> None:
    ctypes.memmove(ptr, value.ctypes.data, value.nbytes)


__all__ = ["FAKE_CLASSES", "FAKE_CUDART_FUNCTIONS", "FakeEnum", "PLAN_MAGIC", "VERSIONS", "accepts", "check_call",
           "make_fake_cudart", "make_fake_trt", "plan_header", "qdq_refusal", "real_member", "real_surface"]
