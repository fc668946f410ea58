"""`pkd export` and `pkd predict`: a run into a gated bundle (and TensorRT, Triton, DeepStream), a bundle onto
images. `pkd predict` and `pkd export BUNDLE` run on the core install (no torch)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from promptkd_edge.cli.common import (
    app,
    config_values,
    console,
    defaults,
    err,
    errors_to_exit,
    make_progress,
    print_json,
    require,
)
from promptkd_edge.errors import PkdError
from promptkd_edge.export.bundle import ExportOptions
from promptkd_edge.export.tensorrt_build import TrtBuildOptions
from promptkd_edge.formats.manifest import Manifest
from promptkd_edge.utils.text import shown

_E = defaults(ExportOptions)
_B = defaults(TrtBuildOptions)

EXPORT_EXAMPLES = """
[bold]Examples[/bold]

  # ONNX bundle (FP32, logits head), gated for parity against the PyTorch student
  pkd export runs/pets --out bundles/pets

  # INT8 for CPU edge boxes, calibrated on 400 of the run's unlabeled images
  pkd export runs/pets --out bundles/pets-int8 --precision int8

  # bf16 on a CPU with AMX or AVX512_BF16 (OpenVINO), gated here; or add the gate to an existing bundle
  pkd export runs/pets --out bundles/pets --precision bf16
  pkd export bundles/pets --precision bf16

  # open vocabulary: the teacher's text tower and tokenizer too, so the device can name new classes
  pkd export runs/pets --out bundles/pets-open --head both --text-encoder

  # embeddings + logits, uint8 NHWC input (resize/crop in the app, the rest in the graph)
  pkd export runs/pets --out bundles/pets --head both --uint8-input

  # whole camera frames (uint8 NHWC of any size; Classifier(channel_order="bgr") takes OpenCV's): the graph resizes
  # and crops them itself, gated against open_clip's transform on frames of 1280x720 and 1920x1080
  pkd export runs/pets --out bundles/pets-frames --frame-input
  pkd export bundles/pets-frames --trt --precision fp16 --trt-frame-sizes 360x640,1080x1920,2160x3840

  # on the Jetson / GPU machine: add a TensorRT FP16 plan to a bundle (profiles 1/1/1 and 1/8/32)
  pkd export bundles/pets --trt --precision fp16 --trt-profile 1,1,1 --trt-profile 1,8,32 --data images/

  # a Triton model repository entry (config.pbtxt, 1/model.onnx or 1/model.plan, labels.txt)
  pkd export bundles/pets --triton models/ --triton-backend tensorrt

  # DeepStream: a bundle that takes pixels 0-255 (nvinfer's input), its plan built on the device, then the config
  pkd export runs/pets --out bundles/pets-ds --pixel-input
  pkd export bundles/pets-ds --trt --precision fp16 --trt-profile 1,8,16
  pkd export bundles/pets-ds --deepstream deepstream/pets --deepstream-mode secondary --threshold 25 \
      --gie-id 2 --operate-on-gie-id 1
"""


@app.command(epilog=EXPORT_EXAMPLES)
@errors_to_exit
def export(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="A distillation run (new bundle) or a bundle (with --trt: add a "
                                           "TensorRT plan built on this machine).")],
    out: Annotated[Path | None, typer.Option("--out", help="New bundle folder (not with a bundle as SOURCE).")] = None,
    head: Annotated[str, typer.Option(help="logits [B, C], embeddings [B, D] (class vectors ship beside it), or "
                                      "both.")] = _E.head,
    uint8_input: Annotated[bool, typer.Option("--uint8-input", help="Graph takes uint8 NHWC images at the model "
                                              "resolution and normalises itself.")] = False,
    pixel_input: Annotated[bool, typer.Option("--pixel-input", help="Graph takes float32 NCHW pixels 0-255 at the "
                                              "model resolution and normalises itself (what DeepStream's nvinfer "
                                              "feeds).")] = False,
    frame_input: Annotated[bool, typer.Option("--frame-input", help="Graph takes whole uint8 NHWC frames of any "
                                              "height and width and does the resize, centre crop and normalisation "
                                              "itself (gated against open_clip's transform on frames).")] = False,
    frame_resize: Annotated[str, typer.Option(help="--frame-input: the in-graph resize, auto (the first that passes: "
                                              "matrix, antialias, box-cubic, cubic; TensorRT parses no antialias) or "
                                              "one of them.")] = _E.frame_resize,
    frame_gate_size: Annotated[list[str] | None, typer.Option("--frame-gate-size", help="HEIGHTxWIDTH of the "
                                                              "frames the --frame-input gate measures; repeat for "
                                                              "several (default 720x1280 and 1080x1920).")] = None,
    trt_frame_sizes: Annotated[str | None, typer.Option("--trt-frame-sizes", help="A frame bundle's plan: MIN,OPT,"
                                                        "MAX frame HEIGHTxWIDTH of every profile (default "
                                                        "32x32,1080x1920,2160x3840).")] = None,
    precision: Annotated[str, typer.Option(help="model.onnx: fp32, fp16 or int8 (ONNX Runtime QDQ); bf16: an FP32 "
                                           "model.onnx with OpenVINO's bf16 gated on this CPU (required; fp32 and "
                                           "int8 exports offer it where OpenVINO and bf16 exist). With --trt: the "
                                           "engine's, fp32, fp16, int8 or fp8.")] = _E.precision,
    opset: Annotated[int, typer.Option(help="ONNX opset (20 parses on TensorRT 10.3 / JetPack 6).")] = _E.opset,
    slim: Annotated[bool, typer.Option("--slim", help="Simplify the graph with onnxslim (pip install "
                                       "onnxslim).")] = _E.slim,
    data: Annotated[str | None, typer.Option("--data", help="Images for calibration and parity (default: the run's "
                                             "training data; generated images when there are none).")] = _E.data,
    parity_images: Annotated[int, typer.Option(help="Images the parity gate compares on (with --deepstream: "
                                               "nvinfer's resize against the bundle's).")] = _E.parity_images,
    calibration_images: Annotated[int, typer.Option(help="Images INT8/FP8 calibration sees.")
                                  ] = _E.calibration_images,
    calibration_method: Annotated[str, typer.Option(help="INT8 calibration: percentile, minmax or entropy.")
                                  ] = _E.calibration_method,
    smooth: Annotated[bool, typer.Option("--smooth/--no-smooth", help="INT8: migrate activation outliers (CLIP's "
                                         "massive activations) into the weights first (SmoothQuant); function "
                                         "unchanged.")] = _E.smooth,
    int8_fallback: Annotated[bool, typer.Option("--int8-fallback/--no-int8-fallback", help="INT8: where the graph "
                                                "disagrees with FP32 on the calibration images, keep float its "
                                                "most sensitive nodes (measured one by one, at most a quarter) "
                                                "until it agrees.")] = _E.int8_fallback,
    text_encoder: Annotated[bool, typer.Option("--text-encoder", help="Also ship the teacher's text tower (ONNX, "
                                               "FP32 + FP16) and tokenizer, gated against `pkd classes`, so apps "
                                               "name classes on the device (needs --head embeddings or both).")
                            ] = _E.text_encoder,
    build_trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT plan here (needs TensorRT 10 or "
                                            "11).")] = False,
    trt_profile: Annotated[list[str] | None, typer.Option("--trt-profile", help="MIN,OPT,MAX batch of one "
                                                          "optimization profile; repeat for several (default "
                                                          "1,8,32).")] = None,
    workspace_gib: Annotated[float, typer.Option(help="TensorRT builder workspace limit (GiB); 1-2 on 8 GB "
                                                 "Jetsons.")] = _B.workspace_gib,
    opt_level: Annotated[int, typer.Option(help="TensorRT builder optimization level 0-5.")] = _B.opt_level,
    timing_cache: Annotated[Path | None, typer.Option(help="Persistent TensorRT timing cache file (read and "
                                                      "updated).")] = _B.timing_cache,
    trt_tf32: Annotated[bool, typer.Option("--trt-tf32", help="Let TensorRT run FP32 layers in TF32 (off by "
                                           "default): faster on Ampere+ and Orin, but it trades FP32 accuracy and "
                                           "an fp32 plan may then fail its parity gate.")] = _B.tf32,
    triton: Annotated[Path | None, typer.Option("--triton", help="With a bundle as SOURCE: write its entry into "
                                                "this Triton model repository.")] = None,
    triton_backend: Annotated[str, typer.Option(help="Triton entry serves model.onnx (onnxruntime) or the bundle's "
                                                "plan (tensorrt).")] = "onnxruntime",
    triton_name: Annotated[str | None, typer.Option(help="Triton model name and folder (default: the bundle folder's "
                                                    "name, '-' as '_').")] = None,
    deepstream: Annotated[Path | None, typer.Option("--deepstream", help="With a bundle as SOURCE: write a "
                                                    "DeepStream nvinfer config, labels and the plan into this "
                                                    "folder (a --pixel-input bundle).")] = None,
    deepstream_mode: Annotated[str, typer.Option(help="nvinfer process mode: primary (whole frames) or secondary "
                                                 "(objects of an upstream detector).")] = "primary",
    threshold: Annotated[float, typer.Option(help="nvinfer classifier-threshold, on the logits (logit scale x "
                                             "cosine, not a probability): an object is labelled only when its best "
                                             "logit is above the threshold and above 0 (nvinfer's parser), so at 0 "
                                             "an object whose best logit is <= 0 gets no label.")] = 0.0,
    gie_id: Annotated[int | None, typer.Option("--gie-id", help="nvinfer gie-unique-id of the classifier, the id "
                                               "its labels carry (default 1 primary, 2 secondary).")] = None,
    operate_on_gie_id: Annotated[int | None, typer.Option("--operate-on-gie-id", help="Secondary mode: the "
                                                          "gie-unique-id of the detector whose objects are "
                                                          "classified (default 1).")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Triton max_batch_size (default 32; a plan's largest "
                                                  "profile) or nvinfer batch-size (default: the plan's first "
                                                  "profile's max).")] = None,
    fast_decode: Annotated[bool, typer.Option("--fast-decode/--no-fast-decode", help="Gate the faster JPEG "
                                              "decodes (DCT-domain downscale; torch's decoder for GPUs) on the "
                                              "parity images as 1080p JPEGs; the runtime uses those that pass.")
                           ] = _E.fast_decode,
    force: Annotated[bool, typer.Option("--force", help="Keep a bundle that fails the parity gate, marked "
                                        "invalid.")] = _E.force,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle at --out (only a "
                                            "bundle, and only one holding nothing else); with --triton: a model "
                                            "folder pkd did not write.")] = _E.overwrite,
    allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Export a run that did not finish "
                                                   "(its latest checkpoint's student; the manifest's source says "
                                                   "which).")] = _E.allow_incomplete,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")] = False,
) -> None:
    """Fold the student (prompts, projector, class vectors) into one ONNX graph, gate it, ship it as a bundle."""
    from promptkd_edge.export.bundle import describe_state, export_run
    from promptkd_edge.export.extend import extend_bundle
    from promptkd_edge.runtime.bundle import is_bundle, open_bundle

    if uint8_input + pixel_input + frame_input > 1:
        raise PkdError("--uint8-input, --pixel-input and --frame-input are input formats; choose one")
    input_format = "uint8" if uint8_input else "pixels" if pixel_input else "frame" if frame_input else "normalized"
    trt = _trt_options(trt_profile, workspace_gib, opt_level, timing_cache, trt_tf32) if build_trt else None
    if trt_frame_sizes is not None and trt is not None:
        trt = dataclasses.replace(trt, frame_sizes=_frame_sizes("--trt-frame-sizes", trt_frame_sizes.split(",")))
    gate_sizes = _frame_sizes("--frame-gate-size", frame_gate_size) if frame_gate_size else _E.frame_gate_sizes
    options = ExportOptions(**config_values(ExportOptions, ctx.params), input_format=input_format,
                            frame_gate_sizes=gate_sizes, trt=trt).validate()
    progress = make_progress(not as_json)
    if is_bundle(source):
        extend_bundle(source, options, out=out, triton=triton, triton_backend=triton_backend, triton_name=triton_name,
                      deepstream=deepstream, deepstream_mode=deepstream_mode, threshold=threshold, max_batch=max_batch,
                      gie_id=gie_id, operate_on_gie_id=operate_on_gie_id, progress=progress)
        manifest, where = open_bundle(source).manifest, source
    else:
        if triton is not None or deepstream is not None:
            raise PkdError("--triton and --deepstream take a bundle as SOURCE: export the run first, then "
                           "`pkd export BUNDLE --triton REPO` or `--deepstream DIR`")
        if out is None:
            raise PkdError("pass --out BUNDLE, the folder to write the bundle to")
        require("export RUN", "train", "export")
        manifest, where = export_run(source, out, options, progress=progress), out
    progress.done()
    if as_json:
        print_json(manifest.to_dict())
        return
    console().print(_parity_table(manifest))
    state = "[green]valid[/]" if manifest.valid else "[bold red]INVALID (kept with --force)[/]"
    console().print(f"bundle {shown(where)}: {state}; model {shown(manifest.model.file)} "
                    f"({manifest.model.precision}, head {manifest.model.head})"
                    + "".join(f"; engine {shown(e.file)}" for e in manifest.engines))
    if manifest.source.get("complete") is False:
        console().print(f"[yellow]exported from {shown(describe_state(manifest.source))}[/]", soft_wrap=True)


def _frame_sizes(flag: str, texts: list[str]) -> list[tuple[int, int]]:
    """HEIGHTxWIDTH texts as (height, width) pairs; a one-line PkdError naming `flag` otherwise."""
    out = []
    for text in texts:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise PkdError(f"{flag} '{text}' is not HEIGHTxWIDTH (e.g. 1080x1920)") from None
        out.append((h, w))
    return out


def _trt_options(profiles: list[str] | None, workspace_gib: float, opt_level: int,
                 timing_cache: Path | None, tf32: bool) -> TrtBuildOptions:
    """TensorRT build options from --trt-profile MIN,OPT,MAX (repeatable) and the builder flags."""
    parsed = []
    for text in profiles or ["1,8,32"]:
        try:
            parsed.append(tuple(int(v) for v in text.split(",")))
        except ValueError:
            raise PkdError(f"--trt-profile '{text}' is not MIN,OPT,MAX (e.g. 1,8,32)") from None
        if len(parsed[-1]) != 3:
            raise PkdError(f"--trt-profile '{text}' is not MIN,OPT,MAX (e.g. 1,8,32)")
    return TrtBuildOptions(precision="fp32", profiles=parsed, workspace_gib=workspace_gib, opt_level=opt_level,
                           timing_cache=timing_cache, tf32=tf32)


def _parity_table(manifest: Manifest):
    """The bundle's parity gates, one row per target and precision."""
    from rich.table import Table

    table = Table(title="parity gate (exported model vs PyTorch student)")
    for col in ("target", "precision", "images", "top-1 agreement", "max |d logit|", "min cosine", "result"):
        table.add_column(col, justify="left" if col in ("target", "precision", "result") else "right", overflow="fold")
    for p in manifest.parity:
        result = "[green]pass[/]" if p.passed else "[red]FAIL[/] " + "; ".join(p.failures)
        ties = f" ({p.extra['near_tie_flips']} near-tie flips)" if p.extra.get("near_tie_flips") else ""
        table.add_row(shown(p.target), p.precision, str(p.images), f"{100 * p.top1_agreement:.2f} %{ties}",
                      f"{p.max_abs_logit_diff:.2e}", f"{p.min_cosine:.6f}", result)
    return table


# ---------------------------------------------------------------------------------------------------- predict

SKIPPED_EXIT_CODE = 3  # `pkd predict`: predictions written, some images skipped (2: an error, nothing predicted)

PREDICT_EXAMPLES = """
[bold]Examples[/bold]

  pkd predict bundles/pets cat.jpg dog.png
  pkd predict bundles/pets photos/ --top-k 3 --json > predictions.json
  pkd predict bundles/pets photos/ --backend tensorrt
  pkd predict bundles/pets photos/ --backend openvino --precision bf16 --threads 4

  # other classes, named here (a bundle exported with --text-encoder computes their vectors on this device)
  pkd predict bundles/pets photos/ --classes "red fox, polar bear, snow owl"
  pkd predict bundles/pets photos/ --classes @new_classes.txt
"""


@app.command(epilog=PREDICT_EXAMPLES)
@errors_to_exit
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `pkd export`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively). An image that "
                                                 "cannot be read, named here or found in a folder, is skipped and "
                                                 "named on stderr (under `skipped` with --json); the exit code is "
                                                 "then 3, and 2 when no image could be read.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes per image.")] = 5,
    backend: Annotated[str, typer.Option(help="auto (a TensorRT plan for this GPU, else the fastest gated option "
                                         "measured on this CPU, cached), onnxruntime, openvino, tensorrt or "
                                         "torch.")] = "auto",
    precision: Annotated[str | None, typer.Option(help="Force OpenVINO's precision: fp32 or bf16 (default: bf16 "
                                                  "only where the bundle's bf16 gate passed).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all usable).")] = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Classify into these classes instead of the "
                                                "bundle's: comma-separated names, or @FILE for a class-list file "
                                                "(one per line) and @FOLDER for an ImageFolder's sub-folders. Needs "
                                                "a bundle exported with --text-encoder.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    workers: Annotated[int | None, typer.Option(min=0, help="Threads that decode and resize the next batches while the "
                                                "backend runs the current one (default: min(4, usable cores); 0: "
                                                "decode on the main thread, in turn with the backend).")] = None,
    allow_invalid: Annotated[bool, typer.Option(help="Load a bundle that failed its parity gate.")] = False,
    exact_preprocess: Annotated[bool, typer.Option("--exact-preprocess", help="Decode JPEGs in full as open_clip "
                                                   "does, not by the faster decode the bundle's gate passed.")
                                ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print predictions as JSON on stdout.")] = False,
) -> None:
    """Top-k classes of images with a bundle (TensorRT, ONNX Runtime or OpenVINO; no torch needed)."""
    from promptkd_edge.runtime import Classifier
    from promptkd_edge.runtime.files import image_files, predict_files

    if top_k < 1:
        raise PkdError("--top-k must be >= 1")
    files = image_files(images)
    clf = Classifier.from_bundle(bundle, backend, allow_invalid=allow_invalid, precision=precision, threads=threads,
                                 exact_preprocess=exact_preprocess)
    if classes is not None:
        from promptkd_edge.runtime.names import class_names_argument

        names, notes = class_names_argument(classes)
        clf = clf.with_class_names(names)
        clf.notes += notes
    for note in clf.notes:
        err().print(f"[yellow]note:[/] {shown(note)}", highlight=False)
    if clf.choice is not None and not clf.choice.cached and not as_json:
        err().print(f"[yellow]backend:[/] {shown(clf.choice.picked)}, {shown(clf.choice.reason)}", highlight=False)
    update = make_progress(not as_json and len(files) > batch_size).task("predicting", len(files))
    results = []
    for done, result in enumerate(predict_files(clf, files, top_k=top_k, batch_size=batch_size,
                                                            workers=workers), 1):
        results.append(result)
        update(done)
    rows = [r.to_dict() for r in results if r.prediction is not None]
    skipped = [r for r in results if r.prediction is None]
    if not rows:
        raise PkdError(f"none of the {len(results)} images could be read ({skipped[0].skipped}"
                       + (f"; {len(skipped) - 1} more" if len(skipped) > 1 else "") + ")")
    if as_json:
        print_json({"bundle": str(bundle), "backend": clf.description,
                    "backend_choice": clf.choice.to_dict() if clf.choice is not None else None,
                    "predictions": rows, "skipped": [{"image": str(r.path), "reason": r.skipped} for r in skipped]})
    else:
        console().print(_predictions_table(f"{shown(bundle)} on {shown(clf.description)}", rows, top_k,
                                           len(clf.class_names)))
    for r in skipped:
        err().print(f"[yellow]skipped[/] {shown(r.skipped)}", highlight=False)
    if skipped:
        raise typer.Exit(SKIPPED_EXIT_CODE)


def _predictions_table(title: str, rows: list[dict], top_k: int, classes: int):
    """One row per image: its path (relative to the images' common folder), the top-1 class and the next ones."""
    from rich.table import Table

    table = Table(title=title)
    common = os.path.commonpath([r["image"] for r in rows]) if len(rows) > 1 else ""
    table.add_column(f"image (in {shown(common)})" if common else "image", overflow="fold")
    table.add_column("top-1")
    table.add_column("p", justify="right")
    if top_k > 1:
        table.add_column(f"next {min(top_k, classes) - 1}")
    for r in rows:
        rest = ", ".join(f"{shown(n)} {p:.2f}" for n, p in zip(r["labels"][1:], r["probabilities"][1:], strict=True))
        name = os.path.relpath(r["image"], common) if common else r["image"]
        table.add_row(shown(name), shown(r["labels"][0]), f"{r['probabilities'][0]:.3f}",
                      *([rest] if top_k > 1 else []))
    return table
