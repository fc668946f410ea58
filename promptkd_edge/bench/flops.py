"""Forward GFLOP per image (2 x multiply-adds) of a model: from its ONNX graph, or from torch's FLOP counter.

Both count matrix products and convolutions (attention included) and leave out norms and activations (< 1 %).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def torch_gflops(module: Any, input_shape: tuple[int, ...]) -> float | None:
    """GFLOP of `module` on one input of `input_shape` (no batch dimension), counted by
    torch.utils.flop_counter.FlopCounterMode on the meta device: no memory, no compute. None when the forward
    cannot run on meta tensors."""
    import torch
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    meta = {name: torch.empty_like(t, device="meta")
            for name, t in (*module.named_parameters(), *module.named_buffers())}
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.inference_mode():
            functional_call(module, meta, (torch.empty((1, *input_shape), device="meta"),))
    except Exception:  # noqa: BLE001 - a forward that needs real values: no figure
        return None
    return round(counter.get_total_flops() / 1e9, 6)  # as onnx_gflops: tiny models stay above 0


def onnx_gflops(path: str | Path) -> float | None:
    """Forward GFLOPs (2 x multiply-adds) of an ONNX graph for one image: its MatMul, Gemm and Conv nodes, with
    shapes inferred at batch 1 (QDQ graphs count the same products); None without onnx or shapes."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None
    try:
        model = onnx.load(str(path))
        model.graph.ClearField("value_info")  # the exporter's shapes say "batch": infer them again at batch 1
        for value in (*model.graph.input, *model.graph.output):
            dim = value.type.tensor_type.shape.dim
            if dim and not dim[0].dim_value:
                dim[0].ClearField("dim_param")
                dim[0].dim_value = 1
        graph = shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:  # noqa: BLE001 - a graph shape inference cannot follow: no figure
        return None
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.value_info, *graph.input, *graph.output)}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    flops = 0
    for node in graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if not out or not all(out):
            continue
        size = int(np.prod(out))
        if node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            k = (a[-2] if node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
                 else a[-1]) if a else 0
            flops += 2 * size * k
        elif node.op_type == "Conv":
            w = shapes.get(node.input[1])
            flops += 2 * size * int(np.prod(w[1:])) if w else 0
    return round(flops / 1e9, 6) if flops else None

