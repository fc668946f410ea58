"""What TensorRT will make of an ONNX graph, read before a build: the precision the graph carries (FP16 Casts, Q/DQ
pairs) and whether its Q/DQ pairs are ones TensorRT 10 and 11 take (signed INT8 or FP8, zero point 0)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from promptkd_edge.errors import PkdError, first_line

# What TensorRT's ONNX parser quantizes to (onnx-tensorrt docs/operators.md: DequantizeLinear takes INT8, FP8, INT4,
# and FP4 in newer releases, which the project does not count on for 10.x; zero points must be zero; "UINT8 is only
# supported as network input or output").
QDQ_TYPES = {10: ("INT8", "FLOAT8E4M3FN", "INT4"), 11: ("INT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1")}
SCALE_TYPES = ("FLOAT", "FLOAT16", "BFLOAT16")
WHY_REFUSED = {"INT32": "a quantized bias: quantize without biases for TensorRT",
               "UINT8": "TensorRT quantizes to signed types only: quantize to symmetric int8"}


def graph_precision(onnx_path: str | os.PathLike) -> dict[str, bool]:
    """What precision an ONNX graph carries: {"fp16": float16 initializers/Casts/IO, "qdq": QuantizeLinear nodes}."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        raise PkdError(f"cannot read ONNX {onnx_path}: {first_line(e, with_type=False)}") from None
    f16 = onnx.TensorProto.FLOAT16
    graph = model.graph
    nodes = [*graph.node, *(n for fn in model.functions for n in fn.node)]

    def casts_to_f16(node) -> bool:
        return any((a.name == "to" and a.i == f16) or (a.name == "value" and a.t.data_type == f16)
                   for a in node.attribute)

    fp16 = (any(t.data_type == f16 for t in graph.initializer)
            or any(v.type.tensor_type.elem_type == f16 for v in (*graph.input, *graph.output))
            or any(n.op_type in ("Cast", "Constant") and casts_to_f16(n) for n in nodes))
    return {"fp16": fp16, "qdq": any(n.op_type == "QuantizeLinear" for n in nodes)}


def check_graph_precision(onnx_path: Path, precision: str, api: int) -> None:
    if precision == "fp32":
        return
    found = graph_precision(onnx_path)
    if precision in ("int8", "fp8") and not found["qdq"]:
        if api >= 11:
            raise PkdError(f"{onnx_path.name} has no QuantizeLinear nodes: a {precision} build would silently build "
                           "an FP32 engine (TensorRT 11 is strongly typed); export the precision into the graph first")
        raise PkdError(f"{onnx_path.name} has no QuantizeLinear nodes: {precision} engines are built from a Q/DQ "
                       "graph (no calibrator); export the quantized graph first")
    if precision == "fp16" and api >= 11 and not found["fp16"]:
        raise PkdError(f"{onnx_path.name} has no float16 initializers or Casts: an fp16 build would silently build "
                       "an FP32 engine (TensorRT 11 is strongly typed); export the precision into the graph first")


def tensorrt_quantize_type(node, types: dict[str, int]) -> int:
    """The type TensorRT's ONNX parser gives a QuantizeLinear's output: its zero point's type, else its
    `output_dtype` (opset 21), else INT8, not the ONNX spec's UINT8 (onnx-tensorrt onnxOpImporters.cpp,
    QuantDequantLinearHelper, 10.x and 11: "ONNX default is UINT8, TRT will default to INT8"). UNDEFINED (0) when
    the zero point's type is not known."""
    from onnx import TensorProto

    if len(node.input) > 2 and node.input[2]:
        return types.get(node.input[2], TensorProto.UNDEFINED)
    return _output_dtype(node) or TensorProto.INT8


def _output_dtype(node) -> int:
    """A QuantizeLinear's `output_dtype` attribute (opset 21), 0 (UNDEFINED) without one."""
    return next((a.i for a in node.attribute if a.name == "output_dtype"), 0)


def check_tensorrt_qdq(onnx_path: str | os.PathLike, api: int) -> int:
    """Refuse a graph whose Q/DQ nodes TensorRT `api` cannot parse (e.g. ONNX Runtime's INT32-quantized biases, uint8
    zero points, non-zero zero points) with one line naming the first such node; returns the number of Q/DQ nodes.
    Types are the parser's: a QuantizeLinear without a zero point quantizes to INT8 (tensorrt_quantize_type)."""
    import onnx
    from onnx import numpy_helper

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
        raise PkdError(f"cannot read ONNX {path}: {first_line(e, with_type=False)}") from None
    with contextlib.suppress(Exception):  # without inference, types come from initializers and zero points alone
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)})
    for node in graph.node:  # what TensorRT quantizes to, whatever ONNX's shape inference says (uint8)
        if node.op_type == "QuantizeLinear":
            types[node.output[0]] = tensorrt_quantize_type(node, types)
    allowed = QDQ_TYPES[10 if api < 11 else 11]
    count = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        count += 1
        quantized = node.input[0] if node.op_type == "DequantizeLinear" else node.output[0]
        dtype = onnx.TensorProto.DataType.Name(types.get(quantized, onnx.TensorProto.UNDEFINED))
        where = f"{path.name}: {node.op_type} {node.name or quantized!r}"
        if dtype not in allowed and dtype != "UNDEFINED":  # a type inference cannot tell is left to the parser
            what = f" ({WHY_REFUSED[dtype]})" if dtype in WHY_REFUSED else ""
            raise PkdError(f"{where} carries {dtype}{what}; TensorRT {api} quantizes only to "
                           f"{', '.join(allowed)}")
        wanted = _output_dtype(node) if node.op_type == "QuantizeLinear" else 0
        if wanted and dtype != "UNDEFINED" and wanted != types[quantized]:  # only with a zero point
            raise PkdError(f"{where} has output_dtype {onnx.TensorProto.DataType.Name(wanted)} but a {dtype} zero "
                           "point; TensorRT's parser refuses the mismatch: make them the same type")
        scale = inits.get(node.input[1]) if len(node.input) > 1 else None
        if scale is not None and onnx.TensorProto.DataType.Name(scale.data_type) not in SCALE_TYPES:
            raise PkdError(f"{where} has a {onnx.TensorProto.DataType.Name(scale.data_type)} scale; TensorRT "
                           f"takes {', '.join(SCALE_TYPES)}")
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and numpy_helper.to_array(zp).astype("float64").any():
            raise PkdError(f"{where} has a non-zero zero point; TensorRT takes symmetric quantization only")
    return count
