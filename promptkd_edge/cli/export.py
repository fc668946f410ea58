"""`pkd export`: a run into a gated bundle; a bundle's TensorRT plan, bf16 gate, Triton entry or DeepStream config
added on the machine that runs it (`pkd export BUNDLE` runs on the core install, no torch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from promptkd_edge.cli.common import (
    app,
    config_values,
    console,
    defaults,
    errors_to_exit,
    make_progress,
    print_json,
    require,
)
from promptkd_edge.errors import PkdError
from promptkd_edge.export.options import ExportOptions
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
  pkd export bundles/pets-ds --deepstream deepstream/pets --deepstream-mode secondary --threshold 25 \\
      --gie-id 2 --operate-on-gie-id 1
"""


NEW, PRECISION, PLAN = "New bundle (SOURCE: a run)", "Precision and gates", "TensorRT plan (--trt)"
TRITON, DEEPSTREAM = "Triton entry (SOURCE: a bundle)", "DeepStream config (SOURCE: a bundle)"


def _option(*names: str, panel: str | None = None, hidden: bool = False, **kw):
    return typer.Option(*names, rich_help_panel=panel, hidden=hidden, **kw)


# every option of `pkd export`, one meaning each, in the help panel of the operation it applies to
Source = Annotated[Path, typer.Argument(help="A distillation run (new bundle) or a bundle (with --trt: add a TensorRT "
                                        "plan built on this machine).")]
Out = Annotated[Path | None, _option("--out", panel=NEW, help="New bundle folder (not with a bundle as SOURCE).")]
Head = Annotated[str, _option(panel=NEW, help="logits [B, C], embeddings [B, D] (class vectors ship beside it), or "
                              "both.")]
Uint8Input = Annotated[bool, _option("--uint8-input", panel=NEW, help="Graph takes uint8 NHWC images at the model "
                                     "resolution and normalises itself.")]
PixelInput = Annotated[bool, _option("--pixel-input", panel=NEW, help="Graph takes float32 NCHW pixels 0-255 at the "
                                     "model resolution and normalises itself (what DeepStream's nvinfer feeds).")]
FrameInput = Annotated[bool, _option("--frame-input", panel=NEW, help="Graph takes whole uint8 NHWC frames of any "
                                     "height and width and does the resize, centre crop and normalisation itself "
                                     "(gated against open_clip's transform on frames).")]
FrameResize = Annotated[str, _option(panel=NEW, help="--frame-input: the in-graph resize, auto (the first that "
                                     "passes: matrix, antialias, box-cubic, cubic; TensorRT parses no antialias) or "
                                     "one of them.")]
FrameGateSize = Annotated[list[str] | None, _option("--frame-gate-size", panel=NEW, help="HEIGHTxWIDTH of the "
                                                    "frames the --frame-input gate measures; repeat for several "
                                                    "(default 720x1280 and 1080x1920).")]
Opset = Annotated[int, _option(panel=NEW, help="ONNX opset (20 parses on TensorRT 10.3 / JetPack 6).")]
Slim = Annotated[bool, _option("--slim", panel=NEW, help="Simplify the graph with onnxslim (pip install onnxslim).")]
TextEncoder = Annotated[bool, _option("--text-encoder", panel=NEW, help="Also ship the teacher's text tower (ONNX, "
                                      "FP32 + FP16) and tokenizer, gated against `pkd classes`, so apps name classes "
                                      "on the device (needs --head embeddings or both).")]
FastDecode = Annotated[bool, _option("--fast-decode/--no-fast-decode", panel=NEW, help="Gate the faster JPEG "
                                     "decodes (DCT-domain downscale; torch's decoder for GPUs) on the parity images "
                                     "as 1080p JPEGs; the runtime uses those that pass.")]
Overwrite = Annotated[bool, _option("--overwrite", panel=NEW, help="Replace an existing bundle at --out (only a "
                                    "bundle, and only one holding nothing else); with --triton: a model folder pkd "
                                    "did not write.")]
AllowIncomplete = Annotated[bool, _option("--allow-incomplete", panel=NEW, help="Export a run that did not finish "
                                          "(its latest checkpoint's student; the manifest's source says which).")]
Precision = Annotated[str, _option(panel=PRECISION, help="model.onnx: fp32, fp16 or int8 (ONNX Runtime QDQ); bf16: "
                                   "an FP32 model.onnx with OpenVINO's bf16 gated on this CPU (required; fp32 and "
                                   "int8 exports offer it where OpenVINO and bf16 exist). With --trt: the engine's, "
                                   "fp32, fp16, int8 or fp8.")]
Data = Annotated[str | None, _option("--data", panel=PRECISION, help="Images for calibration and parity (default: "
                                     "the run's training data; generated images when there are none).")]
ParityImages = Annotated[int, _option(panel=PRECISION, help="Images the parity gate compares on (with --deepstream: "
                                      "nvinfer's resize against the bundle's).")]
CalibrationImages = Annotated[int, _option(panel=PRECISION, help="Images INT8/FP8 calibration sees.")]
CalibrationMethod = Annotated[str, _option(panel=PRECISION, help="INT8 calibration: percentile, minmax or entropy.")]
Smooth = Annotated[bool, _option("--smooth/--no-smooth", panel=PRECISION, help="INT8: migrate activation outliers "
                                 "(CLIP's massive activations) into the weights first (SmoothQuant); function "
                                 "unchanged.")]
Int8Fallback = Annotated[bool, _option("--int8-fallback/--no-int8-fallback", panel=PRECISION, help="INT8: where the "
                                       "graph disagrees with FP32 on the calibration images, keep float its most "
                                       "sensitive nodes (measured one by one, at most a quarter) until it agrees.")]
Force = Annotated[bool, _option("--force", panel=PRECISION, help="Keep a bundle that fails the parity gate, marked "
                                "invalid.")]
BuildTrt = Annotated[bool, _option("--trt", panel=PLAN, help="Also build a TensorRT plan here (needs TensorRT 10 or "
                                   "11).")]
TrtProfile = Annotated[list[str] | None, _option("--trt-profile", panel=PLAN, help="MIN,OPT,MAX batch of one "
                                                 "optimization profile; repeat for several (default 1,8,32).")]
TrtFrameSizes = Annotated[str | None, _option("--trt-frame-sizes", panel=PLAN, help="A frame bundle's plan: MIN,OPT,"
                                              "MAX frame HEIGHTxWIDTH of every profile (default "
                                              "32x32,1080x1920,2160x3840).")]
WorkspaceGib = Annotated[float, _option(panel=PLAN, help="TensorRT builder workspace limit (GiB); 1-2 on 8 GB "
                                        "Jetsons.")]
OptLevel = Annotated[int, _option(panel=PLAN, help="TensorRT builder optimization level 0-5.")]
TimingCache = Annotated[Path | None, _option(panel=PLAN, help="Persistent TensorRT timing cache file (read and "
                                             "updated).")]
TrtTf32 = Annotated[bool, _option("--trt-tf32", panel=PLAN, help="Let TensorRT run FP32 layers in TF32 (off by "
                                  "default): faster on Ampere+ and Orin, but it trades FP32 accuracy and an fp32 "
                                  "plan may then fail its parity gate.")]
Triton = Annotated[Path | None, _option("--triton", panel=TRITON, help="Write the bundle's entry into this Triton "
                                        "model repository.")]
TritonBackend = Annotated[str, _option(panel=TRITON, help="The entry serves model.onnx (onnxruntime) or the "
                                       "bundle's plan (tensorrt).")]
TritonName = Annotated[str | None, _option(panel=TRITON, help="Model name and folder (default: the bundle folder's "
                                           "name, '-' as '_').")]
TritonMaxBatch = Annotated[int | None, _option("--triton-max-batch", panel=TRITON, help="config.pbtxt's "
                                               "max_batch_size (default 32; a plan's largest profile).")]
DeepStream = Annotated[Path | None, _option("--deepstream", panel=DEEPSTREAM, help="Write a DeepStream nvinfer "
                                            "config, labels and the plan into this folder (a --pixel-input "
                                            "bundle).")]
DeepStreamMode = Annotated[str, _option(panel=DEEPSTREAM, help="nvinfer process mode: primary (whole frames) or "
                                        "secondary (objects of an upstream detector).")]
Threshold = Annotated[float, _option(panel=DEEPSTREAM, help="nvinfer classifier-threshold, on the logits (logit scale "
                                     "x cosine, not a probability): an object is labelled only when its best logit "
                                     "is above the threshold and above 0 (nvinfer's parser), so at 0 an object whose "
                                     "best logit is <= 0 gets no label.")]
GieId = Annotated[int | None, _option("--gie-id", panel=DEEPSTREAM, help="nvinfer gie-unique-id of the classifier, "
                                      "the id its labels carry (default 1 primary, 2 secondary).")]
OperateOnGieId = Annotated[int | None, _option("--operate-on-gie-id", panel=DEEPSTREAM, help="Secondary mode: the "
                                               "gie-unique-id of the detector whose objects are classified "
                                               "(default 1).")]
DeepStreamBatch = Annotated[int | None, _option("--deepstream-batch-size", panel=DEEPSTREAM, help="nvinfer "
                                                "batch-size (default: the plan's first profile's max).")]
MaxBatch = Annotated[int | None, _option("--max-batch", hidden=True, help="Before --triton-max-batch and "
                                         "--deepstream-batch-size: both at once.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")]

# each operation's options: given without the operation, they would do nothing (an error names the missing flag)
ONLY_WITH = {"--trt": ("trt_profile", "trt_frame_sizes", "workspace_gib", "opt_level", "timing_cache", "trt_tf32"),
             "--triton": ("triton_backend", "triton_name", "triton_max_batch"),
             "--deepstream": ("deepstream_mode", "threshold", "gie_id", "operate_on_gie_id", "deepstream_batch_size")}


@app.command(epilog=EXPORT_EXAMPLES)
@errors_to_exit
def export(
    ctx: typer.Context, source: Source, out: Out = None, head: Head = _E.head, uint8_input: Uint8Input = False,
    pixel_input: PixelInput = False, frame_input: FrameInput = False, frame_resize: FrameResize = _E.frame_resize,
    frame_gate_size: FrameGateSize = None, precision: Precision = _E.precision,
    opset: Opset = _E.opset, slim: Slim = _E.slim, data: Data = _E.data, parity_images: ParityImages = _E.parity_images,
    calibration_images: CalibrationImages = _E.calibration_images,
    calibration_method: CalibrationMethod = _E.calibration_method, smooth: Smooth = _E.smooth,
    int8_fallback: Int8Fallback = _E.int8_fallback, text_encoder: TextEncoder = _E.text_encoder,
    build_trt: BuildTrt = False, trt_profile: TrtProfile = None, trt_frame_sizes: TrtFrameSizes = None,
    workspace_gib: WorkspaceGib = _B.workspace_gib,
    opt_level: OptLevel = _B.opt_level, timing_cache: TimingCache = _B.timing_cache, trt_tf32: TrtTf32 = _B.tf32,
    triton: Triton = None, triton_backend: TritonBackend = "onnxruntime", triton_name: TritonName = None,
    triton_max_batch: TritonMaxBatch = None, deepstream: DeepStream = None, deepstream_mode: DeepStreamMode = "primary",
    threshold: Threshold = 0.0, gie_id: GieId = None, operate_on_gie_id: OperateOnGieId = None,
    deepstream_batch_size: DeepStreamBatch = None, max_batch: MaxBatch = None,
    fast_decode: FastDecode = _E.fast_decode, force: Force = _E.force, overwrite: Overwrite = _E.overwrite,
    allow_incomplete: AllowIncomplete = _E.allow_incomplete, as_json: AsJson = False,
) -> None:
    """Fold the student (prompts, projector, class vectors) into one ONNX graph, gate it, ship it as a bundle."""
    from promptkd_edge.formats.bundle import is_bundle

    _refuse_orphans(ctx, {"--trt": build_trt, "--triton": triton, "--deepstream": deepstream})
    options = _export_options(ctx, uint8_input, pixel_input, frame_input, frame_gate_size, build_trt, trt_profile,
                              trt_frame_sizes)
    progress = make_progress(not as_json)
    if is_bundle(source):
        manifest, where = _add_to_bundle(ctx, source, out, options, max_batch, progress), source
    else:
        if triton is not None or deepstream is not None:
            raise PkdError("--triton and --deepstream take a bundle as SOURCE: export the run first, then "
                           "`pkd export BUNDLE --triton REPO` or `--deepstream DIR`")
        if out is None:
            raise PkdError("pass --out BUNDLE, the folder to write the bundle to")
        require("export RUN", "train", "export")
        from promptkd_edge.export.bundle import export_run

        manifest, where = export_run(source, out, options, progress=progress), out
    progress.done()
    _print_result(manifest, where, as_json)


def _refuse_orphans(ctx: typer.Context, operations: dict[str, object]) -> None:
    """An option of an operation given without it would do nothing: one line naming the flag it needs."""
    for flag, given in operations.items():
        # ParameterSource by name: typer may carry its own copy of click's enum
        orphans = [name for name in ONLY_WITH[flag]
                   if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
        if orphans and not given:
            option = "--" + orphans[0].replace("_", "-")
            raise PkdError(f"{option} applies to {flag}, which was not given: add {flag}, or drop {option}")


def _export_options(ctx: typer.Context, uint8_input: bool, pixel_input: bool, frame_input: bool,
                    frame_gate_size: list[str] | None, build_trt: bool, trt_profile: list[str] | None,
                    trt_frame_sizes: str | None) -> ExportOptions:
    """ExportOptions from the command line: the input format, the frame gate sizes, the TensorRT build options."""
    if uint8_input + pixel_input + frame_input > 1:
        raise PkdError("--uint8-input, --pixel-input and --frame-input are input formats; choose one")
    input_format = "uint8" if uint8_input else "pixels" if pixel_input else "frame" if frame_input else "normalized"
    p = ctx.params
    trt = _trt_options(trt_profile, p["workspace_gib"], p["opt_level"], p["timing_cache"], p["trt_tf32"]) \
        if build_trt else None
    if trt_frame_sizes is not None and trt is not None:
        trt = dataclasses.replace(trt, frame_sizes=_frame_sizes("--trt-frame-sizes", trt_frame_sizes.split(",")))
    gate_sizes = _frame_sizes("--frame-gate-size", frame_gate_size) if frame_gate_size else _E.frame_gate_sizes
    return ExportOptions(**config_values(ExportOptions, p), input_format=input_format, frame_gate_sizes=gate_sizes,
                         trt=trt).validate()


def _add_to_bundle(ctx: typer.Context, source: Path, out: Path | None, options: ExportOptions,
                   max_batch: int | None, progress) -> Manifest:
    """`pkd export BUNDLE`: the plan, bf16 gate, Triton entry, DeepStream config asked for, each as its record."""
    from promptkd_edge.export.add_to_bundle import DeepStreamConfig, TritonEntry, extend_bundle
    from promptkd_edge.runtime.bundle import open_bundle

    p = ctx.params
    if max_batch is not None and (p["triton_max_batch"] is not None or p["deepstream_batch_size"] is not None):
        raise PkdError("--max-batch is --triton-max-batch and --deepstream-batch-size at once: give those instead")
    triton = None if p["triton"] is None else TritonEntry(
        p["triton"], p["triton_backend"], p["triton_name"],
        p["triton_max_batch"] if p["triton_max_batch"] is not None else max_batch)
    deepstream = None if p["deepstream"] is None else DeepStreamConfig(
        p["deepstream"], p["deepstream_mode"], p["threshold"],
        p["deepstream_batch_size"] if p["deepstream_batch_size"] is not None else max_batch,
        p["gie_id"], p["operate_on_gie_id"])
    extend_bundle(source, options, out=out, triton=triton, deepstream=deepstream, progress=progress)
    return open_bundle(source).manifest


def _print_result(manifest: Manifest, where: Path, as_json: bool) -> None:
    """The manifest as JSON, or the parity table and one line on the bundle."""
    from promptkd_edge.formats.run import describe_state

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
