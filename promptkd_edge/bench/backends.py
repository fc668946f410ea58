"""The backends `pkd bench` can time, each loaded into a Runner; one that cannot run here raises Unavailable.

A Runner separates what is timed from what is not: `prepare` puts a batch where the backend reads it (device
memory for torch on CUDA), `__call__` is the compute that compute-only rows time, `logits` is host array in,
host logits out (what end-to-end rows time after decoding and preprocessing).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from promptkd_edge.bench.targets import BenchModel, Unavailable
from promptkd_edge.errors import PkdError
from promptkd_edge.utils.devices import cuda_available


@dataclass(frozen=True)
class BackendSpec:
    name: str
    kind: str  # a runtime backend kind (runtime/backends.py KINDS), or "auto"
    precision: str  # fp32 | fp16 | bf16 | int8 | plan
    cuda_only: bool = False
    compile_mode: str | None = None  # torch.compile mode; "reduce-overhead" = CUDA graphs
    provider: str | None = None  # onnxruntime execution provider


BACKENDS: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("torch-eager-fp32", "torch", "fp32"),
    BackendSpec("torch-eager-fp16", "torch", "fp16", cuda_only=True),
    BackendSpec("torch-eager-bf16", "torch", "bf16", cuda_only=True),
    BackendSpec("torch-compile-fp32", "torch", "fp32", compile_mode="default"),
    BackendSpec("torch-compile-bf16", "torch", "bf16", cuda_only=True, compile_mode="default"),
    BackendSpec("torch-cudagraphs-bf16", "torch", "bf16", cuda_only=True, compile_mode="reduce-overhead"),
    BackendSpec("onnxruntime-cpu-fp32", "onnxruntime", "fp32", provider="CPUExecutionProvider"),
    BackendSpec("onnxruntime-cpu-int8", "onnxruntime", "int8", provider="CPUExecutionProvider"),
    BackendSpec("openvino-cpu-fp32", "openvino", "fp32"),
    BackendSpec("openvino-cpu-bf16", "openvino", "bf16"),  # the FP32 graph computed in bf16 (AMX / AVX512_BF16)
    BackendSpec("openvino-cpu-int8", "openvino", "int8"),  # the INT8 QDQ graph, the rest in f32
    BackendSpec("openvino-cpu-int8-bf16", "openvino", "int8-bf16"),  # the INT8 QDQ graph, the rest in bf16
    BackendSpec("auto", "auto", "auto"),  # what Classifier.from_bundle(backend="auto") picks for a bundle here
    BackendSpec("onnxruntime-cuda-fp32", "onnxruntime", "fp32", cuda_only=True, provider="CUDAExecutionProvider"),
    BackendSpec("onnxruntime-tensorrt-fp16", "onnxruntime", "fp16", cuda_only=True,
                provider="TensorrtExecutionProvider"),
    BackendSpec("tensorrt", "tensorrt", "plan", cuda_only=True),
)}
DEVICE_RESIDENT = ("onnxruntime-cuda-fp32", "onnxruntime-tensorrt-fp16", "tensorrt")  # compute: batch on the GPU


def rows() -> dict[str, BackendSpec]:
    """The rows `pkd bench` times: BACKENDS, then a row for each runtime backend kind that has none
    (runtime/backends.py KINDS: a kind registered there is benched on bundles through its own loader)."""
    from promptkd_edge.runtime.backends import KINDS

    covered = {s.kind for s in BACKENDS.values()}
    return {**BACKENDS, **{k: BackendSpec(k, k, "bundle") for k in KINDS if k not in covered}}


def rows_help() -> str:
    """The rows `pkd bench --backends` takes, for its help: names that differ only in their last words grouped
    (torch-eager-fp32|fp16|bf16), in table order."""
    groups: dict[str, list[str]] = {}
    for name in rows():
        head, _, tail = name.partition("-")
        head2, _, tail2 = tail.partition("-")
        key, rest = (f"{head}-{head2}", tail2) if tail2 else (name, "")
        groups.setdefault(key, []).append(rest)
    words = [f"{k}-{'|'.join(v)}" if v != [""] else k for k, v in groups.items()]
    return ", ".join(w + (" (a bundle: what the runtime picks)" if w == "auto" else "") for w in words) + " (or: all)."


def parse_backends(text: str) -> list[BackendSpec]:
    """'all', or a comma list of names (unknown names are an error naming the known ones)."""
    known = rows()
    if text.strip() == "all":
        return list(known.values())
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise PkdError(f"unknown backend {', '.join(unknown) or '(none)'}; choose from all, {', '.join(known)}")
    return [known[n] for n in names]


def prepare_artifacts(spec: BackendSpec, model: BenchModel) -> None:
    """Build what a backend loads (the ONNX file, quantized for int8) before its load is timed."""
    if spec.kind == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            return  # `load` reports it
        if spec.provider in ort.get_available_providers():
            model.onnx(spec.precision if spec.precision == "int8" else "fp32")
    if spec.kind == "openvino":
        from promptkd_edge.runtime.openvino_backend import openvino_version

        if openvino_version() is not None:
            model.onnx("int8" if spec.precision.startswith("int8") else "fp32")


class Runner:
    name = device = precision = ""
    description = ""

    def prepare(self, batch: np.ndarray) -> Any:
        return np.ascontiguousarray(batch)

    def __call__(self, prepared: Any) -> Any:
        raise NotImplementedError

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self(self.prepare(batch)))

    def sync(self) -> None:
        pass

    timer: Callable[[Callable[[], object]], float] | None = None  # ms of one call, when the device times it

    def close(self) -> None:
        pass


def load(spec: BackendSpec, model: BenchModel, *, device: str, threads: int | None) -> Runner:
    """A runner for `model` on `spec`, or Unavailable with the reason."""
    on_cuda = device.startswith("cuda")
    if spec.cuda_only and not on_cuda:
        raise Unavailable("needs a CUDA GPU" + ("" if cuda_available() else " (torch.cuda.is_available() is False)")
                          + "; run with --device cuda on a GPU machine")
    return RUNNERS.get(spec.kind, KindRunner)(spec, model, device, threads)


class TorchRunner(Runner):
    def __init__(self, spec: BackendSpec, model: BenchModel, device: str, threads: int | None):
        try:
            import torch
        except ImportError:
            raise Unavailable("torch is not installed") from None
        if spec.compile_mode and device == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
            raise Unavailable("torch.compile on CPU needs a C++ compiler (g++) for inductor")
        if threads:
            torch.set_num_threads(threads)
        self.name, self.precision, self.device = spec.name, spec.precision, device
        self._torch = torch
        self._dev = torch.device(device)
        module = model.build_torch().to(self._dev).eval()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.precision)
        self._autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype else None
        # dynamic=None: the first batch size compiles static, the next one once more with a dynamic batch
        self._module = torch.compile(module, mode=spec.compile_mode) if spec.compile_mode else module
        self.description = f"torch {torch.__version__} {spec.name.split('-')[1]} on {device}"
        if self._dev.type == "cuda":
            self.timer = self._cuda_events

    def prepare(self, batch: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(batch)).to(self._dev)

    def __call__(self, prepared):
        with self._torch.inference_mode():
            if self._autocast:
                with self._autocast():
                    return self._module(prepared)
            return self._module(prepared)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self(self.prepare(batch)).float().cpu().numpy()

    def sync(self) -> None:
        if self._dev.type == "cuda":
            self._torch.cuda.synchronize(self._dev)

    def _cuda_events(self, fn: Callable[[], object]) -> float:
        """Milliseconds of one call measured by CUDA events on the current stream."""
        start, end = self._torch.cuda.Event(enable_timing=True), self._torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    def close(self) -> None:
        self._module = None
        if self._dev.type == "cuda":
            self._torch.cuda.empty_cache()


class _AppBackendRunner(Runner):
    """A runtime backend (host arrays in and out, `run` -> {name: array}) as a Runner. On a GPU the compute
    rows time the backend on a batch staged on the device (`stage` / `run_staged`: no host<->device copies)."""

    _backend: Any

    def prepare(self, batch: np.ndarray) -> Any:
        batch = np.ascontiguousarray(batch)
        return ("staged", self._backend.stage(batch)) if self.device == "cuda" else batch

    def __call__(self, prepared):
        if isinstance(prepared, tuple) and prepared[0] == "staged":
            return self._backend.run_staged(prepared[1])
        return self._backend.run(prepared)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return next(iter(self(self.prepare(batch)).values()))

    def close(self) -> None:
        self._backend.close()


class OrtRunner(_AppBackendRunner):
    def __init__(self, spec: BackendSpec, model: BenchModel, device: str, threads: int | None):
        from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

        try:
            import onnxruntime as ort
        except ImportError:
            raise Unavailable("onnxruntime is not installed") from None
        if spec.provider not in ort.get_available_providers():
            raise Unavailable(f"this onnxruntime ({ort.__version__}) has no {spec.provider}"
                              + (" (install onnxruntime-gpu)" if spec.provider != "CPUExecutionProvider" else ""))
        try:
            path = model.onnx(spec.precision if spec.precision in ("fp32", "int8") else "fp32")
        except PkdError as e:
            raise Unavailable(str(e)) from None
        providers: list = list(dict.fromkeys([spec.provider, "CPUExecutionProvider"]))
        if spec.provider == "TensorrtExecutionProvider":
            cache = (model.workdir or path.parent) / "ort-trt-cache"
            providers[0] = (spec.provider, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                            "trt_engine_cache_path": str(cache), "trt_layer_norm_fp32_fallback": True})
        self._backend = OnnxRuntimeBackend(path, providers=providers, threads=threads)
        if self._backend.fell_back_to_cpu:
            raise Unavailable(f"{spec.provider} failed to load and onnxruntime fell back to CPU (see `pkd doctor`)")
        self.name, self.precision, self.device = spec.name, spec.precision, self._backend.device
        self.description = self._backend.description


class OpenVinoRunner(_AppBackendRunner):
    def __init__(self, spec: BackendSpec, model: BenchModel, device: str, threads: int | None):
        from promptkd_edge.runtime.openvino_backend import OpenVinoBackend, has_bf16, openvino_version

        if openvino_version() is None:
            raise Unavailable("OpenVINO is not installed (pip install 'promptkd-edge[openvino]')")
        bf16, int8 = spec.precision.endswith("bf16"), spec.precision.startswith("int8")
        if bf16 and not has_bf16():
            raise Unavailable("this CPU has no native bf16 for OpenVINO (AMX or AVX512_BF16)")
        try:
            path = model.onnx("int8" if int8 else "fp32")
            self._backend = OpenVinoBackend(path, precision="bf16" if bf16 else "fp32", threads=threads)
        except PkdError as e:
            raise Unavailable(str(e)) from None
        self.name, self.precision, self.device = spec.name, spec.precision, "cpu"
        self.description = self._backend.description + (" on the INT8 QDQ graph" if int8 else "")


class AutoRunner(_AppBackendRunner):
    """The backend `Classifier.from_bundle(backend="auto")` loads for the bundle on this machine."""

    def __init__(self, spec: BackendSpec, model: BenchModel, device: str, threads: int | None):
        from promptkd_edge.runtime import Classifier

        if model.bundle is None:
            raise Unavailable("auto chooses among a bundle's gated options: bench a bundle")
        try:
            clf = Classifier.from_bundle(model.bundle, threads=threads)
        except PkdError as e:
            raise Unavailable(str(e)) from None
        self._backend = clf.backend
        self.name = "auto"
        graph, computes = clf.bundle.model.precision, clf.backend.precision
        # the INT8 graph on OpenVINO bf16 is INT8 + bf16 (as the openvino-cpu-int8-bf16 row); else what it computes in
        self.precision = (f"{graph}-{computes}" if graph == "int8" and computes == "bf16" else
                          graph if graph == "int8" else computes or graph)
        self.device = clf.backend.device
        self.description = f"auto: {clf.description}" + (f"; {clf.choice.reason}" if clf.choice is not None else "")


class KindRunner(_AppBackendRunner):
    """A runtime backend kind without a runner of its own: the bundle loaded through the registry's loader."""

    def __init__(self, spec: BackendSpec, model: BenchModel, device: str, threads: int | None):
        from promptkd_edge.runtime.backends import KINDS, LoadOptions
        from promptkd_edge.runtime.bundle import open_bundle

        kind = KINDS[spec.kind]
        if model.bundle is None:
            raise Unavailable(f"{kind.label} runs bundles: bench a bundle")
        if (why := kind.missing()) is not None:
            raise Unavailable(why)
        try:
            bundle = open_bundle(model.bundle)
            self._backend = kind.load(bundle, LoadOptions(threads=threads))
        except PkdError as e:
            raise Unavailable(str(e)) from None
        self.name, self.device, self.description = spec.name, self._backend.device, self._backend.description
        self.precision = self._backend.precision or bundle.model.precision


class TensorRTRunner(_AppBackendRunner):
    """A plan of the bundle built for this TensorRT and GPU, else one built here (fp16, profile 1..max batch)."""

    max_batch = 256  # the profile of a plan built here: 1..max_batch

    def __init__(self, spec: BackendSpec, model: BenchModel, device: str, threads: int | None):
        from promptkd_edge.runtime.tensorrt_backend import (
            TensorRTBackend,
            compatible_plan,
            gpu_info,
            import_tensorrt,
            plan_field,
        )

        try:
            trt = import_tensorrt()
            gpu = gpu_info()
        except PkdError as e:
            raise Unavailable(str(e)) from None
        record, _ = compatible_plan(model.engines, trt, gpu)
        if record is not None:
            plan = model.bundle / plan_field(record, "file")
        else:
            record, plan = _build_plan(model, self.max_batch)
        self._backend = TensorRTBackend(plan, record)
        self.name, self.precision, self.device = "tensorrt", plan_field(record, "precision"), "cuda"
        self.description = self._backend.description


def _build_plan(model: BenchModel, max_batch: int) -> tuple[dict, Any]:
    import onnx

    from promptkd_edge.export.graph import head_nodes
    from promptkd_edge.export.precision import to_fp16
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions, api_generation, build_engine, import_tensorrt

    src = model.onnx("fp32")
    if api_generation(import_tensorrt()) >= 11:  # strongly typed: the precision must be in the graph
        fp16 = src.with_name(src.stem + ".fp16.onnx")
        to_fp16(src, fp16, head_nodes(onnx.load(str(src))))
        src = fp16
    options = TrtBuildOptions(precision="fp16", profiles=[(1, min(8, max_batch), max_batch)],
                              keep_fp32_nodes=head_nodes(onnx.load(str(model.onnx("fp32")))))
    record = build_engine(src, src.parent / "engines", input_name="image", input_dims=model.input_shape,
                          options=options)
    return record, src.parent / record["file"]


# the runners of the rows of BACKENDS, by kind; a kind registered later runs in KindRunner
RUNNERS: dict[str, Callable[[BackendSpec, BenchModel, str, int | None], Runner]] = {
    "torch": TorchRunner, "onnxruntime": OrtRunner, "openvino": OpenVinoRunner, "tensorrt": TensorRTRunner,
    "auto": AutoRunner}
