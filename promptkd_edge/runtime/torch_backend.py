"""PyTorch backend: the bundle's student rebuilt from student.safetensors and its open_clip base weights.

For checking a bundle against the model it came from, or running where neither ONNX Runtime nor TensorRT fits.
Needs torch, open_clip and the base weights the student was trained on (found by its recorded spec).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from promptkd_edge.formats.manifest import ModelEntry
from promptkd_edge.formats.run import STUDENT_FILE
from promptkd_edge.runtime.backends import Backend


class TorchBackend(Backend):
    """The same folded graph as model.onnx, run by PyTorch eager (CUDA when available, else CPU)."""

    name = "torch"

    def __init__(self, bundle_dir: str | Path, model: ModelEntry, *, device: str = "auto",
                 allow_pickle: bool = False):
        import torch

        from promptkd_edge.export.fold import FoldedStudent
        from promptkd_edge.models.class_vectors import ClassVectors
        from promptkd_edge.models.student import load_student

        bundle_dir = Path(bundle_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self.device = self._device.type  # "cpu" or "cuda", as every backend says it
        self.precision = "fp32"
        student = load_student(bundle_dir / STUDENT_FILE, allow_pickle=allow_pickle)
        vectors = ClassVectors.load(bundle_dir) if model.head != "embeddings" else None
        self.model = FoldedStudent(student, vectors, model.head, model.input_format).to(self._device).eval()
        self.input_name = model.inputs[0].name
        self.output_names = self.model.output_names
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"torch {__import__('torch').__version__} eager on {self._device}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with self._lock, torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)).to(self._device))
        outs = out if isinstance(out, tuple) else (out,)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def close(self) -> None:
        self.model = None
