"""The steps of benchmarks/gpu_check.sh, one per process, each writing one JSON into the output folder:
{"step", "name", "status": ok | failed | skipped | timeout, "reason", "seconds", ...figures}.

    python benchmarks/gpu_steps.py plan [--dry-run]            # the step table the shell script runs
    python benchmarks/gpu_steps.py run N --out DIR --work DIR [--dry-run]
    python benchmarks/gpu_steps.py record N STATUS REASON SECONDS --out DIR [--log FILE]
    python benchmarks/gpu_steps.py summary --out DIR

Only the standard library is imported at module level, so `record` and `summary` work whatever else is missing.
`--dry-run` runs every step on this CPU with tiny models (CUDA- and TensorRT-only parts recorded as skipped, with
why). Test hooks: PKD_GPU_CHECK_INJECT="numerics=fail,latency=hang,bundle=crash" makes those steps raise, hang
or die; PKD_GPU_CHECK_TIMEOUTS="latency=3" overrides a step's time limit (seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STATUSES = ("ok", "failed", "skipped", "timeout")
# name, time limit on the GPU box, time limit in a dry run (seconds); priority order. The GPU limits add up to more
# than the script's 8-minute budget on purpose: gpu_check.sh cuts each to what the budget has left.
STEPS: list[tuple[str, int, int]] = [
    ("preflight", 60, 40),
    ("trt_runtime", 60, 30),
    ("numerics", 60, 30),
    ("latency", 150, 40),
    ("text_encoder", 45, 30),
    ("bundle", 90, 60),
    ("distill", 150, 60),
    ("tensorrt", 240, 20),
    ("decode", 90, 40),
]
WHEELS_DOC = "docs/gpu-check.md"


class Skip(Exception):
    """The step cannot run here; the message says why."""


@dataclass
class Step:
    index: int
    name: str
    out: Path
    work: Path
    dry_run: bool
    started: float

    @property
    def path(self) -> Path:
        return json_path(self.out, self.index, self.name)

    def emit(self, figures: dict[str, Any], status: str = "running", reason: str = "") -> None:
        """Write the step's JSON (figures so far while running, so a timeout keeps them)."""
        write_result(self.path, {"step": self.index, "name": self.name, "status": status, "reason": reason,
                                 "seconds": round(time.perf_counter() - self.started, 2), "dry_run": self.dry_run,
                                 **figures})


def json_path(out: Path, index: int, name: str) -> Path:
    return out / f"{index}-{name}.json"


def write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def log_tail(path: Path | None, lines: int = 15) -> list[str]:
    if path is None or not path.is_file():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


# ------------------------------------------------------------------------------------------ shared helpers
def cuda_device() -> str:
    """"cuda" where torch sees a GPU, else Skip."""
    import torch

    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device (torch.cuda.is_available() is False)")
    return "cuda"


def python_env() -> dict[str, str]:
    """The environment for child processes: this repo first on PYTHONPATH, offline."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(args: list[str], timeout: float, log: Path | None = None) -> subprocess.CompletedProcess:
    """A Python child (`-m promptkd_edge ...` or a script) with its stderr kept for the JSON."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=python_env())
    if log is not None:
        log.write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
    return proc


def cli_json(args: list[str], timeout: float, what: str) -> Any:
    proc = run_cli(args, timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{what} exited {proc.returncode}: {tail}")
    return json.loads(proc.stdout)


def make_run(root: Path, arch: str, depth: int, teacher_dim: int, classes: int, seed: int = 0) -> Path:
    """A distillation run folder `pkd export` takes: the student (random weights, `arch`'s base rebuilt from its
    init seed as load_student does) and `classes` random unit class vectors at logit scale 100."""
    import torch

    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.openclip import load_clip, register_tiny_configs
    from promptkd_edge.models.student import StudentConfig, build_student, save_student

    register_tiny_configs()
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    config = StudentConfig(spec=arch, teacher_dim=teacher_dim, prompt_depth=depth, init_seed=seed)
    torch.manual_seed(seed)
    student = build_student(load_clip(arch), config)
    save_student(student.eval(), run / "student.safetensors")
    gen = torch.Generator().manual_seed(seed + 1)
    vectors = torch.nn.functional.normalize(torch.randn(classes, teacher_dim, generator=gen), dim=-1)
    ClassVectors([f"class {i}" for i in range(classes)], vectors, teacher="random", template="a photo of a {}.",
                 logit_scale=100.0).save(run)
    return run


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    from promptkd_edge.export.parity import generated_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(generated_images(count, size, seed=seed)):
        paths.append(folder / f"{i:03d}.jpg")
        img.save(paths[-1], quality=90)
    return paths


# ------------------------------------------------------------------------------------------ 1. preflight
MODULES = ("torch", "torchvision", "open_clip", "ftfy", "regex", "numpy", "PIL", "safetensors", "typer", "rich",
           "onnx", "onnxscript", "onnxruntime", "cupy", "cuda.bindings", "tensorrt", "pynvml", "openvino")
DISTRIBUTIONS = {"open_clip": "open_clip_torch", "PIL": "pillow", "cuda.bindings": "cuda-bindings",
                 "pynvml": "nvidia-ml-py", "cupy": "cupy-cuda13x"}
NEEDED = {"torch": "every step", "open_clip": "steps 3-8 (the models)", "ftfy": "steps 5-8 (CLIP's tokenizer)",
          "cupy": "step 2", "cuda.bindings": "step 2", "onnx": "steps 6 and 8 (export)"}
GPU_ONLY = ("cupy", "cuda.bindings")  # what a dry run on a CPU does without


def _import(name: str) -> dict[str, Any]:
    import importlib
    from importlib import metadata

    try:
        module = importlib.import_module(name)
    except BaseException as e:  # noqa: BLE001 - a broken install raises anything
        return {"ok": False, "error": first_line(e)}
    version = getattr(module, "__version__", None)
    if version is None:
        with contextlib.suppress(metadata.PackageNotFoundError):
            version = metadata.version(DISTRIBUTIONS.get(name, name))
    return {"ok": True, "version": str(version) if version else None}


def preflight(step: Step) -> dict[str, Any]:
    figures: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    imports = {name: _import(name) for name in MODULES}
    figures["imports"] = imports
    missing = {name: why for name, why in NEEDED.items() if not imports[name]["ok"]}
    figures["missing"] = missing
    step.emit(figures)
    if imports["torch"]["ok"]:
        import torch

        cuda = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
        if cuda["available"]:
            p = torch.cuda.get_device_properties(0)
            cuda.update(name=p.name, compute_capability=f"{p.major}.{p.minor}",
                        memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count)
        figures["cuda"] = cuda
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
                               "power.draw,power.limit", "--format=csv"], capture_output=True, text=True, timeout=20)
        figures["nvidia_smi"] = (proc.stdout or proc.stderr).strip().splitlines()
    else:
        figures["nvidia_smi"] = "nvidia-smi not found"
    step.emit(figures)
    try:
        doctor = cli_json(["-m", "promptkd_edge", "doctor", "--json"], 60, "pkd doctor --json")
        figures["doctor"] = doctor
    except Exception as e:  # noqa: BLE001 - recorded; the other facts stand
        figures["doctor"] = {"error": first_line(e)}
    figures["skips"] = {"tensorrt": None if imports["tensorrt"]["ok"] else
                        f"step 8 is skipped: tensorrt does not import ({imports['tensorrt']['error']})"}
    blocking = [f"{n} ({w})" for n, w in missing.items() if not (step.dry_run and n in GPU_ONLY)]
    if blocking:
        step.emit(figures)
        raise RuntimeError(f"missing: {', '.join(blocking)}; carry their wheels in .whl/ ({WHEELS_DOC})")
    return figures


# ------------------------------------------------------------------------------------------ 2. trt_runtime
def trt_runtime(step: Step) -> dict[str, Any]:
    """TensorRTBackend over the real cuda-bindings with the CuPy-backed stand-in engine (dry run: the stand-in
    engine alone on host memory)."""
    import ctypes

    sys.path.insert(0, str(HERE))
    import trt_standin as ts

    if step.dry_run:
        keep: list = []

        def alloc(n: int) -> int:
            keep.append(ctypes.create_string_buffer(n))
            return ctypes.addressof(keep[-1])

        figures = ts.check_engine(ts.numpy_device(), alloc)
        figures["tensorrt_backend"] = ("not driven: a dry run has no CUDA runtime (tests/test_gpu_check.py drives "
                                       "it over the fake cudart)")
        return figures
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        raise Skip(f"cupy does not import ({first_line(e)})") from None
    from promptkd_edge.runtime import tensorrt_backend as tb
    from promptkd_edge.utils.files import sha256_file

    counting = ts.CountingCudart(tb.load_cudart())
    tb.load_cudart = lambda: counting  # the backend looks its CUDA runtime up here: count and check every call
    gpu = tb.gpu_info(0)
    trt = ts.make_standin_tensorrt(ts.cupy_device(0), ts.standin_weights(), ts.PROFILES, ts.SCALE)
    sys.modules["tensorrt"] = trt
    plan = step.work / "standin.plan"
    plan.write_bytes(ts.make_plan(ts.FEATURES, ts.CLASSES, ts.PROFILES))
    record = {"file": plan.name, "sha256": sha256_file(plan), "tensorrt": trt.__version__, "gpu": gpu["name"],
              "compute_capability": gpu["compute_capability"]}
    figures = ts.check_backend(lambda: tb.TensorRTBackend(plan, record, device_id=0), trt, counting)
    figures["gpu"] = gpu
    return figures


# ------------------------------------------------------------------------------------------ 3. numerics
def round_to_tf32(t):
    """float32 -> the nearest value with TF32's 10-bit mantissa (round to nearest even, as the tensor cores'
    input conversion), kept in float32."""
    import torch

    bits = t.float().contiguous().view(torch.int32)
    lsb = (bits >> 13) & 1
    rounded = (bits + 0xFFF + lsb) & ~0x1FFF
    return rounded.view(torch.float32)


@contextlib.contextmanager
def emulated_tf32() -> Iterator[None]:
    """The operands of every linear layer, convolution, attention and matrix product rounded to TF32 (what an
    FP32 plan built with BuilderFlag.TF32 feeds its tensor cores; accumulation stays FP32)."""
    import torch
    import torch.nn.functional as F

    patched = [(F, "linear", 2), (F, "conv2d", 2), (F, "scaled_dot_product_attention", 3), (torch, "matmul", 2),
               (torch, "bmm", 2)]
    originals = [getattr(owner, name) for owner, name, _ in patched]

    def rounding(fn, n: int):
        return lambda *args, **kw: fn(*(round_to_tf32(a) if i < n else a for i, a in enumerate(args)), **kw)

    for (owner, name, n), fn in zip(patched, originals, strict=True):
        setattr(owner, name, rounding(fn, n))
    try:
        yield
    finally:
        for (owner, name, _), fn in zip(patched, originals, strict=True):
            setattr(owner, name, fn)


def compare(reference, other, scale: float) -> dict[str, float]:
    """max / mean |delta logit| at `scale`, min cosine of the features, top-1 agreement."""
    import torch

    ref_logits, logits = scale * reference[1], scale * other[1]
    delta = (logits - ref_logits).abs()
    cos = torch.nn.functional.cosine_similarity(reference[0], other[0], dim=-1)
    return {"max_abs_logit_delta": float(delta.max()), "mean_abs_logit_delta": float(delta.mean()),
            "min_cosine": float(cos.min()),
            "top1_agreement": float((logits.argmax(1) == ref_logits.argmax(1)).float().mean())}


def numerics(step: Step) -> dict[str, Any]:
    import torch

    from promptkd_edge.export.parity import THRESHOLDS
    from promptkd_edge.models.openclip import load_clip, register_tiny_configs
    from promptkd_edge.models.student import StudentConfig, build_student

    register_tiny_configs()
    device = "cpu" if step.dry_run else cuda_device()
    arch, depth, dim, classes, batch = (("pkd-tiny-student", 3, 128, 10, 8) if step.dry_run
                                        else ("ViT-B-16", 9, 768, 100, 64))
    torch.manual_seed(0)
    student = build_student(load_clip(arch), StudentConfig(spec=arch, teacher_dim=dim, prompt_depth=depth)).eval()
    student = student.to(device)
    side = student.preprocess.size
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, *side, generator=gen).to(device)
    vectors = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=-1).to(device)
    scale = 100.0

    def forward(dtype=None) -> tuple:
        with torch.inference_mode(), (torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()):
            features = student(images).float()
        return features, features @ vectors.t()

    saved_flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    figures: dict[str, Any] = {"architecture": arch, "device": device, "batch": batch, "classes": classes,
                               "logit_scale": scale, "fp32_gate_max_abs_logit_diff":
                                   THRESHOLDS["fp32"]["max_abs_logit_diff"]}
    try:
        reference = forward()
        with emulated_tf32():
            emulated = forward()
        figures["tf32_emulated"] = compare(reference, emulated, scale)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            real_tf32 = forward()
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            figures["tf32"] = compare(reference, real_tf32, scale)
            figures["tf32_emulated_vs_tf32"] = compare(real_tf32, emulated, scale)  # how well the emulation predicts it
        else:
            figures["tf32"] = None
            figures["tf32_reason"] = "TF32 is a CUDA tensor-core mode; a dry run has only the emulation"
        step.emit(figures)
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                figures[name] = compare(reference, forward(dtype), scale)
            except RuntimeError as e:  # e.g. an op without a float16 kernel on this CPU
                figures[name], figures[f"{name}_reason"] = None, first_line(e)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_flags
    real = figures.get("tf32") or figures["tf32_emulated"]
    figures["tf32_passes_fp32_gate"] = real["max_abs_logit_delta"] <= figures["fp32_gate_max_abs_logit_diff"]
    return figures


# ------------------------------------------------------------------------------------------ 4. latency
def latency(step: Step) -> dict[str, Any]:
    """`pkd bench`'s harness (promptkd_edge.bench): compute-only p50/p99 and first-call time per backend."""
    from promptkd_edge.bench.backends import parse_backends
    from promptkd_edge.bench.harness import BenchConfig, run_bench
    from promptkd_edge.models.openclip import register_tiny_configs

    register_tiny_configs()
    if step.dry_run:
        target, device, backends, timing = "pkd-tiny-student", "cpu", ["torch-eager-fp32", "torch-eager-fp16"], \
            dict(warmup=1, iterations=3, min_seconds=0.0, max_seconds=1.0)
    else:
        target, device = "ViT-B-16", cuda_device()
        backends = ["torch-eager-fp16", "torch-eager-bf16", "torch-cudagraphs-bf16"]
        timing = dict(warmup=5, iterations=50, min_seconds=0.3, max_seconds=1.5)
    figures: dict[str, Any] = {"target": target, "device": device, "rows": [], "unavailable": []}
    for name in backends:  # one at a time, so that a timeout keeps the backends already measured
        cfg = BenchConfig(target=target, backends=parse_backends(name), batch_sizes=[1, 8, 32], device=device,
                          classes=100, end_to_end=False, command="benchmarks/gpu_steps.py latency", **timing)
        report = run_bench(cfg)
        figures["environment"] = report.get("environment")
        figures["unavailable"] += report["unavailable"]
        figures["rows"] += [{k: r[k] for k in ("backend", "precision", "batch", "p50_ms", "p99_ms", "images_per_s",
                                                "first_call_ms", "peak_gpu_mib")} for r in report["results"]]
        step.emit(figures)
    if not figures["rows"]:
        raise RuntimeError("no backend ran: " + "; ".join(f"{u['backend']}: {u['reason']}"
                                                          for u in figures["unavailable"]))
    return figures


# ------------------------------------------------------------------------------------------ 5. text encoder
def text_encoder(step: Step) -> dict[str, Any]:
    """The teacher's text tower (what `pkd classes` and the bundle's text encoder run): names per second and
    features in half precision against FP32, tokenizer included."""
    import torch

    from promptkd_edge.models.openclip import load_clip
    from promptkd_edge.models.teacher import Teacher

    if step.dry_run:
        arch, names, device, half = "pkd-tiny-teacher", 64, "cpu", ("bf16", torch.bfloat16)
    else:
        arch, names, device, half = "ViT-L-14", 1000, cuda_device(), ("fp16", torch.float16)
    torch.manual_seed(0)
    teacher = Teacher(load_clip(arch, device=device))
    texts = [f"a photo of a object {i} of kind {i % 97}." for i in range(names)]
    figures: dict[str, Any] = {"architecture": arch, "device": device, "names": names}

    def timed(dtype) -> tuple[torch.Tensor, float]:
        with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
            teacher.encode_text(texts[:8])  # untimed: first-call set-up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            features = teacher.encode_text(texts)
            if device == "cuda":
                torch.cuda.synchronize()
        return features.float(), time.perf_counter() - start

    reference, seconds = timed(None)
    figures["fp32"] = {"seconds": round(seconds, 4), "names_per_s": round(names / seconds, 1)}
    features, seconds = timed(half[1])
    cos = torch.nn.functional.cosine_similarity(reference, features, dim=-1)
    figures[half[0]] = {"seconds": round(seconds, 4), "names_per_s": round(names / seconds, 1),
                        "min_cosine_vs_fp32": float(cos.min()),
                        "max_abs_delta_vs_fp32": float((reference - features).abs().max())}
    return figures


# ------------------------------------------------------------------------------------------ 6. bundle
def _predictions(result: dict) -> dict[str, tuple[list[str], list[float]]]:
    return {Path(r["image"]).name: (r["labels"], r["probabilities"]) for r in result["predictions"]}


def bundle(step: Step) -> dict[str, Any]:
    """A tiny run exported on the CPUs, then `pkd predict --backend torch` (CUDA where torch sees one) from image
    files, against the same bundle on ONNX Runtime."""
    import torch

    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    start = time.perf_counter()
    run = make_run(step.work / "tiny", "pkd-tiny-student", 3, 128, 10)
    out = step.work / "tiny" / "bundle"
    manifest = export_run(run, out, ExportOptions(precision="fp32", parity_images=16, overwrite=True))
    figures: dict[str, Any] = {"export_seconds": round(time.perf_counter() - start, 2), "valid": manifest.valid,
                               "gate": [{"target": p.target, "precision": p.precision, "passed": p.passed,
                                         "max_abs_logit_diff": p.max_abs_logit_diff} for p in manifest.parity]}
    step.emit(figures)
    images = write_images(step.work / "tiny" / "images", 12, (40, 40))
    results = {}
    for backend in ("torch", "onnxruntime"):
        t = time.perf_counter()
        results[backend] = cli_json(["-m", "promptkd_edge", "predict", str(out), *map(str, images), "--backend",
                                     backend, "--top-k", "3", "--json"], 120, f"pkd predict --backend {backend}")
        figures[f"{backend}_seconds"] = round(time.perf_counter() - t, 2)
        figures[f"{backend}_description"] = results[backend]["backend"]
    torch_rows, ort_rows = (_predictions(results[b]) for b in ("torch", "onnxruntime"))
    if set(torch_rows) != set(ort_rows) or len(torch_rows) != len(images):
        raise RuntimeError(f"predicted {len(torch_rows)} and {len(ort_rows)} of {len(images)} images")
    figures["images"] = len(images)
    figures["top1_agreement"] = sum(torch_rows[k][0][0] == ort_rows[k][0][0] for k in torch_rows) / len(images)
    figures["max_abs_probability_delta"] = max(abs(a - b) for k in torch_rows for a, b in
                                               zip(torch_rows[k][1], ort_rows[k][1], strict=True))
    figures["torch_on_cuda"] = "cuda" in results["torch"]["backend"]
    if not step.dry_run and torch.cuda.is_available() and not figures["torch_on_cuda"]:
        raise RuntimeError(f"pkd predict --backend torch ran on {results['torch']['backend']}, not CUDA")
    return figures


# ------------------------------------------------------------------------------------------ 7. distill
def distill(step: Step) -> dict[str, Any]:
    """benchmarks/distill_throughput.py: ViT-L-14 -> ViT-B-16 bf16, teacher every step vs the teacher cache."""
    if step.dry_run:
        args = ["--size", "tiny", "--device", "cpu", "--batch-sizes", "8", "--steps", "4", "--warmup-steps", "1",
                "--workers", "0"]
    else:
        cuda_device()
        workers = max(1, min(12, (os.cpu_count() or 2) - 1))
        args = ["--size", "real", "--device", "cuda", "--precision", "bf16", "--batch-sizes", "64,256", "--steps",
                "40", "--warmup-steps", "5", "--workers", str(workers)]
    out = step.work / "distill_throughput.json"
    command = [sys.executable, str(HERE / "distill_throughput.py"), *args, "--cache-views", "1", "--out", str(out)]
    figures: dict[str, Any] = {"command": " ".join(command[1:]), "rows": []}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                          env=python_env()) as proc:
        lines = []
        for line in proc.stdout:  # each finished (mode, batch) row is printed as JSON: keep them as they come
            lines.append(line.rstrip())
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    figures["rows"].append(json.loads(line))
                    step.emit(figures)
    if proc.returncode != 0:
        raise RuntimeError(f"distill_throughput.py exited {proc.returncode}: {(lines or ['?'])[-1]}")
    report = json.loads(out.read_text())
    figures.update(rows=report["results"], peak_host_rss_gib=report["peak_host_rss_gib"])
    by_batch: dict[int, dict[str, float]] = {}
    for row in report["results"]:
        by_batch.setdefault(row["batch"], {})[row["mode"]] = row["images_per_second"]
    figures["cache_speedup"] = {str(b): round(m["teacher-feature cache"] / m["teacher every step"], 3)
                                for b, m in by_batch.items() if len(m) == 2}
    return figures


# ------------------------------------------------------------------------------------------ 8. tensorrt
def tensorrt(step: Step) -> dict[str, Any]:
    """`pkd export BUNDLE --trt` FP16 (from the FP32 bundle) and INT8 (from the INT8 QDQ bundle) with their gates,
    each plan's trtexec script where trtexec exists, and `pkd bench --backends tensorrt`."""
    if step.dry_run:
        raise Skip("dry run: TensorRT builds and runs plans only on an NVIDIA GPU")
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise Skip(f"tensorrt does not import ({first_line(e)}); this step runs where TensorRT is installed "
                   "(pip install 'promptkd-edge[trt-cu13]', or an nvcr.io TensorRT container)") from None
    cuda_device()
    figures: dict[str, Any] = {"tensorrt": trt.__version__, "plans": {}}
    run = make_run(step.work / "vit-b-16", "ViT-B-16", 9, 768, 100)
    for precision in ("fp16", "int8"):
        source = "fp32" if precision == "fp16" else "int8"
        bundle_dir = step.work / f"bundle-{source}"
        t = time.perf_counter()
        if not bundle_dir.exists():
            cli_json(["-m", "promptkd_edge", "export", str(run), "--out", str(bundle_dir), "--precision", source,
                      "--parity-images", "32", "--calibration-images", "64", "--json"], 240,
                     f"pkd export --precision {source}")
        manifest = cli_json(["-m", "promptkd_edge", "export", str(bundle_dir), "--trt", "--precision", precision,
                             "--trt-profile", "1,8,32", "--json"], 300, f"pkd export --trt --precision {precision}")
        engine = manifest["engines"][-1]
        gates = [p for p in manifest["parity"] if p.get("engine") == engine["file"]]
        plan = {"seconds": round(time.perf_counter() - t, 1), "valid": manifest["valid"], "engine": engine,
                "gate": gates}
        script = bundle_dir / engine["trtexec"]
        if shutil.which("trtexec"):
            proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=300, cwd=bundle_dir)
            plan["trtexec"] = {"exit": proc.returncode, "tail": proc.stdout.strip().splitlines()[-3:]}
        else:
            plan["trtexec"] = f"trtexec not on PATH; script written: {script.name}"
        bench = cli_json(["-m", "promptkd_edge", "bench", str(bundle_dir), "--backends", "tensorrt",
                          "--batch-sizes", "1,8,32", "--no-e2e", "--out", str(step.work / f"bench-{precision}"),
                          "--json"], 120, "pkd bench --backends tensorrt")
        plan["latency"] = [{k: r[k] for k in ("batch", "p50_ms", "p99_ms", "images_per_s")} for r in bench["results"]]
        figures["plans"][precision] = plan
        step.emit(figures)
    return figures


# ------------------------------------------------------------------------------------------ 9. decode
def decode(step: Step) -> dict[str, Any]:
    """1080p JPEG files to the student's crop: the reference (PIL, CPU), the DCT-domain downscale (CPU) and torch's
    decoder (nvJPEG on CUDA, batches of 16; its CPU code in a dry run): ms/image and the difference from the
    reference in pixels and in the ViT-B-16 student's logits (random weights; the tiny student in a dry run)."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from promptkd_edge.export.parity import generated_images
    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.student import load_student
    from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare

    device = "cpu" if step.dry_run else cuda_device()
    arch, depth, dim, count = ("pkd-tiny-student", 3, 128, 8) if step.dry_run else ("ViT-B-16", 9, 768, 64)
    run = make_run(step.work / "student", arch, depth, dim, 100)
    student, vectors = load_student(run / "student.safetensors").to(device).eval(), ClassVectors.load(run)
    spec = PreprocessSpec.from_dict(student.preprocess.to_dict())
    (step.work / "frames").mkdir(parents=True, exist_ok=True)
    frames = []
    for i, img in enumerate(generated_images(count, (720, 1280), seed=3)):  # 1.5x: 1920x1080, per-pixel noise
        frames.append(step.work / "frames" / f"{i:03d}.jpg")
        img.save(frames[-1], quality=90)
    with Image.open(frames[0]) as first:
        frame_size = list(first.size)
    figures: dict[str, Any] = {"device": device, "student": arch, "crop": list(spec.size), "frames": count,
                               "frame_size": frame_size, "jpeg_quality": 90, "batch": 16, "variants": {}}

    def logits(crops: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            e = student(torch.from_numpy(prepare(list(crops), spec)).to(device)).float().cpu()
            return vectors.logits(e).double().numpy()

    ref_crops = ref_logits = None
    for name, variant in (("reference", "exact"), ("draft", "draft"), ("torch", f"torch-{device}")):
        s = dataclasses.replace(spec, decode=variant)
        prepare(frames[:2], s, input_format="uint8")  # warm-up: CUDA context, nvJPEG handles
        t = time.perf_counter()
        crops = np.concatenate([prepare(frames[i:i + 16], s, input_format="uint8") for i in range(0, count, 16)])
        row: dict[str, Any] = {"decode": variant, "ms_per_image": round(1000 * (time.perf_counter() - t) / count, 3)}
        out = logits(crops)
        if ref_crops is None:
            ref_crops, ref_logits = crops, out
        pixels = np.abs(crops.astype(np.int16) - ref_crops)
        row.update(max_abs_pixel_diff=int(pixels.max()), mean_abs_pixel_diff=round(float(pixels.mean()), 4),
                   max_abs_logit_diff=round(float(np.abs(out - ref_logits).max()), 5),
                   top1_agreement=float((out.argmax(1) == ref_logits.argmax(1)).mean()))
        figures["variants"][name] = row
        step.emit(figures)
    return figures


STEP_FUNCTIONS: dict[str, Callable[[Step], dict[str, Any]]] = {
    "preflight": preflight, "trt_runtime": trt_runtime, "numerics": numerics, "latency": latency,
    "text_encoder": text_encoder, "bundle": bundle, "distill": distill, "tensorrt": tensorrt, "decode": decode}


# ------------------------------------------------------------------------------------------ commands
def _overrides(variable: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in os.environ.get(variable, "").split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}


def plan(dry_run: bool) -> list[tuple[int, str, int]]:
    limits = _overrides("PKD_GPU_CHECK_TIMEOUTS")
    return [(i, name, int(limits.get(name, dry if dry_run else gpu))) for i, (name, gpu, dry) in
            enumerate(STEPS, 1)]


def run_step(index: int, out: Path, work: Path, dry_run: bool) -> int:
    name = STEPS[index - 1][0]
    step = Step(index, name, out, work, dry_run, time.perf_counter())
    step.emit({})
    inject = _overrides("PKD_GPU_CHECK_INJECT").get(name)
    try:
        if inject == "fail":
            raise RuntimeError("injected failure (PKD_GPU_CHECK_INJECT)")
        if inject == "hang":
            time.sleep(10**6)
        if inject == "crash":
            os._exit(9)
        figures = STEP_FUNCTIONS[name](step)
        step.emit(figures, "ok")
    except Skip as e:
        step.emit(_current(step), "skipped", str(e))
    except BaseException as e:  # noqa: BLE001 - the step's JSON says what went wrong; the script goes on
        traceback.print_exc()
        step.emit({**_current(step), "traceback": traceback.format_exc().splitlines()[-6:]}, "failed",
                  first_line(e))
    return 0


def _current(step: Step) -> dict[str, Any]:
    """The figures the step emitted so far (a failure keeps them)."""
    try:
        old = json.loads(step.path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in old.items() if k not in ("step", "name", "status", "reason", "seconds", "dry_run")}


def record(index: int, status: str, reason: str, seconds: float, out: Path, log: Path | None,
           dry_run: bool) -> None:
    """What the shell saw (a timeout, a process that died): kept with the figures the step wrote before."""
    name = STEPS[index - 1][0]
    path = json_path(out, index, name)
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        old = {}
    figures = {k: v for k, v in old.items() if k not in ("step", "name", "status", "reason", "seconds")}
    write_result(path, {"step": index, "name": name, "status": status, "reason": reason,
                        "seconds": round(seconds, 2), "dry_run": dry_run, **figures,
                        **({"log_tail": log_tail(log)} if status != "skipped" else {})})


def summary(out: Path) -> str:
    rows = []
    for index, (name, _, _) in enumerate(STEPS, 1):
        path = json_path(out, index, name)
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            r = {"status": "not run", "seconds": "", "reason": f"no {path.name} (not in --steps?)"}
        rows.append(f"| {index} | {name} | {r['status']} | {r.get('seconds', '')} | {_headline(name, r)} |")
    return "\n".join(["| # | step | status | s | figures / reason |", "|---|---|---|---:|---|", *rows])


def _headline(name: str, r: dict[str, Any]) -> str:
    """One line per step: its main figures when it ran, else its reason."""
    if r.get("status") != "ok":
        return str(r.get("reason", ""))[:160]
    try:
        if name == "numerics":
            return "; ".join(f"{k} max|dlogit| {r[k]['max_abs_logit_delta']:.2e} top1 {r[k]['top1_agreement']:.3f}"
                             for k in ("tf32", "tf32_emulated", "fp16", "bf16") if r.get(k))
        if name == "latency":
            return "; ".join(f"{x['backend']} b{x['batch']} p50 {x['p50_ms']:.2f} ms" for x in r["rows"][:9])
        if name == "distill":
            return "; ".join(f"{x['mode']} b{x['batch']} {x['images_per_second']:.0f} img/s" for x in r["rows"])
        if name == "text_encoder":
            return "; ".join(f"{k} {r[k]['names_per_s']} names/s" for k in ("fp32", "fp16", "bf16") if k in r)
        if name == "bundle":
            return (f"{r['torch_description']}: top-1 agreement with ONNX Runtime {r['top1_agreement']:.3f}, "
                    f"max |dp| {r['max_abs_probability_delta']:.1e}")
        if name == "trt_runtime":
            return ", ".join(f"{k} {r[k]}" for k in ("profile_switches", "run_staged_p50_us", "max_abs_error")
                             if k in r)
        if name == "decode":
            return "; ".join(f"{k} ({v['decode']}) {v['ms_per_image']:.2f} ms/img, max|dpx| {v['max_abs_pixel_diff']}"
                             f" max|dlogit| {v['max_abs_logit_diff']:.3g}" for k, v in r["variants"].items())
        if name == "preflight":
            return f"missing: {', '.join(r['missing']) or 'nothing'}; cuda: {r.get('cuda', {}).get('name', 'none')}"
    except (KeyError, TypeError):
        pass
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("run")
    p.add_argument("index", type=int, choices=range(1, len(STEPS) + 1))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("record")
    p.add_argument("index", type=int, choices=range(1, len(STEPS) + 1))
    p.add_argument("status", choices=STATUSES)
    p.add_argument("reason")
    p.add_argument("seconds", type=float)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("summary")
    p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.command == "plan":
        print("\n".join(f"{i} {name} {limit}" for i, name, limit in plan(args.dry_run)))
    elif args.command == "run":
        args.work.mkdir(parents=True, exist_ok=True)
        return run_step(args.index, args.out, args.work, args.dry_run)
    elif args.command == "record":
        record(args.index, args.status, args.reason, args.seconds, args.out, args.log, args.dry_run)
    else:
        print(summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
