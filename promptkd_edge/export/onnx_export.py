"""torch -> ONNX for the folded student: dynamo exporter, dynamic batch, one file, full checker, optional onnxslim."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.export.fold import InputNormalize

DEFAULT_OPSET = 20  # TensorRT 10.3 (JetPack 6) parses it; 23 would emit the Attention op it does not know
MIN_OPSET = 18  # the dynamo exporter's minimum
MAX_ONNX_BYTES = 2 * 1024**3  # protobuf's limit for a single-file model
INPUT_NAME = "image"


def example_input(model: torch.nn.Module, size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """An example batch for tracing. Its batch must be >= 2: a batch of 1 gets specialised into the graph."""
    h, w = size
    if isinstance(getattr(model, "input", None), InputNormalize):
        return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, h, w)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, size: tuple[int, int], *,
                opset: int = DEFAULT_OPSET, max_batch: int = 4096) -> Path:
    """Export `model` (a FoldedStudent, or any image -> logits module) to a single ONNX file with a dynamic batch
    dimension and run the full checker on it."""
    import onnx

    if opset < MIN_OPSET:
        raise PkdError(f"opset {opset} is too old for the exporter; use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    path = Path(path)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    log = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.eval(), (example_input(model, size),), str(path), dynamo=True,
                              input_names=[INPUT_NAME],
                              output_names=getattr(model, "output_names", ["logits"]),
                              dynamic_shapes={"image": {0: batch}}, opset_version=opset,
                              external_data=False, verbose=False)
        except Exception as e:  # the exporter's errors are long; keep their first line, with the log on --debug
            raise PkdError(f"ONNX export failed: {first_line(e, with_type=False)}") from e
    size_bytes = path.stat().st_size
    if size_bytes >= MAX_ONNX_BYTES:
        raise PkdError(f"the exported model is {size_bytes / 1024**3:.2f} GB; a single ONNX file must stay below 2 GB")
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise PkdError(f"the exported ONNX fails onnx.checker: {first_line(e, with_type=False)}") from e
    return path


def slim(path: str | os.PathLike) -> int:
    """Simplify the model in place with onnxslim (constant folding, dead nodes); returns nodes removed."""
    try:
        import onnxslim
    except ImportError:
        raise PkdError("--slim needs onnxslim: pip install onnxslim") from None
    import onnx

    before = onnx.load(str(path))
    with contextlib.redirect_stdout(io.StringIO()):
        slimmed = onnxslim.slim(before)
    onnx.checker.check_model(slimmed, full_check=True)
    onnx.save(slimmed, str(path))
    return len(before.graph.node) - len(slimmed.graph.node)


def head_nodes(model) -> list[str]:
    """Names of the nodes from the projector's output to the graph outputs: L2 norm and the logits MatMul.

    They stay in FP32 in every precision (TensorRT 10 pins them, the FP16 graph keeps them, INT8 skips them).
    """
    norms = [n for n in model.graph.node if n.op_type == "ReduceL2"]
    if not norms:
        return []
    start = norms[-1].input[0]  # the projector's output
    tail, frontier = [], {start}
    for node in model.graph.node:  # nodes are topologically sorted
        if any(i in frontier for i in node.input):
            tail.append(node.name)
            frontier.update(node.output)
    return tail


def embedding_tensor(model) -> str | None:
    """The unit-feature tensor inside a graph whose `logits` come from `features @ class_matrix`."""
    for node in model.graph.node:
        if "logits" in node.output and node.op_type == "MatMul":
            return node.input[0]
    return None


def io_description(model) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX model as JSON-ready dicts (name, shape with 'batch', dtype)."""
    import onnx

    def describe(value) -> dict:
        t = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": value.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    initializers = {i.name for i in model.graph.initializer}
    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in model.graph.output]
