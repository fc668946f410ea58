"""torch -> ONNX for the folded student: dynamo exporter, dynamic batch, one file, full checker."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import warnings
from pathlib import Path

import torch

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.export.graph import DEFAULT_OPSET, INPUT_NAME, MAX_ONNX_BYTES, MIN_OPSET
from promptkd_edge.utils.files import disk_error


def example_input(model: torch.nn.Module, size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """An example batch for tracing. Its batch must be >= 2: a batch of 1 gets specialised into the graph."""
    h, w = size
    fmt = getattr(model, "input_format", "normalized")
    if fmt == "uint8":
        return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
    if fmt == "pixels":
        return torch.rand(batch, 3, h, w) * 255
    return torch.randn(batch, 3, h, w)


def export_onnx(model: torch.nn.Module, path: str | os.PathLike, size: tuple[int, int], *,
                opset: int = DEFAULT_OPSET, max_batch: int = 4096) -> Path:
    """Export `model` (a FoldedStudent, or any image -> logits module) to a single ONNX file with a dynamic batch
    dimension and run the full checker on it."""
    return export_module(model, path, example_input(model, size), INPUT_NAME,
                         getattr(model, "output_names", ["logits"]), opset=opset, max_batch=max_batch)


def export_module(model: torch.nn.Module, path: str | os.PathLike, example: torch.Tensor, input_name: str,
                  output_names: list[str], *, opset: int = DEFAULT_OPSET, max_batch: int = 4096,
                  max_length: int | None = None) -> Path:
    """One input (dynamic first dimension; with `max_length` a dynamic second one, 2..max_length) -> ONNX with the
    dynamo exporter, one file below 2 GB, full checker."""
    import onnx

    if opset < MIN_OPSET:
        raise PkdError(f"opset {opset} is too old for the exporter; use {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    path = Path(path)
    dims = {0: torch.export.Dim("batch", min=1, max=max_batch)}
    if max_length:
        dims[1] = torch.export.Dim("length", min=2, max=max_length)
    log = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, input_names=[input_name],
                              output_names=output_names, dynamic_shapes=(dims,),
                              opset_version=opset, external_data=False, verbose=False)
        except Exception as e:  # the exporter's errors are long; keep their first line, with the log on --debug
            code = disk_error(e)
            if code is not None:  # a full or read-only disk, not the exporter's fault: say where and what
                raise PkdError(f"cannot write {path}: {os.strerror(code)} ({errno.errorcode[code]})") from e
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
