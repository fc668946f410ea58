"""The runtime backends: the `Backend` protocol and the one registry `KINDS` that `Classifier.from_bundle`,
`backend="auto"`, `pkd bench`, `pkd doctor` and the CLI help read.

A kind declares what it runs on (`devices`), which gate vouches for it, whether it can load here (`missing`: the
reason it cannot, checked without loading a model), how it loads a bundle (`load`), and what `auto` may take of it
(`auto_gpu`: a GPU backend tried in registry order before the CPU; `auto_cpu`: the CPU options `auto` measures).
A new backend is one module with its class and one `Kind` here. Imports no torch, and no backend library until a
kind is asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from promptkd_edge.errors import PkdError

if TYPE_CHECKING:
    from promptkd_edge.runtime.auto import Choice, Option
    from promptkd_edge.runtime.bundle import Bundle

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "bf16")  # what `precision=` may force on OpenVINO
HINTS = ("latency", "throughput")  # OpenVINO's performance hints
PROBE_FRAME = (1080, 1920)  # the frame size backend="auto" times a frame bundle's CPU options on


@runtime_checkable
class Backend(Protocol):
    """What every backend is: host arrays in, {output name: host array} out, safe from several threads. The
    backend classes subclass it, so the optional capabilities have their defaults."""

    name: str  # its kind's name in KINDS
    device: str  # where it computes: "cpu" or "cuda"
    description: str  # one line: library, version, device, precision
    precision: str | None = None  # what it computes in, where it says (a TensorRT plan's, OpenVINO's)
    max_batch: int | None = None  # the largest batch it takes (a TensorRT plan's profiles); None: any
    frame_sizes: list | None = None  # [min, opt, max] (height, width) a frame plan was built for; None: any
    fell_back_to_cpu: bool = False  # a GPU provider was asked for and the CPU runs the model (ONNX Runtime)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class LoadOptions:
    """What `Classifier.from_bundle` passes on to a kind's loader; `notes` collects what the user should know."""

    providers: str | list[str] = "auto"  # ONNX Runtime's execution providers
    threads: int | None = None
    device_id: int = 0  # the GPU of a TensorRT plan
    precision: str | None = None  # OpenVINO's forced precision (None: bf16 only where its gate passed)
    hint: str = "latency"  # OpenVINO's performance hint
    probe: bool = True  # auto on a CPU measures the gated options (False: ONNX Runtime unmeasured)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Kind:
    """One backend kind of the registry."""

    name: str
    label: str  # its library's name in messages
    summary: str  # what it is, for help texts and `pkd doctor`
    devices: tuple[str, ...]  # where it can compute
    gate: str  # which parity gate vouches for it on a bundle
    modules: tuple[str, ...]  # the Python modules it needs
    install: str  # what installs them
    load: Callable[[Bundle, LoadOptions], Backend]
    auto_gpu: Callable[[Bundle, LoadOptions], Backend | None] | None = None  # raises PkdError: a note, next kind
    auto_cpu: Callable[[Bundle, LoadOptions], list[Option]] | None = None

    def missing(self) -> str | None:
        """None when the modules it needs are installed here, else which are not and what installs them (found
        without importing them)."""
        import importlib.util

        def found(module: str) -> bool:
            try:
                return importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                return False

        absent = [m for m in self.modules if not found(m)]
        return f"needs {', '.join(absent)}: {self.install}" if absent else None

    @property
    def auto(self) -> bool:
        """Whether `backend="auto"` may pick it."""
        return self.auto_gpu is not None or self.auto_cpu is not None


# ---------------------------------------------------------------------------------------------------- TensorRT
def _tensorrt(bundle: Bundle, opts: LoadOptions) -> Backend:
    """The TensorRT backend on the first plan of the bundle built for this TensorRT version and GPU."""
    from promptkd_edge.runtime.tensorrt_backend import TensorRTBackend, compatible_plan, gpu_info, import_tensorrt

    engines = [e for e in bundle.engines if e.parity_passed]
    if not engines:
        raise PkdError(f"bundle {bundle.path} holds no TensorRT plan; build one with `pkd export {bundle.path} --trt`")
    engine, reasons = compatible_plan(engines, import_tensorrt(), gpu_info(opts.device_id))
    if engine is None:
        raise PkdError(reasons[0])
    return TensorRTBackend(bundle.path / engine.file, engine, device_id=opts.device_id)


def _tensorrt_auto(bundle: Bundle, opts: LoadOptions) -> Backend | None:
    return _tensorrt(bundle, opts) if bundle.engines else None


# ------------------------------------------------------------------------------------------------ ONNX Runtime
def _ort(bundle: Bundle, opts: LoadOptions, providers: str | list[str] | None = None) -> Backend:
    from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle.model_path, providers=opts.providers if providers is None else providers,
                              threads=opts.threads, precision=bundle.model.precision)


def _unmeasured(opts: LoadOptions) -> bool:
    """auto takes ONNX Runtime as asked, unmeasured: providers given, or probing off (and no precision forced)."""
    return opts.providers != "auto" or (not opts.probe and opts.precision is None)


def _ort_gpu(bundle: Bundle, opts: LoadOptions) -> Backend | None:
    """ONNX Runtime on a GPU provider, where this build has one and it loads; else None (the CPU options next)."""
    import onnxruntime

    from promptkd_edge.runtime.onnxruntime_backend import GPU_PROVIDERS

    if _unmeasured(opts) or not any(p in onnxruntime.get_available_providers() for p in GPU_PROVIDERS):
        return None
    gpu = _ort(bundle, opts, "auto")
    if gpu.device == "cuda":
        return gpu
    gpu.close()
    return None


def _ort_cpu(bundle: Bundle, opts: LoadOptions) -> list[Option]:
    from promptkd_edge.runtime.auto import Option

    return [Option("onnxruntime", lambda: _ort(bundle, opts, "cpu"), f"{bundle.model.precision} gate")]


# ---------------------------------------------------------------------------------------------------- OpenVINO
def bf16_gated(bundle: Bundle) -> bool:
    """The bundle's bf16 gate passed and this CPU computes bf16 natively."""
    from promptkd_edge.runtime.openvino_backend import has_bf16

    return "openvino-bf16" in bundle.manifest.passed_gates() and has_bf16()


def _openvino(bundle: Bundle, opts: LoadOptions) -> Backend:
    from promptkd_edge.runtime.openvino_backend import OpenVinoBackend

    chosen = opts.precision or ("bf16" if bf16_gated(bundle) else "fp32")
    if chosen == "bf16" and "openvino-bf16" not in bundle.manifest.passed_gates():
        opts.notes.append("bf16 forced: this bundle has no passing bf16 parity gate (add one with "
                          f"`pkd export {bundle.path} --precision bf16`)")
    return OpenVinoBackend(bundle.model_path, precision=chosen, threads=opts.threads, hint=opts.hint)


def _openvino_cpu(bundle: Bundle, opts: LoadOptions) -> list[Option]:
    """OpenVINO f32 on an FP32 or INT8 graph (the graph's own arithmetic); bf16 on either where the bf16 gate
    passed (not with precision="fp32")."""
    from promptkd_edge.runtime.auto import Option
    from promptkd_edge.runtime.openvino_backend import OpenVinoBackend, openvino_version

    graph = bundle.model.precision
    if openvino_version() is None or graph not in ("fp32", "int8"):
        return []

    def openvino(p: str):
        return lambda: OpenVinoBackend(bundle.model_path, precision=p, threads=opts.threads, hint=opts.hint)

    options = [Option("openvino-fp32", openvino("fp32"), f"{graph} gate")]
    if opts.precision is None and bf16_gated(bundle):
        options.append(Option("openvino-bf16", openvino("bf16"), "bf16 gate"))
    return options


# ------------------------------------------------------------------------------------------------------- torch
def _torch(bundle: Bundle, opts: LoadOptions) -> Backend:
    from promptkd_edge.runtime.torch_backend import TorchBackend

    if bundle.model.input_format == "frame":
        raise PkdError("the torch backend runs the student on crops; a --frame-input bundle resizes frames in "
                       "its ONNX graph: use backend onnxruntime, openvino or tensorrt")
    return TorchBackend(bundle.path, bundle.model)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("tensorrt", "TensorRT", "a TensorRT plan built for this GPU", ("cuda",), "the plan's own gate against "
         "model.onnx", ("tensorrt", "cuda"), "pip install 'promptkd-edge[trt]' (or [trt-cu13]; JetPack: [jetson])",
         _tensorrt, auto_gpu=_tensorrt_auto),
    Kind("onnxruntime", "ONNX Runtime", "ONNX Runtime on model.onnx (CPU, or a GPU provider)", ("cpu", "cuda"),
         "the graph's gate against PyTorch", ("onnxruntime",), "pip install promptkd-edge (GPUs: [gpu])",
         _ort, auto_gpu=_ort_gpu, auto_cpu=_ort_cpu),
    Kind("openvino", "OpenVINO", "OpenVINO on model.onnx, f32 or bf16 (CPU)", ("cpu",),
         "the graph's gate (f32), the bf16 gate (bf16)", ("openvino",), "pip install 'promptkd-edge[openvino]'",
         _openvino, auto_cpu=_openvino_cpu),
    Kind("torch", "PyTorch", "the PyTorch student (student.safetensors), the reference", ("cpu", "cuda"),
         "none: the gates compare against it", ("torch", "open_clip"), "pip install 'promptkd-edge[train]'", _torch),
)}
NAMES = ("auto", *sorted(KINDS))  # what `backend=` takes (KINDS' order is auto's: the GPU kinds tried first)


def help_text() -> str:
    """The `--backend` help of `pkd predict`, from the registry."""
    return (f"auto (a TensorRT plan for this GPU, else the fastest gated option measured on this CPU, cached), "
            f"{', '.join(NAMES[1:-1])} or {NAMES[-1]}.")


def check_options(backend: str, precision: str | None, hint: str) -> str:
    """The backend to load after checking the arguments (precision bf16 means OpenVINO); one line when wrong."""
    if backend not in NAMES:
        raise PkdError(f"unknown backend '{backend}'; choose one of {', '.join(NAMES)}")
    if hint not in HINTS:
        raise PkdError(f"unknown OpenVINO hint '{hint}'; choose latency or throughput")
    if precision is not None and precision not in PRECISIONS:
        raise PkdError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        if backend not in ("auto", "openvino"):
            raise PkdError(f"precision bf16 runs on OpenVINO (backend 'openvino' or 'auto'), not on {backend}")
        return "openvino"
    return backend


def load_backend(backend: str, bundle: Bundle, opts: LoadOptions) -> tuple[Backend, Choice | None]:
    """(the loaded backend, the Choice when auto measured the CPU options). `backend` is a kind's name, or "auto":
    the kinds' GPU backends in registry order (a failure is a note), then the CPU: ONNX Runtime unmeasured where
    providers are given or probing is off, else the fastest gated CPU option, measured once and cached."""
    if backend != "auto":
        return KINDS[backend].load(bundle, opts), None
    for kind in KINDS.values():
        if kind.auto_gpu is None:
            continue
        try:
            loaded = kind.auto_gpu(bundle, opts)
        except PkdError as e:
            opts.notes.append(f"{kind.label} not used: {e}")
            continue
        if loaded is not None:
            return loaded, None
    if _unmeasured(opts):
        return _ort(bundle, opts), None
    from promptkd_edge.runtime.auto import choose

    options = [o for kind in KINDS.values() if kind.auto_cpu is not None for o in kind.auto_cpu(bundle, opts)]
    return choose(options, probe_input(bundle), model_sha256=bundle.manifest.files[bundle.model.file],
                  threads=opts.threads, versions={**_versions(), "openvino hint": opts.hint})


def probe_input(bundle: Bundle) -> Any:
    """The input `runtime.auto` times the options on: the model's, a frame graph's at 1080p."""
    spec = bundle.model.inputs[0]
    if bundle.model.input_format != "frame":
        return spec
    return dataclasses.replace(spec, shape=[spec.shape[0], *PROBE_FRAME, 3])


def _versions() -> dict[str, str | None]:
    from promptkd_edge.utils.versions import distribution_version

    return {dist: distribution_version(dist) for dist in ("onnxruntime", "onnxruntime-gpu", "openvino")}


def availability() -> list[dict[str, Any]]:
    """Each kind, whether it can load here (and why not), its devices, gate, and whether auto may pick it: what
    `pkd doctor` lists."""
    return [{"backend": k.name, "summary": k.summary, "available": (why := k.missing()) is None, "reason": why,
             "devices": list(k.devices), "gate": k.gate, "auto": k.auto, "install": k.install}
            for k in KINDS.values()]
