"""What every parity gate runs: a backend over model-ready inputs in batches, with the unit features inside a
logits-only graph read out too, so the gate compares embeddings where a graph has them (export/parity.py judges)."""

from __future__ import annotations

import os

import numpy as np

from promptkd_edge.export.graph import embedding_tensor
from promptkd_edge.utils.progress import Progress


def embeddings_inside(path: str | os.PathLike, head: str) -> dict[str, str] | None:
    """For a logits-only graph: {"embeddings": the tensor of its unit features}, for a backend's extra outputs."""
    import onnx

    if head != "logits":
        return None
    tensor = embedding_tensor(onnx.load(str(path), load_external_data=False))
    return {"embeddings": tensor} if tensor else None


def run_for_gate(backend, arrays: np.ndarray, batch: int, progress: Progress, what: str) -> dict[str, np.ndarray]:
    """`backend.run` over `arrays` in batches of `batch` (a progress task named `what`): each output, float32."""
    outs: dict[str, list[np.ndarray]] = {}
    update = progress.task(what, len(arrays))
    for i in range(0, len(arrays), batch):
        for k, v in backend.run(arrays[i:i + batch]).items():
            outs.setdefault(k, []).append(np.asarray(v, dtype=np.float32))
        update(min(i + batch, len(arrays)))
    return {k: np.concatenate(v) for k, v in outs.items()}
