"""`pkd bench`: per model, backend and batch size, compute-only and end-to-end timings in one report.

Recipe: resolve the target (student, optional teacher) -> for each backend: load it (first-call latency =
load + first inference), then per batch: warm-up and timed calls on a batch already in place (compute), then
camera-like inputs to top-k labels (end to end: 1080p JPEG files, and 1080p uint8 frames in memory) through the
runtime's pipeline (runtime/pipeline.py, what `Classifier.predict` and `pkd predict` run: the next batch decoded and
resized on worker threads while the backend computes), each with its ratio to the compute row; peak memory and,
where readable, power -> teacher/student ratios and throughput limits -> the report record (bench/record.py,
docs/bench-report.md).
"""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.bench.backends import (
    DEVICE_RESIDENT,
    BackendSpec,
    Runner,
    load,
    prepare_artifacts,
    rows,
)
from promptkd_edge.bench.record import BenchReport, Environment, ResultRow
from promptkd_edge.bench.targets import BenchModel, Unavailable, default_teacher, resolve
from promptkd_edge.bench.timing import Timing, time_calls
from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.formats.run import is_run
from promptkd_edge.utils.devices import resolve_device
from promptkd_edge.utils.progress import NullProgress, Progress


@dataclass
class BenchConfig:
    """What to time and how long. `max_seconds` bounds each (backend, batch) timing loop."""

    target: str
    backends: list[BackendSpec] | None = None  # None: every backend (those that cannot run are reported)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    warmup: int = 10
    iterations: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    device: str = "auto"
    threads: int | None = None
    compare_teacher: bool = False
    teacher: str | None = None
    classes: int = 1000
    end_to_end: bool = True
    images: str | None = None
    e2e_images: int = 32
    e2e_frames: int = 16  # distinct 1080p frames held in memory for the end_to_end_frames rows
    workers: int | None = None  # end-to-end decoding threads (None: the runtime's default; 0: sequential)
    e2e_max_batch: int = 32  # end to end only up to this batch: beyond it, decoding on the CPU is all it measures
    top_k: int = 5
    peak_tflops: float | None = None  # the device's peak (e.g. 790 bf16 for an H200) -> throughput limits
    text_names: int = 0  # > 0: also time the bundle's text encoder on this many class names
    command: str = ""

    def validate(self) -> BenchConfig:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise PkdError("--batch-sizes must be positive integers, e.g. 1,8,32")
        if self.text_names < 0:
            raise PkdError("--text-names must be >= 0")
        if self.iterations < 1 or self.warmup < 0:
            raise PkdError("--iterations must be >= 1 and --warmup >= 0")
        if self.end_to_end:
            from promptkd_edge.runtime.pipeline import resolve_workers

            resolve_workers(self.workers)
        if self.device != "auto":
            resolve_device(self.device)
        return self


def measure(cfg: BenchConfig, progress: Progress | None = None) -> BenchReport:
    """Time every (model, backend, batch) of `cfg`; returns the report record."""
    from promptkd_edge.bench.environment import describe

    progress = progress or NullProgress()
    cfg.validate()
    device = resolve_device(cfg.device)
    teacher = (cfg.teacher or default_teacher(_kind(cfg.target), cfg.target)) if cfg.compare_teacher else None
    kind, models = resolve(cfg.target, classes=cfg.classes, teacher=teacher)
    backends = cfg.backends or list(rows().values())
    batches = sorted(set(cfg.batch_sizes))
    report = BenchReport(
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), command=cfg.command,
        target={"kind": kind, "name": Path(cfg.target).name if kind != "architecture" else cfg.target,
                "path": str(Path(cfg.target).resolve()) if kind != "architecture" else None},
        models=[m.to_dict() for m in models], environment=Environment(),
        settings={"batch_sizes": batches, "warmup": cfg.warmup, "iterations": cfg.iterations,
                  "min_seconds": cfg.min_seconds, "max_seconds": cfg.max_seconds, "device": device,
                  "end_to_end": cfg.end_to_end, "end_to_end_images": None, "end_to_end_frames": None,
                  "end_to_end_workers": _workers(cfg) if cfg.end_to_end else None, "top_k": cfg.top_k,
                  "end_to_end_max_batch": cfg.e2e_max_batch,
                  "notes": [f"{', '.join(DEVICE_RESIDENT)}: compute rows run on a batch already on the GPU (IO "
                            "binding / device buffers); end-to-end rows include the copies"]},
        limits=[])
    with tempfile.TemporaryDirectory(prefix="pkd-bench-images-") as tmp:
        inputs = camera_inputs(Path(tmp), cfg.e2e_images, cfg.e2e_frames, cfg.images) if cfg.end_to_end else {}
        report.settings["end_to_end_images"] = inputs["end_to_end"][1] if inputs else None
        report.settings["end_to_end_frames"] = inputs.get("end_to_end_frames", (None, None))[1]
        inputs = {mode: items for mode, (items, _) in inputs.items()}
        try:
            for model in models:
                for spec in backends:
                    _bench_backend(model, spec, device, batches, inputs, cfg, report, progress)
        finally:
            for model in models:
                model.cleanup()
    report.environment = Environment.from_dict(describe(threads=cfg.threads, device=device))
    compute_ratios(report.results)
    report.comparisons = comparisons(report.results)
    cpu = None
    if device == "cpu":
        from promptkd_edge.bench.cpu_peak import cpu_peaks

        cpu = cpu_peaks(report.environment.threads or 1)
    report.limits = limits(report.models, report.results, cfg.peak_tflops, cpu)
    if cfg.text_names:
        if kind != "bundle":
            raise PkdError("--text-names times a bundle's text encoder: bench a bundle exported with --text-encoder")
        report.text_encoder = time_text_encoder(cfg.target, cfg.text_names, cfg.threads, device)
    return report


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """`measure(cfg, progress)` in its JSON form (docs/bench-report.md)."""
    return measure(cfg, progress).to_dict()


def time_text_encoder(bundle: str, names: int, threads: int | None, device: str) -> dict[str, Any]:
    """Names per second of a bundle's text encoder, tokenizer included: `names` generated class names encoded once
    after an untimed call, on ONNX Runtime (its CUDA provider on cuda) and, on a CPU, OpenVINO where installed."""
    from promptkd_edge.runtime.bundle import open_bundle
    from promptkd_edge.runtime.openvino_backend import openvino_version
    from promptkd_edge.runtime.text import TextEncoder

    b = open_bundle(bundle, allow_invalid=True)
    entry = b.manifest.text_encoder
    if entry is None:
        raise PkdError(f"{bundle} has no text encoder (pkd export RUN --head both --text-encoder)")
    listing = [f"object {i} of kind {i % 97}" for i in range(names)]
    on_gpu = device.startswith("cuda")
    kinds = [("onnxruntime", "cuda" if on_gpu else "cpu")]
    if openvino_version() is not None and not on_gpu:
        kinds.append(("openvino", "cpu"))
    rows = []
    for backend, providers in kinds:
        encoder = TextEncoder(b, backend, providers=providers, threads=threads)
        try:
            encoder.encode(listing[:8])
            start = time.perf_counter()
            encoder.encode(listing)
            seconds = time.perf_counter() - start
        finally:
            encoder.close()
        rows.append({"backend": encoder.description, "names": names, "seconds": round(seconds, 4),
                     "names_per_s": round(names / seconds, 1)})
    size = sum((b.path / f).stat().st_size for f in entry.files.values())
    return {"parameters": entry.extra.get("parameters"), "files_mb": round(size / 2**20, 1), "rows": rows}


def _kind(target: str) -> str:
    from promptkd_edge.formats.bundle import is_bundle

    path = Path(target)
    return "bundle" if is_bundle(path) else "run" if is_run(path) else "architecture"


FRAME = (1080, 1920)  # height, width of the generated camera-like inputs


def _workers(cfg: BenchConfig) -> int:
    from promptkd_edge.runtime.pipeline import resolve_workers

    return resolve_workers(cfg.workers)


def camera_inputs(folder: Path, images: int, frames: int, source: str | None = None) -> dict[str, tuple[list, str]]:
    """Camera-like inputs per end-to-end mode, with what they are for people: `images` image files (from the folder
    `source`, else generated into `folder`: 1920x1080 JPEGs, quality 90, smooth colour fields with edges and
    sensor-like noise) and up to `frames` uint8 RGB frames in memory (the readable files decoded, at their size)."""
    from promptkd_edge.runtime.preprocess import to_rgb

    if source:
        from promptkd_edge.utils.image_files import list_images

        files = list_images(source)[:images]
        what = f"{len(files)} images from {source}"
    else:
        from promptkd_edge.export.parity import generated_images

        files = []
        for i in range(images):  # one at a time: a 1080p image is 6 MB
            [img] = generated_images(1, (FRAME[0] * 2 // 3, FRAME[1] * 2 // 3), seed=1 + i)  # 1.5x: 1080x1920
            files.append(folder / f"{i:04d}.jpg")
            img.save(files[-1], quality=90)
        what = f"{len(files)} generated {FRAME[1]}x{FRAME[0]} JPEG files (quality 90)"
    arrays = []
    for f in files:  # the readable ones: an unreadable file fails the files rows with its name, not the frames'
        if len(arrays) == frames:
            break
        try:
            arrays.append(np.asarray(to_rgb(f)))
        except PkdError:
            continue
    sizes = sorted({f"{a.shape[1]}x{a.shape[0]}" for a in arrays})
    inputs = {"end_to_end": (files, what)}
    if arrays:
        inputs["end_to_end_frames"] = (arrays, f"{len(arrays)} uint8 RGB frames in memory ({', '.join(sizes)})")
    return inputs


def _bench_backend(model: BenchModel, spec: BackendSpec, device: str, batches: list[int], inputs: dict[str, list],
                   cfg: BenchConfig, report: BenchReport, progress: Progress) -> None:
    from promptkd_edge.bench.memory import PeakMemory

    def unavailable(reason: str) -> None:
        report.unavailable.append({"model": model.role, "backend": spec.name, "reason": reason})
        progress.note(f"{model.role} {spec.name}: not run ({reason})")

    try:  # exporting / quantizing the ONNX file is set-up, not the backend's first call or its memory
        prepare_artifacts(spec, model)
    except Unavailable as e:
        unavailable(str(e))
        return
    except Exception as e:  # noqa: BLE001
        unavailable(f"failed to prepare: {first_line(e)}")
        return
    rows: list[ResultRow] = []
    with PeakMemory(nvml=device.startswith("cuda")) as memory:
        start = time.perf_counter()
        try:
            runner = load(spec, model, device=device, threads=cfg.threads)
            first = runner.prepare(model.example(batches[0]))
            runner(first)
            runner.sync()
        except Unavailable as e:
            return unavailable(str(e))
        except Exception as e:  # noqa: BLE001 - one failing backend must not lose the others' figures
            return unavailable(f"failed: {first_line(e)}")
        first_call_ms = (time.perf_counter() - start) * 1000
        report.backends = {**(report.backends or {}), f"{model.role} {spec.name}": runner.description}
        update = progress.task(f"{model.role} {spec.name}",
                               len(batches) + len(inputs) * sum(b <= cfg.e2e_max_batch for b in batches))
        for batch in batches:
            for mode in ("compute", *inputs) if batch <= cfg.e2e_max_batch else ("compute",):
                try:
                    timing, power = _time(runner, model, batch, mode, inputs.get(mode, []), cfg)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at the largest batch
                    unavailable(f"batch {batch} {mode}: {first_line(e)}")
                    break
                memory.sample()  # NVML's view of this process's GPU memory, while the backend holds it
                rows.append(_row(model, spec, runner, timing, mode, first_call_ms, power))
                update(len(rows))
        runner.close()
    for row in rows:
        row.peak_rss_mib = _round(memory.host_mib)
        row.peak_gpu_mib = _round(memory.gpu_mib)
        row.gpu_process_mib = _round(memory.gpu_process_mib)
    report.results += rows


def _time(runner: Runner, model: BenchModel, batch: int, mode: str, inputs: list,
          cfg: BenchConfig) -> tuple[Timing, Any]:
    from promptkd_edge.bench.power import PowerSampler

    if mode == "compute":
        prepared = runner.prepare(model.example(batch))

        def call():
            return runner(prepared)

        warmup, iterations = cfg.warmup, cfg.iterations
        stream = None
    else:
        from promptkd_edge.runtime.pipeline import chunks

        # the runtime's pipeline over the inputs, round and round: one call = the next batch out of it (decoded
        # ahead on the workers while the previous call ran the backend) -> logits -> top-k, in steady state
        stream = chunks(itertools.cycle(inputs), model.preprocess, input_format=model.input_format, batch_size=batch,
                        workers=cfg.workers)
        k = min(cfg.top_k, model.classes)

        def call():
            logits = runner.logits(next(stream).batch_or_raise())
            return np.argpartition(-logits, k - 1, axis=1)[:, :k]

        warmup, iterations = min(cfg.warmup, 2), max(3, cfg.iterations // 5)
    try:
        with PowerSampler(device=runner.device) as power:
            timing = time_calls(call, batch, warmup=warmup, iterations=iterations, min_seconds=cfg.min_seconds,
                                max_seconds=cfg.max_seconds, sync=runner.sync,
                                timer=runner.timer if mode == "compute" else None)
    finally:
        if stream is not None:
            stream.close()  # its decoding threads stop before the next row is timed
    return timing, power


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _row(model: BenchModel, spec: BackendSpec, runner: Runner, timing: Timing, mode: str, first_call_ms: float,
         power) -> ResultRow:
    from promptkd_edge.bench.power import images_per_joule

    t = timing.to_dict()
    return ResultRow(model=model.role, backend=spec.name, device=runner.device, precision=runner.precision,
                     batch=timing.batch, mode=mode, iterations=t["iterations"],
                     **{k: round(t[k], 3) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms")},
                     images_per_s=round(t["images_per_s"], 2),
                     first_call_ms=round(first_call_ms, 1) if mode == "compute" else None,
                     power_w=_round(power.watts, 2),
                     images_per_joule=_round(images_per_joule(t["images_per_s"], power.watts), 3))


def compute_ratios(results: list[ResultRow]) -> None:
    """Set each end-to-end row's `compute_ratio`: its images/s over the compute row's of the same model, backend
    and batch (1.0: an app gets all the engine can do; left None without a compute row)."""
    compute = {(r.model, r.backend, r.batch): r.images_per_s for r in results if r.mode == "compute"}
    for r in results:
        base = compute.get((r.model, r.backend, r.batch))
        if r.mode != "compute" and base and r.images_per_s is not None:
            r.compute_ratio = round(r.images_per_s / base, 4)


def comparisons(results: list[ResultRow]) -> list[dict]:
    """Teacher p50 / student p50 for every backend, batch and mode both ran: the student's measured speed-up."""
    index = {(r.model, r.backend, r.batch, r.mode): r for r in results}
    out = []
    for (role, backend, batch, mode), student in index.items():
        teacher = index.get(("teacher", backend, batch, mode))
        if role == "student" and teacher:
            out.append({"backend": backend, "batch": batch, "mode": mode, "teacher_p50_ms": teacher.p50_ms,
                        "student_p50_ms": student.p50_ms, "speedup": round(teacher.p50_ms / student.p50_ms, 3)})
    return out


def limits(models: list[dict], results: list[ResultRow], peak_tflops: float | None,
           cpu_peaks: dict[str, dict] | None = None) -> list[dict]:
    """The images/s a peak FLOP rate allows for each model, and the fraction reached: GPU rows against
    `peak_tflops`; CPU rows against the CPU's computed peak at the row's precision (bench/cpu_peak.py)."""
    gflops = {m["role"]: m.get("gflops_per_image") for m in models}
    out = []
    for r in results:
        g = gflops.get(r.model)
        if r.mode != "compute" or not g:
            continue
        if r.device == "cuda" and peak_tflops:
            tflops, basis = peak_tflops, f"{peak_tflops:g} TFLOP/s"
        elif r.device == "cpu" and cpu_peaks:
            first = r.precision.split("-")[0]  # int8-bf16: the INT8 layers bound the peak
            peak = cpu_peaks.get(first if first in cpu_peaks else "fp32")
            tflops, basis = peak["tflops"], f"{peak['tflops']:g} TFLOP/s = {peak['basis']}"
        else:
            continue
        limit = tflops * 1e3 / g
        out.append({"model": r.model, "backend": r.backend, "batch": r.batch,
                    "limit_images_per_s": round(limit, 1), "basis": f"{g:.1f} GFLOP/image at {basis}",
                    "fraction": round(r.images_per_s / limit, 4)})
    return out
