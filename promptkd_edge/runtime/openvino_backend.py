"""OpenVINO backend (CPU): the bundle's model.onnx read as it is (FP32, or ONNX Runtime's INT8 QDQ graph, which
OpenVINO runs with its own INT8 kernels), at an explicit inference precision.

OpenVINO's CPU plugin computes in bf16 by default on CPUs that have it (AMX, AVX512_BF16). This backend never
takes that default: it asks for f32 unless told `precision="bf16"`, which the runtime does only where the
bundle's bf16 parity gate passed (or when the caller forces it).
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import numpy as np

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.runtime.backends import Backend

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # ours -> OpenVINO's INFERENCE_PRECISION_HINT
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise PkdError("OpenVINO is not installed: pip install 'promptkd-edge[openvino]'") from None
    return openvino


_CORE: list = []  # the process's one ov.Core, made on first use and kept until exit
_CORE_LOCK = threading.Lock()


def shared_core():
    """The one `openvino.Core` of this process. Every Core's CPU plugin swaps the calling thread's signal
    alternate stack for one of its own and unmaps it when the Core dies; Cores that die in any order other than
    the reverse of their creation leave the thread on an unmapped stack, and the next signal handled there
    (Python's handlers all run on it) writes its frame over whatever memory is mapped there later. One Core
    that lives as long as the process never does that."""
    with _CORE_LOCK:
        if not _CORE:
            _CORE.append(import_openvino().Core())
        return _CORE[0]


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can compute in here (e.g. FP32, BF16, FP16, INT8); [] without OpenVINO."""
    try:
        return [str(c) for c in shared_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001 - no OpenVINO, or a plugin that cannot start
        return []


def has_bf16() -> bool:
    """Whether this CPU computes bf16 natively for OpenVINO (AMX or AVX512_BF16)."""
    return "BF16" in cpu_capabilities()


class OpenVinoBackend(Backend):
    """Runs an ONNX file on OpenVINO's CPU plugin. Safe to call from several threads: each call takes an infer
    request from a pool (made on demand) and returns it."""

    name = "openvino"

    def __init__(self, model_path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None,
                 hint: str = "latency", extra_outputs: dict[str, str] | None = None):
        """`precision` fp32 or bf16 (the inference precision of whatever the graph does not quantize itself);
        `hint` latency (one request at a time uses all threads) or throughput (parallel streams);
        `extra_outputs` {name: tensor} also returns intermediate tensors (the parity gate's embeddings)."""
        ov = import_openvino()
        if precision not in PRECISIONS:
            raise PkdError(f"OpenVINO precision '{precision}' is not one of {', '.join(PRECISIONS)}")
        if hint not in HINTS:
            raise PkdError(f"OpenVINO hint '{hint}' is not one of {', '.join(HINTS)}")
        if precision == "bf16" and not has_bf16():
            raise PkdError("this CPU has no native bf16 for OpenVINO (it needs AMX or AVX512_BF16); use fp32")
        self.path, self.precision, self.hint = Path(model_path), precision, hint
        core = shared_core()
        try:
            model = core.read_model(str(self.path))
            if extra_outputs:
                model.add_outputs(list(extra_outputs.values()))
            config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": HINTS[hint]}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with multi-line C++ messages
            raise PkdError(f"OpenVINO cannot load {self.path}: {first_line(e, with_type=False)}") from None
        renames = {tensor: name for name, tensor in (extra_outputs or {}).items()}
        self._outputs = self.compiled.outputs
        self.output_names = [next((renames[n] for n in o.get_names() if n in renames), o.get_any_name())
                             for o in self._outputs]
        self.version = ov.__version__.split("-")[0]
        self.device = "cpu"
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def description(self) -> str:
        return f"openvino {self.version} CPU {self.precision}"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for one model-ready batch (copied out: the request is reused)."""
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            results = request.infer({0: np.ascontiguousarray(batch)})
            return {name: np.array(results[o], copy=True) for name, o in zip(self.output_names, self._outputs,
                                                                                strict=True)}
        finally:
            self._requests.put(request)

    def close(self) -> None:
        self.compiled = None
        self._requests = queue.SimpleQueue()
