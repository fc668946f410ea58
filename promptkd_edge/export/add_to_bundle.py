"""`pkd export BUNDLE`: what is added to a bundle that exists, on the machine that will run it: a TensorRT plan,
the bf16 gate, a Triton model repository entry, a DeepStream nvinfer config. Each is asked for by its own record."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.export.plan import add_engine
from promptkd_edge.utils.progress import NullProgress, Progress


@dataclass(frozen=True)
class TritonEntry:
    """`--triton REPO`: the bundle's entry in a Triton model repository (export/triton.py)."""

    repo: Path
    backend: str = "onnxruntime"  # serves model.onnx (onnxruntime) or the bundle's plan (tensorrt)
    name: str | None = None  # the model's name and folder (default: the bundle folder's name, '-' as '_')
    max_batch: int | None = None  # config.pbtxt's max_batch_size (default 32; a plan's largest profile)


@dataclass(frozen=True)
class DeepStreamConfig:
    """`--deepstream DIR`: a gst-nvinfer config, its labels and the plan (export/deepstream.py)."""

    folder: Path
    mode: str = "primary"  # primary (whole frames) or secondary (objects of an upstream detector)
    threshold: float = 0.0  # classifier-threshold, on the logits
    batch_size: int | None = None  # nvinfer batch-size (default: the plan's first profile's max)
    gie_id: int | None = None
    operate_on_gie_id: int | None = None


def extend_bundle(source: Path, options: ExportOptions, *, out: Path | None = None, triton: TritonEntry | None = None,
                  deepstream: DeepStreamConfig | None = None, progress: Progress | None = None) -> None:
    """`pkd export BUNDLE`: add a TensorRT plan (options.trt), the bf16 gate (options.precision "bf16"), a Triton
    model repository entry and/or a DeepStream config to the bundle `source`."""
    progress = progress or NullProgress()
    trt = options.trt is not None
    if options.text_encoder:
        raise PkdError("--text-encoder is exported from the run: pkd export RUN --out NEW --head both "
                       "--text-encoder")
    if trt and importlib.util.find_spec("onnx") is None:
        raise PkdError("`pkd export BUNDLE --trt` reads the bundle's graph with onnx: pip install "
                       "'promptkd-edge[trt]' (on JetPack: 'promptkd-edge[jetson]')")
    add_bf16 = options.precision == "bf16" and not trt
    if not trt and not add_bf16 and triton is None and deepstream is None:
        raise PkdError(f"{source} is a bundle; export a run to make a new one, or pass --trt to add a "
                       "TensorRT plan to it, --precision bf16 to gate bf16 on this CPU, or --triton REPO, or "
                       "--deepstream DIR")
    if out is not None:
        raise PkdError("--out is for new bundles; with a bundle as SOURCE the plan is added to it")
    if trt:
        _refuse_profiles_before_the_build(options, triton, deepstream)
        add_engine(source, options, progress=progress)
    if add_bf16:
        from promptkd_edge.export.cpu_gate import add_bf16_gate
        from promptkd_edge.runtime.bundle import open_bundle

        if open_bundle(source).model.input_format == "frame":
            raise PkdError("a --frame-input bundle is gated in FP32 (its in-graph resize against open_clip's "
                           "transform); bf16 is not offered for it")

        add_bf16_gate(source, data=options.data, parity_images=options.parity_images, force=options.force,
                      progress=progress)
    if triton is not None:
        from promptkd_edge.export.triton import write_repository

        folder = write_repository(source, triton.repo, name=triton.name, backend=triton.backend,
                                  max_batch=triton.max_batch, overwrite=options.overwrite, note=progress.note)
        progress.note(f"Triton model repository entry: {folder}")
    if deepstream is not None:
        from promptkd_edge.export.deepstream import write_config

        config = write_config(source, deepstream.folder, max_batch=deepstream.batch_size, mode=deepstream.mode,
                              threshold=deepstream.threshold, gie_id=deepstream.gie_id,
                              operate_on_gie_id=deepstream.operate_on_gie_id, data=options.data,
                              check_images=options.parity_images, seed=options.seed)
        progress.note(f"DeepStream nvinfer config: {config} (config-file-path of gst-nvinfer)")


def _refuse_profiles_before_the_build(options: ExportOptions, triton: TritonEntry | None,
                                      deepstream: DeepStreamConfig | None) -> None:
    """What the Triton entry or DeepStream config asked for with --trt would refuse of the plan's profiles (batches
    no profile takes; nvinfer's first profile not starting at 1), said before the build takes minutes."""
    profiles = [list(p) for p in options.trt.profiles]
    if triton is not None and triton.backend == "tensorrt":
        from promptkd_edge.export.triton import plan_batch_limit

        plan_batch_limit(profiles, triton.max_batch)
    if deepstream is not None:
        from promptkd_edge.export.deepstream import batch_size_for

        batch_size_for(profiles, deepstream.batch_size)
