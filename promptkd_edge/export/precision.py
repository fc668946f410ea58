"""Precision lives in the ONNX graph: a mixed FP16 graph with FP32 islands, and INT8 Q/DQ graphs.

- FP16: LayerNorm, Softmax, the L2 norm and the logits MatMul stay FP32, inputs and outputs stay FP32 (CLIP's
  residual stream overflows FP16 LayerNorm). NVIDIA ModelOpt's AutoCast is used when installed, ONNX Runtime's
  float16 converter otherwise.
- INT8: ONNX Runtime static quantization, QDQ format, calibrated on real images. Only weight-bearing MatMul, Gemm
  and Conv nodes are quantized (the attention's activation x activation MatMuls, LayerNorm, Softmax and the
  head stay float). Two flavours: `cpu` (uint8 activations, ONNX Runtime's fast path on x86 and ARM) and
  `tensorrt` (symmetric int8 activations and weights, biases left float: TensorRT's DequantizeLinear takes no
  INT32).
- TensorRT graphs (`quantize_for_tensorrt`): the same nodes through ModelOpt's quantizer when installed, INT8 or
  FP8 (TensorRT on SM 8.9+; ONNX Runtime on CPU cannot run it); FP16 wherever not quantized for TensorRT 11.

ModelOpt is always handed a private copy of the graph: its quantizer rewrites the file it is given (shape
inference in place), which would change a bundle's FP32 master. Its node exclusions are regular expressions
matched from the start of the name, so names are escaped and anchored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from promptkd_edge.errors import PkdError

FP32_OPS = ["LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "Pow", "Sqrt", "Erf"]
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


def _load(path: str | os.PathLike):
    import onnx

    return onnx.load(str(path))


AUTOCAST_IMAGES = 8  # AutoCast runs its calibration as one batch and keeps every activation of it


def exact_names(names: Iterable[str]) -> list[str]:
    """ModelOpt's node exclusions are regular expressions matched from the start (`re.match`): escape and anchor
    each name, so `node_matmul_1` does not also exclude `node_matmul_10` and `head.logits+scale` matches itself."""
    return [re.escape(n) + "$" for n in names]


@contextlib.contextmanager
def private_copy(src: str | os.PathLike) -> Iterator[Path]:
    """`src` copied into a temporary folder, for tools that rewrite the file they are given."""
    with tempfile.TemporaryDirectory(prefix="pkd-onnx-") as tmp:
        copy = Path(tmp) / Path(src).name
        shutil.copyfile(src, copy)
        data = Path(str(src) + ".data")
        if data.is_file():
            shutil.copyfile(data, Path(tmp) / data.name)
        yield copy


def graph_input_name(path: str | os.PathLike) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_fp32_nodes: Iterable[str],
            calibration: np.ndarray | None = None, *, input_name: str | None = None,
            use_modelopt: bool | None = None) -> str:
    """Write a mixed-precision FP16 copy of `src` to `dst`; returns the tool used ("modelopt" or "onnxruntime").

    With ModelOpt, AutoCast also keeps FP32 the nodes whose activations on up to 8 calibration images exceed
    its data_max (512), CLIP's large residual activations among them.
    """
    import onnx

    keep = list(keep_fp32_nodes)
    if use_modelopt is None:
        use_modelopt = has_modelopt()
    if use_modelopt:
        from modelopt.onnx.autocast import convert_to_mixed_precision

        feed = None
        if calibration is not None and len(calibration):
            feed = {input_name or graph_input_name(src): np.ascontiguousarray(calibration[:AUTOCAST_IMAGES])}
        with private_copy(src) as copy, _quiet():
            model = convert_to_mixed_precision(onnx_path=str(copy), low_precision_type="fp16", keep_io_types=True,
                                               op_types_to_exclude=FP32_OPS, nodes_to_exclude=exact_names(keep),
                                               calibration_data=feed, providers=["cpu"])
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


def has_modelopt(tool: str = "autocast") -> bool:
    """Whether ModelOpt's ONNX `tool` ("autocast" or "quantization") imports here."""
    import importlib

    try:
        importlib.import_module(f"modelopt.onnx.{tool}")
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
    """ONNX Runtime's CalibrationDataReader over model-ready images, one batch per `collect_data` call
    (`set_range` is what CalibStridedMinMax drives): the calibrator's memory stays one batch of activations,
    where one call over 400 ViT-B/16 images would hold ~20 GB of them."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int = 8):
        self._batches = [{input_name: images[i:i + batch]} for i in range(0, len(images), batch)]
        self._items = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(self._batches[start_index:end_index])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):
        self._items = iter(self._batches)


PERCENTILE = 99.999


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray, input_name: str,
                  keep_float_nodes: Iterable[str], target: str = "cpu", method: str = "percentile",
                  on_batch: Callable[[int], None] | None = None) -> dict:
    """Static QDQ quantization of `src` into `dst`, calibrated on `calibration` (model-ready inputs).

    `percentile` ranges are computed here, exactly (the 99.999th percentile by nearest rank, from the tails kept
    per batch) and handed to ONNX Runtime as its calibration cache: ONNX Runtime's own histogram calibrator
    re-sorts every activation per batch and needs tens of minutes for ViT-B/16 on 400 images.
    """
    import inspect
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calibration is None or len(calibration) == 0:
        raise PkdError("INT8 calibration needs images; none were found")
    if target not in ("cpu", "tensorrt"):
        raise PkdError(f"unknown int8 target '{target}'")
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise PkdError(f"unknown calibration method '{method}'; choose one of {', '.join(methods)}")
    model = _load(src)
    nodes = quantizable_nodes(model, keep_float_nodes)
    symmetric = target == "tensorrt"
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "CalibPercentile": PERCENTILE,
             "CalibMovingAverage": False, "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
             "CalibStridedMinMax": 1,  # despite its name: one collect_data call per batch, any method
             # TensorRT's DequantizeLinear takes INT8/FP8/INT4, not the INT32 biases ONNX Runtime makes by default
             # (onnx/onnx-tensorrt#850); ModelOpt sets the same for TensorRT.
             "QuantizeBias": target != "tensorrt"}
    reader = _Batches(input_name, calibration)
    with tempfile.TemporaryDirectory(prefix="pkd-calib-") as tmp, _quiet():
        cache = None
        if method == "percentile" and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

            ranges = percentile_ranges(model, calibration_tensors(model, nodes), reader, PERCENTILE, symmetric,
                                       on_batch)
            cache = Path(tmp) / "ranges.json"
            save_tensors_data(TensorsData(CalibrationMethod.Percentile, {
                name: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                for name, (lo, hi) in ranges.items()}), cache)
            reader.rewind()
        quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(
                        QUANTIZED_OPS), per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes, calibrate_method=methods[method],
                        extra_options=extra, **({"calibration_cache_path": str(cache)} if cache else {}))
    import onnx

    onnx.checker.check_model(str(dst), full_check=True)
    return {"tool": "onnxruntime.quantization", "format": "QDQ", "target": target, "calibration_method": method,
            "percentile": PERCENTILE if method == "percentile" else None,
            "calibration_images": int(len(calibration)), "quantized_nodes": len(nodes),
            "activations": "int8 symmetric" if symmetric else "uint8", "weights": "int8 per-channel symmetric",
            "biases": "float" if target == "tensorrt" else "int32"}


def calibration_tensors(model, nodes: Iterable[str]) -> list[str]:
    """The activations ONNX Runtime's quantizer asks ranges for: inputs and outputs of the quantized nodes."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    wanted = set(nodes)
    names: list[str] = []
    for node in model.graph.node:
        if node.name in wanted:
            names += [t for t in (*node.input, *node.output) if t and t not in constants and t not in names]
    return names


class _Tails:
    """The k largest and k smallest values seen so far of one tensor (enough for an exact percentile)."""

    def __init__(self, k: int):
        self.k, self.top, self.bottom = k, np.empty(0, np.float32), np.empty(0, np.float32)

    @staticmethod
    def _largest(values: np.ndarray, k: int) -> np.ndarray:
        return values if len(values) <= k else np.partition(values, len(values) - k)[len(values) - k:]

    def add(self, flat: np.ndarray) -> None:
        self.top = self._largest(np.concatenate([self.top, self._largest(flat, self.k)]), self.k)
        self.bottom = -self._largest(np.concatenate([-self.bottom, self._largest(-flat, self.k)]), self.k)


def percentile_ranges(model, tensors: list[str], reader: _Batches, percentile: float, symmetric: bool,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, tuple[float, float]]:
    """Exact nearest-rank percentile ranges of `tensors` over all calibration batches.

    symmetric: (-t, t) with t the percentile of |x|; otherwise the (100-p)/2 and 100-(100-p)/2 percentiles of x,
    widened to include 0. Clipped to the observed min/max.
    """
    import onnx
    import onnxruntime as ort

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    outputs = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in outputs)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), so, providers=["CPUExecutionProvider"])
    images = sum(len(next(iter(b.values()))) for b in reader._batches)
    tails: dict[str, _Tails] = {}
    cut = (100.0 - percentile) / 100.0 * (1.0 if symmetric else 0.5)
    reader.rewind()
    seen = 0
    while (feed := reader.get_next()) is not None:
        batch = len(next(iter(feed.values())))
        seen += batch
        for name, value in zip(tensors, session.run(tensors, feed), strict=True):
            flat = np.abs(value).ravel() if symmetric else np.asarray(value, np.float32).ravel()
            if name not in tails:  # k = how many values lie beyond the percentile over all images
                tails[name] = _Tails(max(1, math.ceil(flat.size // batch * images * cut)))
            tails[name].add(flat.astype(np.float32, copy=False))
        if on_batch:
            on_batch(seen)
    ranges = {}
    for name, t in tails.items():
        if symmetric:
            hi = float(t.top.min()) if len(t.top) else 0.0
            ranges[name] = (-hi, hi)
        else:
            lo = float(t.bottom.max()) if len(t.bottom) else 0.0
            hi = float(t.top.min()) if len(t.top) else 0.0
            ranges[name] = (min(lo, 0.0), max(hi, 0.0))
    return ranges


def quantize_for_tensorrt(src: str | os.PathLike, dst: str | os.PathLike, precision: str, api: int,
                          calibration: np.ndarray, input_name: str, keep_float_nodes: Iterable[str],
                          method: str = "percentile", on_batch: Callable[[int], None] | None = None, *,
                          use_modelopt: bool | None = None) -> dict:
    """The Q/DQ graph a TensorRT `api` engine of `precision` ("int8" or "fp8") is built from.

    The quantized nodes are those of the ONNX Runtime graph (weight-bearing MatMul/Gemm/Conv; attention's
    activation MatMuls, LayerNorm, Softmax and `keep_float_nodes` stay float), symmetric, with float biases.
    ModelOpt's quantizer when installed (FP8 needs it), ONNX Runtime's otherwise. TensorRT 10 picks FP16 for the
    rest with its builder flags, so its graph stays FP32 around the Q/DQ; TensorRT 11 runs every layer in the type
    the graph gives it, so its graph is FP16 wherever it is not quantized, with the FP32 islands of the FP16 graph
    (ModelOpt's own FP16 pass works per op type and would put the logits MatMul in FP16, so the project's converter
    does this step: scales become FP16 and each DequantizeLinear feeds its FP16 MatMul directly).
    """
    if precision not in ("int8", "fp8"):
        raise PkdError(f"no TensorRT quantization for precision '{precision}'")
    if use_modelopt is None:
        use_modelopt = has_modelopt("quantization")
    if precision == "fp8" and not use_modelopt:
        raise PkdError("FP8 needs NVIDIA ModelOpt: pip install 'nvidia-modelopt[onnx]' (a separate venv avoids "
                       "its onnx/onnxruntime pins)")
    keep = list(keep_float_nodes)
    with tempfile.TemporaryDirectory(prefix="pkd-qdq-") as tmp:
        qdq = Path(dst) if api < 11 else Path(tmp) / "model.qdq.onnx"
        if use_modelopt:
            info = _modelopt_quantize(precision, src, qdq, calibration, input_name, keep)
        else:
            info = quantize_int8(src, qdq, calibration, input_name, keep, target="tensorrt", method=method,
                                 on_batch=on_batch)
        if api >= 11:
            to_fp16(qdq, dst, keep, use_modelopt=False)
    return {**info, "elsewhere": "fp16" if api >= 11 else "fp32 (TensorRT 10 builder flags pick FP16)"}


MODELOPT_BATCH = 8  # calibration images per ModelOpt calibration step


def _modelopt_quantize(mode: str, src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray,
                       input_name: str, keep: list[str]) -> dict:
    """`modelopt.onnx.quantization.quantize` on a private copy of `src` (it rewrites the file it is given), on the
    project's node set, FP32 elsewhere."""
    import onnx
    from modelopt.onnx.quantization import quantize

    if calibration is None or len(calibration) == 0:
        raise PkdError(f"{mode} calibration needs images; none were found")
    batch = min(MODELOPT_BATCH, len(calibration))
    images = np.ascontiguousarray(calibration[:len(calibration) // batch * batch])
    nodes = quantizable_nodes(_load(src), keep)
    # calibration_shapes: batches of `batch` images (with the dynamic batch ModelOpt would calibrate one image at
    # a time, and its GEMV check would then leave every MatMul unquantized)
    shapes = f"{input_name}:{'x'.join(str(d) for d in (batch, *images.shape[1:]))}"
    with private_copy(src) as copy, _quiet():
        out = copy.with_name(f"out.{mode}.onnx")
        quantize(onnx_path=str(copy), quantize_mode=mode, calibration_data={input_name: images},
                 calibration_method="max" if mode == "fp8" else "entropy", calibration_shapes=shapes,
                 calibration_eps=["cpu"], high_precision_dtype="fp32", nodes_to_quantize=exact_names(nodes),
                 nodes_to_exclude=exact_names(keep) or None, output_path=str(out))
        onnx.checker.check_model(str(out), full_check=True)
        shutil.copyfile(out, dst)
    return {"tool": "modelopt", "format": "QDQ", "target": "tensorrt", "mode": mode,
            "calibration_method": "max" if mode == "fp8" else "entropy", "calibration_images": int(len(images)),
            "quantized_nodes": len(nodes), "biases": "float"}


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


def engine_graph_name(precision: str, api: int) -> str:
    """The file in a bundle of the graph a TensorRT `api` engine of `precision` is built from (besides model.onnx):
    model.fp16.onnx; model.int8.onnx / model.fp8.onnx (TensorRT 10: FP32 around the Q/DQ); model.int8-fp16.onnx /
    model.fp8-fp16.onnx (TensorRT 11: FP16 around them)."""
    if precision in ("int8", "fp8"):
        return f"model.{precision}.onnx" if api < 11 else f"model.{precision}-fp16.onnx"
    return f"model.{precision}.onnx"
