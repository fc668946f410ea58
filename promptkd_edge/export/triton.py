"""A Triton Inference Server model repository from a bundle: ONNX Runtime (model.onnx) or TensorRT (a plan).

    REPO/<name>/config.pbtxt      platform, max_batch_size, I/O, dynamic batching, instance group
    REPO/<name>/1/model.onnx      (or model.plan, the bundle's plan for this GPU and TensorRT)
    REPO/<name>/labels.txt        class names, one per line, in class-id order (Triton's classification output)

Triton's batch dimension is implicit: dims leave it out and `max_batch_size` bounds it. A plan with several
optimization profiles lists them all in `instance_group { profile: [...] }`: without that list Triton's TensorRT
backend uses profile 0 only, and every batch outside it fails. Triton then picks, per batch, the listed profile
whose range holds it; so every batch from 1 to `max_batch_size` must lie in some profile (the dynamic batcher can
form any of them), which is checked here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import ModelEntry, TensorInfo
from promptkd_edge.runtime.bundle import open_bundle
from promptkd_edge.runtime.names import labels_text
from promptkd_edge.utils.files import atomic_path, write_text

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}


def _tensor(entry: TensorInfo, kind: str, labels: bool = False) -> str:
    dims = entry.shape[1:]
    if any(not isinstance(d, int) for d in dims):
        raise PkdError(f"{kind} {entry.name} has a dynamic dimension besides the batch: {entry.shape}")
    if entry.dtype not in TRITON_TYPES:
        raise PkdError(f"{kind} {entry.name} has dtype {entry.dtype}, which Triton's config cannot name here")
    lines = [f'    name: "{entry.name}"', f"    data_type: {TRITON_TYPES[entry.dtype]}",
             f"    dims: [ {', '.join(str(d) for d in dims)} ]"]
    if labels:
        lines.append('    label_filename: "labels.txt"')
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(model: ModelEntry, name: str, platform: str, max_batch: int, gpu: bool,
                 profiles: int = 0) -> str:
    """The config.pbtxt text for a bundle's model (protobuf text format, Triton's ModelConfig); `profiles` > 0
    lists a plan's optimization profiles 0..profiles-1 in the instance group."""
    preferred = [b for b in (4, 8, 16, 32) if b <= max_batch] or [max_batch]
    inputs = ",\n".join(_tensor(i, "input") for i in model.inputs)
    outputs = ",\n".join(_tensor(o, "output", labels=o.name == "logits") for o in model.outputs)
    indexes = ", ".join('"' + str(i) + '"' for i in range(profiles))  # ModelInstanceGroup.profile: strings
    listed = f"\n    profile: [ {indexes} ]" if profiles else ""
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: 500\n}}\n"
            f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}{listed}\n  }}\n]\n")


def plan_batch_limit(profiles: list[list[int]], requested: int | None) -> int:
    """The max_batch_size a plan with these (min, opt, max) profiles serves: `requested` (default: the largest
    profile max), capped at that max; a PkdError when some batch from 1 to it lies in no profile."""
    largest = max(p[2] for p in profiles)
    limit = min(requested or largest, largest)
    uncovered = [b for b in range(1, limit + 1) if not any(lo <= b <= hi for lo, _, hi in profiles)]
    if uncovered:
        shown = ", ".join(map(str, uncovered[:6])) + (", ..." if len(uncovered) > 6 else "")
        ranges = ", ".join(f"{lo}..{hi}" for lo, _, hi in profiles)
        fix = f" or pass --max-batch {uncovered[0] - 1}" if uncovered[0] > 1 else ""
        raise PkdError(f"batch {shown} lies in none of the plan's profiles ({ranges}), but Triton's dynamic batcher "
                       f"may form it up to max_batch_size {limit}: rebuild the plan with --trt-profile covering "
                       f"1..{limit}{fix}")
    return limit


def write_repository(bundle_dir: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None,
                     backend: str = "onnxruntime", max_batch: int | None = None, gpu: bool = True,
                     engine: str | None = None) -> Path:
    """Write (or replace) `repo/<name>` for the bundle; returns the model folder.

    backend "onnxruntime" serves model.onnx; "tensorrt" serves the bundle's plan `engine` (default: its only one),
    with all its profiles listed; its largest profile batch bounds `max_batch_size`.
    """
    if max_batch is not None and max_batch < 1:
        raise PkdError("--max-batch must be >= 1")
    bundle = open_bundle(bundle_dir)
    name = name or bundle.path.name.replace("-", "_")
    folder = Path(repo) / name
    profiles = 0
    if backend == "onnxruntime":
        source, target, platform = bundle.model_path, "model.onnx", "onnxruntime_onnx"
        limit = max_batch or 32
    elif backend == "tensorrt":
        engines = [e for e in bundle.engines if engine in (None, e.file)]
        if len(engines) != 1:
            have = ", ".join(e.file for e in bundle.engines) or "none"
            raise PkdError(f"choose one TensorRT plan of {bundle.path} (it has: {have}); plans are built with "
                           "`pkd export BUNDLE --trt` on the serving machine")
        record = engines[0]
        source, target, platform = bundle.path / record.file, "model.plan", "tensorrt_plan"
        limit = plan_batch_limit(record.profiles, max_batch)
        profiles = len(record.profiles)
        gpu = True
    else:
        raise PkdError(f"unknown Triton backend '{backend}'; choose onnxruntime or tensorrt")
    (folder / "1").mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx", "model.plan"):
        (folder / "1" / stale).unlink(missing_ok=True)
    with atomic_path(folder / "1" / target) as tmp:
        shutil.copyfile(source, tmp)
    write_text(folder / "labels.txt", labels_text(bundle.class_names, f"bundle {bundle.path}"))
    write_text(folder / "config.pbtxt", config_pbtxt(bundle.model, name, platform, limit, gpu, profiles))
    return folder
