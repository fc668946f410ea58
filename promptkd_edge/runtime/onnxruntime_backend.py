"""ONNX Runtime backend: a session on the bundle's model.onnx that says which provider really runs it.

On a GPU provider it runs through IO binding: the outputs are bound on the device and copied back once, and a
batch can be staged on the device (`stage` / `run_staged`) so that a benchmark's compute time has no copies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.runtime.backends import Backend

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def session_options(threads: int | None = None, *, precision: str = "fp32"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if precision == "fp16":  # ORT_ENABLE_ALL crashes on some mixed-FP16 graphs on CPU (ORT 1.24-1.31)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return so


def resolve_providers(providers: str | list) -> list:
    """'auto' -> TensorRT, CUDA, CPU in that order where this onnxruntime build has them; 'cpu' -> CPU only;
    a list of names or (name, options) pairs is checked against what this build has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers == "auto":
        return [p for p in (*GPU_PROVIDERS, "CPUExecutionProvider") if p in available]
    if providers == "cpu":
        return ["CPUExecutionProvider"]
    if providers == "cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    missing = [name for name in (p if isinstance(p, str) else p[0] for p in providers) if name not in available]
    if missing:
        raise PkdError(f"this onnxruntime ({ort.__version__}) has no {', '.join(missing)}; it has "
                       f"{', '.join(available)} (GPU providers need the onnxruntime-gpu package)")
    return list(providers)


def _device_id(requested: list) -> int:
    for p in requested:
        if not isinstance(p, str) and p[0] in GPU_PROVIDERS:
            return int(p[1].get("device_id", 0))
    return 0


def _with_outputs(model: str | os.PathLike | Any, extra: dict[str, str] | None) -> bytes:
    """The serialized graph (a file's or one in memory, left as it is) with the `extra` tensors among its outputs."""
    import onnx

    if isinstance(model, str | os.PathLike):
        model = onnx.load(str(model))
    elif extra:
        model, original = onnx.ModelProto(), model
        model.CopyFrom(original)  # a copy: the caller's graph stays as it is
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in (extra or {}).values())
    return model.SerializeToString()


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX file; `fell_back_to_cpu` is True when a GPU provider was asked for but CPU runs the model."""

    name = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike | Any, *, providers: str | list = "auto",
                 threads: int | None = None, precision: str = "fp32", extra_outputs: dict[str, str] | None = None,
                 io_binding: bool | None = None):
        """`model_path`: an ONNX file, or a graph in memory (an onnx.ModelProto: the export's candidate graphs).
        `extra_outputs` {name: tensor} also returns intermediate tensors (the parity gate reads the embeddings
        inside a logits-only graph this way). `io_binding` defaults to on for GPU providers."""
        import onnxruntime as ort

        in_memory = not isinstance(model_path, str | os.PathLike)
        self.path, self.precision = Path("<graph in memory>" if in_memory else model_path), precision
        requested = resolve_providers(providers)
        self._renames = {tensor: name for name, tensor in (extra_outputs or {}).items()}
        source = _with_outputs(model_path, extra_outputs) if in_memory or extra_outputs else str(self.path)
        try:
            self.session = ort.InferenceSession(source, session_options(threads, precision=precision),
                                                providers=requested)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise PkdError(f"onnxruntime cannot load {self.path}: {first_line(e, with_type=False)}") from None
        self.providers = self.session.get_providers()
        names = [p if isinstance(p, str) else p[0] for p in requested]
        self.fell_back_to_cpu = (any(p in GPU_PROVIDERS for p in names)
                                 and self.providers[0] == "CPUExecutionProvider")
        self.input_name = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = [self._renames.get(o, o) for o in self._outputs]
        self.device = "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"
        self.device_id = _device_id(requested) if self.device == "cuda" else 0
        self.io_binding = self.device == "cuda" if io_binding is None else bool(io_binding)

    @property
    def description(self) -> str:
        note = " (a GPU provider was requested but failed to load: running on CPU)" if self.fell_back_to_cpu else ""
        return f"onnxruntime {self.providers[0]}{note}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for one model-ready batch. ONNX Runtime sessions are safe to run from many threads
        (each call makes its own binding)."""
        if not self.io_binding:
            return dict(zip(self.output_names, self.session.run(None, {self.input_name: batch}), strict=True))
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        for name in self._outputs:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))

    def stage(self, batch: np.ndarray):
        """The batch copied to the session's device once, bound with device outputs, for `run_staged`."""
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), self.device, self.device_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        for name in self._outputs:
            binding.bind_output(name, self.device, self.device_id)
        return binding, value

    def run_staged(self, staged) -> None:
        """Run on a staged batch; the outputs stay on the device."""
        binding, _value = staged
        self.session.run_with_iobinding(binding)

    def close(self) -> None:
        self.session = None
