"""A DeepStream `nvinfer` configuration for a bundle's TensorRT plan (classifier network type).

nvinfer scales each frame (or detected object) to the network size itself, then computes
`y = net-scale-factor * (x - offsets[c])` per pixel and hands float planar RGB (NCHW) to the engine. One scale for
all channels cannot express CLIP's per-channel std, so the normalisation must be inside the graph: the bundle is
exported with `--pixel-input` (float32 NCHW pixels 0-255, `/255` and mean/std in the graph) and nvinfer's own
normalisation is set to identity (`net-scale-factor=1`, `offsets=0;0;0`).

    DIR/config_infer_<name>.txt   the [property] group for gst-nvinfer (config-file-path=...)
    DIR/labels.txt                the class names, ';'-separated on one line (nvinfer's classifier label format)
    DIR/<plan>                    the bundle's plan for this GPU and TensorRT, which the config names

nvinfer's classifier parser takes the largest value of the output layer and attaches its label when it exceeds
`classifier-threshold`. The layer is `logits` (logit scale x cosine, 100 x for CLIP), so the threshold is in those
units: 0 labels every input, 25 needs a cosine of 0.25 at scale 100.

The config is a GLib key file (GKeyFile), which gst-nvinfer reads with g_key_file_get_string: a value runs to the
end of its line, leading blanks dropped, backslash escapes (`\\\\`, `\\s`, `\\n`, `\\t`, `\\r`) decoded. File names go
in through `keyfile_value`, which writes those escapes (quotes, spaces, ';' and non-ASCII need none); text from the
manifest in comments is kept on its line with control characters made visible.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import EngineEntry, Manifest
from promptkd_edge.runtime.bundle import open_bundle
from promptkd_edge.runtime.names import check_labels, labels_text
from promptkd_edge.utils.files import atomic_path, write_text
from promptkd_edge.utils.text import visible

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2, "fp8": 2}  # nvinfer: 0 FP32, 1 INT8, 2 FP16 (no FP8 mode)
PROCESS_MODES = {"primary": 1, "secondary": 2}  # whole frames, or the objects an upstream detector found
ASPECT = {"squash": 0, "longest": 1, "shortest": 0}  # preprocess.json resize_mode -> maintain-aspect-ratio


def batch_size_for(profiles: list[list[int]], requested: int | None) -> int:
    """nvinfer runs the plan's first optimization profile: its batches 1..max must be covered by it."""
    lo, _opt, hi = profiles[0]
    if lo != 1:
        raise PkdError(f"the plan's first optimization profile starts at batch {lo}; nvinfer runs that profile and "
                       "needs batch 1 in it: rebuild with a first --trt-profile that starts at 1 (e.g. 1,8,32)")
    if requested is not None and requested < 1:
        raise PkdError("--max-batch must be >= 1")
    return min(requested or hi, hi)


def keyfile_value(text: str, what: str) -> str:
    """`text` as a GKeyFile string value (g_key_file_get_string reads it back unchanged); a PkdError for what a key
    file cannot hold (control characters other than newline, tab and carriage return; text that is not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PkdError(f"{what} '{visible(text)}' is not UTF-8, as nvinfer's config file must be: rename it") from None
    if any((ord(c) < 0x20 and c not in "\n\t\r") or 0x7F <= ord(c) < 0xA0 for c in text):
        raise PkdError(f"{what} '{visible(text)}' holds a control character nvinfer's config cannot hold: rename it")
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "\\s" + escaped[1:] if escaped.startswith(" ") else escaped


def config_text(manifest: Manifest, record: EngineEntry, plan_name: str, batch_size: int, *,
                resize_mode: str, mode: str, threshold: float, gpu_id: int = 0, unique_id: int = 1) -> str:
    """The nvinfer [property] group for a bundle's plan. nvinfer scales the whole frame or object to the network
    size (keeping the aspect ratio with symmetric padding for `longest`); it has no centre crop."""
    model = manifest.model
    channels, height, width = model.inputs[0].shape[1:]
    aspect = ASPECT[resize_mode]
    lines = [
        "# gst-nvinfer configuration written by `pkd export BUNDLE --deepstream` (promptkd-edge)",
        visible(f"# bundle: {manifest.source.get('student_spec', '?')} student, {model.num_classes} classes;"
                f" plan {record.file} ({record.precision}, TensorRT {record.tensorrt}, {record.gpu})"),
        "# The graph does /255 and CLIP's per-channel mean/std itself: nvinfer's normalisation is identity.",
        "# classifier-threshold is on the logits (logit scale x cosine), not on a probability.",
        "[property]",
        f"gpu-id={gpu_id}",
        f"gie-unique-id={unique_id}",
        f"model-engine-file={keyfile_value(plan_name, 'the plan file name')}",
        "labelfile-path=labels.txt",
        f"batch-size={batch_size}",
        "network-type=1",
        f"process-mode={PROCESS_MODES[mode]}",
        f"network-mode={NETWORK_MODES[record.precision]}",
        "model-color-format=0",
        "net-scale-factor=1.0",
        "offsets=0.0;0.0;0.0",
        f"infer-dims={channels};{height};{width}",
        f"maintain-aspect-ratio={aspect}",
        *(["symmetric-padding=1"] if aspect else []),
        "scaling-filter=1",
        "output-blob-names=logits",
        f"classifier-threshold={threshold:g}",
    ]
    if mode == "secondary":
        lines += ["# classify the objects of the primary detector (set its gie-unique-id and class ids):",
                  "operate-on-gie-id=1", "#operate-on-class-ids=0", "classifier-async-mode=0"]
    return "\n".join(lines) + "\n"


def write_config(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, *, engine: str | None = None,
                 max_batch: int | None = None, mode: str = "primary", threshold: float = 0.0,
                 gpu_id: int = 0) -> Path:
    """Write the nvinfer config, labels and the plan for a bundle into `out_dir`; returns the config file."""
    if mode not in PROCESS_MODES:
        raise PkdError(f"unknown DeepStream mode '{mode}'; choose primary or secondary")
    bundle = open_bundle(bundle_dir)
    model = bundle.model
    fmt = model.input_format
    if fmt != "pixels":
        raise PkdError(f"nvinfer hands the engine float NCHW pixels scaled by one factor for all channels, so CLIP's "
                       f"per-channel normalisation must be in the graph; this bundle's input is {fmt}: export the "
                       "run again with --pixel-input, then build its plan with --trt")
    if "logits" not in model.output_names:
        raise PkdError("nvinfer's classifier reads a logits output; this bundle outputs embeddings only "
                       "(export with --head logits or both)")
    names = bundle.class_names
    check_labels(names, f"bundle {bundle.path}")
    bad = [n for n in names if ";" in n]
    if bad:
        raise PkdError(f"nvinfer's classifier labels are ';'-separated on one line; rename the class {bad[0]!r}")
    engines = [e for e in bundle.engines if engine in (None, e.file) and e.parity_passed]
    if len(engines) != 1:
        have = ", ".join(e.file for e in bundle.engines) or "none"
        raise PkdError(f"choose one TensorRT plan of {bundle.path} (it has: {have}); plans are built with "
                       "`pkd export BUNDLE --trt` on the DeepStream machine")
    record = engines[0]
    batch = batch_size_for(record.profiles, max_batch)
    out = Path(out_dir)
    plan_name = Path(record.file).name
    text = config_text(bundle.manifest, record, plan_name, batch,
                       resize_mode=bundle.preprocess.get("resize_mode", "shortest"), mode=mode, threshold=threshold,
                       gpu_id=gpu_id)  # refuse what the key file cannot say before anything is written
    with atomic_path(out / plan_name) as tmp:
        shutil.copyfile(bundle.path / record.file, tmp)
    write_text(out / "labels.txt", labels_text(names, f"bundle {bundle.path}", ";"))
    config = out / f"config_infer_{bundle.path.name.replace('-', '_')}.txt"
    write_text(config, text)
    return config
