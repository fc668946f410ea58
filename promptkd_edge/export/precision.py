"""Precision lives in the ONNX graph: a mixed FP16 graph with FP32 islands, and INT8 Q/DQ graphs.

- FP16: LayerNorm, Softmax, the L2 norm and the logits MatMul stay FP32, inputs and outputs stay FP32 (CLIP's
  residual stream overflows FP16 LayerNorm). NVIDIA ModelOpt's AutoCast is used when installed, ONNX Runtime's
  float16 converter otherwise.
- INT8: ONNX Runtime static quantization, QDQ format, calibrated on real images. Only weight-bearing MatMul, Gemm
  and Conv nodes are quantized (the attention's activation x activation MatMuls, LayerNorm, Softmax and the
  head stay float). Two flavours: `cpu` (uint8 activations, ONNX Runtime's fast path on x86 and ARM) and
  `tensorrt` (symmetric int8 activations and weights, what TensorRT's explicit quantization takes).
- FP8: ModelOpt only (TensorRT on SM 8.9+); ONNX Runtime on CPU cannot run it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from promptkd_edge.errors import PkdError

FP32_OPS = ["LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "Pow", "Sqrt", "Erf"]
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


def _load(path: str | os.PathLike):
    import onnx

    return onnx.load(str(path))


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_fp32_nodes: Iterable[str],
            calibration: np.ndarray | None = None, *, use_modelopt: bool | None = None) -> str:
    """Write a mixed-precision FP16 copy of `src` to `dst`; returns the tool used ("modelopt" or "onnxruntime")."""
    import onnx

    keep = list(keep_fp32_nodes)
    if use_modelopt is None:
        use_modelopt = _has_modelopt()
    if use_modelopt:
        from modelopt.onnx.autocast import convert_to_mixed_precision

        model = convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16", keep_io_types=True,
                                           op_types_to_exclude=FP32_OPS, nodes_to_exclude=keep,
                                           calibration_data=calibration, providers=["cpu"])
        tool = "modelopt"
    else:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        with _quiet():
            model = convert_float_to_float16(_load(src), keep_io_types=True,
                                             op_block_list=DEFAULT_OP_BLOCK_LIST + FP32_OPS, node_block_list=keep)
        toposort(model.graph)  # the converter appends its input Casts at the end of the node list
        del model.graph.value_info[:]  # stale intermediate types; the checker re-infers them
        tool = "onnxruntime"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dst))
    return tool


def toposort(graph) -> None:
    """Reorder `graph.node` in place so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise PkdError("the converted graph has a cycle or a dangling input")
        for n in ready:
            available.update(n.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def _has_modelopt() -> bool:
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not usable here
        return False
    return True


def quantizable_nodes(model, exclude: Iterable[str]) -> list[str]:
    """MatMul/Gemm/Conv nodes with a constant weight input (attention's activation MatMuls are left float)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    skip = set(exclude)
    return [n.name for n in model.graph.node
            if n.op_type in QUANTIZED_OPS and n.name not in skip and any(i in constants for i in n.input[1:])]


class _Batches:
    """ONNX Runtime's CalibrationDataReader over an array of model-ready images."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 16):
        self._items = iter([{input_name: images[i:i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # not needed by the MinMax/Percentile calibrators, kept for the protocol
        pass


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray, input_name: str,
                  keep_float_nodes: Iterable[str], target: str = "cpu", method: str = "percentile") -> dict:
    """Static QDQ quantization of `src` into `dst`, calibrated on `calibration` (model-ready inputs)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(calibration) == 0:
        raise PkdError("INT8 calibration needs images; none were found")
    if target not in ("cpu", "tensorrt"):
        raise PkdError(f"unknown int8 target '{target}'")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise PkdError(f"unknown calibration method '{method}'; choose one of {', '.join(methods)}")
    nodes = quantizable_nodes(_load(src), keep_float_nodes)
    symmetric = target == "tensorrt"
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "CalibPercentile": 99.999,
             "CalibMovingAverage": False, "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)}
    with _quiet():
        quantize_static(str(src), str(dst), _Batches(input_name, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes, calibrate_method=methods[method],
                        extra_options=extra)
    import onnx

    onnx.checker.check_model(str(dst), full_check=True)
    return {"tool": "onnxruntime.quantization", "format": "QDQ", "target": target, "calibration_method": method,
            "calibration_images": int(len(calibration)), "quantized_nodes": len(nodes),
            "activations": "int8 symmetric" if symmetric else "uint8", "weights": "int8 per-channel symmetric"}


def quantize_fp8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray,
                 input_name: str) -> dict:
    """FP8 Q/DQ through NVIDIA ModelOpt (needs `pip install nvidia-modelopt[onnx]`)."""
    try:
        from modelopt.onnx.quantization import quantize
    except Exception:  # noqa: BLE001
        raise PkdError("FP8 needs NVIDIA ModelOpt: pip install 'nvidia-modelopt[onnx]' (a separate venv avoids "
                       "its onnx/onnxruntime pins)") from None
    quantize(str(src), quantize_mode="fp8", calibration_data={input_name: calibration}, calibration_method="max",
             calibration_eps=["cpu"], high_precision_dtype="fp16", op_types_to_exclude_fp16=FP32_OPS,
             output_path=str(dst))
    return {"tool": "modelopt", "format": "QDQ", "target": "tensorrt", "calibration_images": int(len(calibration))}


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's converters print and log a lot; keep the terminal for our own progress."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def graph_precision(path: str | os.PathLike) -> str:
    """What a graph computes in: 'int8'/'fp8' when it carries Q/DQ, 'fp16' with FP16 weights, else 'fp32'."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if q:
        fp8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}
        zero_points = {n.input[2] for n in q if len(n.input) > 2}
        types = {i.data_type for i in model.graph.initializer if i.name in zero_points}
        return "fp8" if types & fp8 else "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def path_for(bundle: Path, precision: str) -> Path:
    """Where the graph TensorRT builds from lives in a bundle, per precision."""
    return bundle / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
