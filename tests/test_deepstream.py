"""DeepStream entries against what gst-nvinfer really does (issue 19, defects 3-6 and the plan's TensorRT).

nvinfer's behaviour is taken from DeepStream's sources (cited in promptkd_edge/export/deepstream.py); configs are
read back with GLib's own key-file parser, the logits with ONNX Runtime on the bundle's model.onnx.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_class_names import cli, error_line, wide_terminal  # noqa: F401  (wide_terminal: one line per message)
from test_nothing_lost_serving import _with_plan, keyfile_group

from promptkd_edge.errors import PkdError
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.formats.manifest import TensorInfo
from promptkd_edge.runtime import Classifier
from promptkd_edge.runtime.bundle import open_bundle
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

G_MAXINT = 2**31 - 1
# nvbufsurftransform.h (DeepStream): NvBufSurfTransform_Inter and NvBufSurfTransform_Compute, in declaration order
INTER = ["Nearest", "Bilinear", "Algo1 (GPU-Cubic, VIC-5 Tap)", "Algo2", "Algo3", "Algo4", "Default"]
COMPUTE = ["Default (VIC on Jetson)", "GPU", "VIC"]


@pytest.fixture(scope="module")
def logits_bundle(tiny_run, module_dir) -> Path:
    export_run(tiny_run, module_dir / "logits", ExportOptions(parity_images=4, input_format="pixels"))
    return _with_plan(module_dir / "logits", module_dir / "pets-ds", "pets.plan")


@pytest.fixture(scope="module")
def both_bundle(tiny_run, module_dir) -> Path:
    export_run(tiny_run, module_dir / "both", ExportOptions(parity_images=4, input_format="pixels", head="both"))
    return _with_plan(module_dir / "both", module_dir / "pets-both", "pets.plan")


def write(bundle: Path, out: Path, *args: str) -> dict[str, str]:
    """`pkd export BUNDLE --deepstream OUT ARGS` (few images for the resize check); the [property] group as GLib
    reads it."""
    result = cli("export", bundle, "--deepstream", out, "--parity-images", "2", *args)
    assert result.exit_code == 0, result.output
    [config] = out.glob("config_infer_*.txt")
    return keyfile_group(config)


def refused(bundle: Path, out: Path, *args: str) -> str:
    line = error_line(cli("export", bundle, "--deepstream", out, "--parity-images", "2", *args))
    assert not out.exists()  # refused before anything is written
    return line


def nvinfer_classify(outputs: list[np.ndarray], threshold: float, labels: list[list[str]]) -> list[tuple]:
    """DeepStream's ClassifyPostprocessor::parseAttributesFromSoftmaxLayers for one object: one attribute per output
    layer, the class whose value is above the threshold and above the running maximum, which starts at 0;
    (layer, class, label or None) per attribute found."""
    found = []
    for layer, values in enumerate(outputs):
        best, attr = 0.0, None
        for c, v in enumerate(values):
            if v > threshold and v > best:
                best, attr = v, c
        if attr is not None:
            label = labels[layer][attr] if layer < len(labels) and attr < len(labels[layer]) else None
            found.append((layer, attr, label))
    return found


def comment(config: Path) -> str:
    return "\n".join(line for line in config.read_text(encoding="utf-8").splitlines() if line.startswith("#"))


# ------------------------------------------------------------------------- 3: a logits-only graph


def test_a_bundle_with_embeddings_is_refused_for_what_nvinfer_would_make_of_it(both_bundle, tmp_path):
    """nvinfer's classifier makes one attribute of every output binding: the `embeddings` of a `--head both` plan
    become a second classification without a label. Refused in one line that says to export --head logits."""
    labels = [open_bundle(both_bundle).class_names]  # labels.txt: one line, the logits' classes
    ort = OnnxRuntimeBackend(both_bundle / "model.onnx", providers="cpu")
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 3, 32, 32)).astype(np.float32)
    outputs = ort.run(pixels)
    ort.close()
    attrs = nvinfer_classify([outputs[n][0] for n in open_bundle(both_bundle).model.output_names], -1e9, labels)
    assert [a[0] for a in attrs] == [0, 1] and attrs[1][2] is None  # what the old config gave DeepStream

    line = refused(both_bundle, tmp_path / "ds")
    assert "embeddings" in line and "--head logits" in line and "both" not in line.split(":", 2)[-1]


def test_an_embeddings_only_bundle_is_told_to_export_logits_only(logits_bundle, tmp_path):
    from promptkd_edge.export.deepstream import check_outputs

    model = open_bundle(logits_bundle).model
    model.outputs = [o for o in model.outputs if o.name != "logits"]
    model.outputs.append(TensorInfo(name="embeddings", shape=["batch", 8], dtype="float32"))
    with pytest.raises(PkdError, match="--head logits --pixel-input") as e:
        check_outputs(model)
    assert "or both" not in str(e.value)


# ------------------------------------------------------------------------- 4: gie ids


def test_a_secondary_classifier_has_its_own_gie_id(logits_bundle, tmp_path):
    """Its labels carry its gie-unique-id; by default 2 on detector 1 (NVIDIA's secondary samples), never the
    operated detector's; primary mode writes no operate-on-gie-id."""
    keys = write(logits_bundle, tmp_path / "a", "--deepstream-mode", "secondary")
    assert (keys["gie-unique-id"], keys["operate-on-gie-id"], keys["process-mode"]) == ("2", "1", "2")
    keys = write(logits_bundle, tmp_path / "b", "--deepstream-mode", "secondary", "--gie-id", "7",
                 "--operate-on-gie-id", "3")
    assert (int(keys["gie-unique-id"]), int(keys["operate-on-gie-id"])) == (7, 3)
    keys = write(logits_bundle, tmp_path / "c", "--gie-id", str(G_MAXINT))
    assert int(keys["gie-unique-id"]) == G_MAXINT and keys["process-mode"] == "1" and "operate-on-gie-id" not in keys
    assert write(logits_bundle, tmp_path / "d")["gie-unique-id"] == "1"


@pytest.mark.parametrize("args, says", [
    (("--deepstream-mode", "secondary", "--gie-id", "1"), "--gie-id 1 is the id of the detector"),
    (("--deepstream-mode", "secondary", "--gie-id", "4", "--operate-on-gie-id", "4"), "e.g. --gie-id 5"),
    (("--gie-id", "0"), "--gie-id 0 is outside 1..2147483647"),
    (("--gie-id", "-1"), "--gie-id -1 is outside"),
    (("--gie-id", str(G_MAXINT + 1)), "is outside 1..2147483647"),
    (("--deepstream-mode", "secondary", "--operate-on-gie-id", "0"), "--operate-on-gie-id 0 is outside"),
    (("--operate-on-gie-id", "1"), "pass it with --deepstream-mode secondary"),
])
def test_gie_ids_nvinfer_would_misread_are_refused(logits_bundle, tmp_path, args, says):
    assert says in refused(logits_bundle, tmp_path / "ds", *args)


# ------------------------------------------------------------------------- 5: the threshold


@pytest.mark.parametrize("threshold", [-5.0, 0.0, 5.0])
def test_the_config_says_which_objects_get_a_label(logits_bundle, tmp_path, threshold):
    """The config states the rule nvinfer's parser applies (value > threshold and > 0), checked on the model's
    real logits and on logits <= 0, which no threshold labels."""
    write(logits_bundle, tmp_path / "ds", "--threshold", f"{threshold:g}")
    [config] = (tmp_path / "ds").glob("config_infer_*.txt")
    text = comment(config)
    assert "labels every input" not in text
    bound = float(text.split("best logit is > ")[1].split(" ")[0])
    scale = open_bundle(logits_bundle).logit_scale
    assert f"cosine > {bound / scale:.4g}" in text
    names = open_bundle(logits_bundle).class_names
    clf = Classifier.from_bundle(logits_bundle, backend="onnxruntime")
    rng = np.random.default_rng(1)
    logits = np.concatenate([clf.logits([rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(6)]),
                             -np.abs(rng.normal(size=(2, len(names)))), np.array([[0.0, -1.0, -2.0]])])
    for row in logits:
        labelled = bool(nvinfer_classify([row], threshold, [names]))
        assert labelled == (row.max() > bound), (row, threshold)


def test_a_threshold_no_logit_can_reach_is_refused(logits_bundle, tmp_path):
    """The logits are logit scale x cosine: a threshold at or above the scale would label no object, silently."""
    scale = open_bundle(logits_bundle).logit_scale
    line = refused(logits_bundle, tmp_path / "ds", "--threshold", str(math.ceil(scale)))
    assert line == (f"error: --threshold {math.ceil(scale)} can never be met: nvinfer compares it with the logits, "
                    f"which are at most the bundle's logit scale {scale:g} (x cosine <= 1), so no object would be "
                    f"labelled; choose one below {scale:g} (e.g. {0.25 * scale:.3g} for a cosine of 0.25)")
    write(logits_bundle, tmp_path / "ok", "--threshold", f"{0.9 * scale:g}")


def test_the_threshold_help_and_docs_say_what_nvinfer_does():
    import promptkd_edge.export.deepstream as ds

    help_text = " ".join(cli("export", "--help").output.split())
    assert "above 0" in help_text and "gets no label" in help_text
    assert "labels every input" not in ds.__doc__ and "above 0" in " ".join(ds.__doc__.split())
    bundle_md = " ".join((Path(ds.__file__).parents[2] / "export" / "BUNDLE.md").read_text().split())
    assert "labels every input" not in bundle_md and "best logit is <= 0" in bundle_md


# ------------------------------------------------------------------------- 6: the resize


def _with_interpolation(bundle: Path, out: Path, interpolation: str, resize_mode: str | None = None) -> Path:
    """A copy of `bundle` whose preprocess.json says `interpolation` (its sha256 in the manifest updated)."""
    shutil.copytree(bundle, out)
    spec = json.loads((out / "preprocess.json").read_text())
    spec["interpolation"] = interpolation
    spec["resize_mode"] = resize_mode or spec.get("resize_mode", "shortest")
    (out / "preprocess.json").write_text(json.dumps(spec))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["preprocess.json"] = hashlib.sha256((out / "preprocess.json").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("interpolation, inter", [("bicubic", "Algo1 (GPU-Cubic, VIC-5 Tap)"),
                                                  ("bilinear", "Bilinear"), ("nearest", "Nearest")])
def test_nvinfer_scales_with_the_bundles_interpolation_on_the_gpu(logits_bundle, tmp_path, interpolation, inter):
    bundle = _with_interpolation(logits_bundle, tmp_path / "b", interpolation)
    keys = write(bundle, tmp_path / "ds")
    assert INTER[int(keys["scaling-filter"])] == inter and COMPUTE[int(keys["scaling-compute-hw"])] == "GPU"
    [config] = (tmp_path / "ds").glob("config_infer_*.txt")
    text = comment(config)
    assert "no centre crop" in text and "does not antialias" in text


def test_an_interpolation_nvinfer_lacks_is_refused(logits_bundle, tmp_path):
    bundle = _with_interpolation(logits_bundle, tmp_path / "b", "lanczos")
    assert "lanczos" in refused(bundle, tmp_path / "ds")


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_nvinfer_scale_is_a_resize_without_antialias(mode):
    """Against torch's interpolate without antialias (half-pixel centres): the same uint8 pixels."""
    from promptkd_edge.export.deepstream import nvinfer_scale

    img = np.random.default_rng(2).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    for size in ((32, 32), (90, 101)):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].double()
        kw = {"align_corners": False, "antialias": False} if mode == "bilinear" else {}
        ref = torch.nn.functional.interpolate(x, size=size, mode=mode if mode == "bilinear" else "nearest-exact",
                                              **kw)
        ref = ref.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        assert np.abs(nvinfer_scale(img, size, "squash", mode).astype(int) - ref).max() <= 1


def test_nvinfer_cubic_is_keys_cubic():
    """Keys' cubic (a = -0.5, what GPU cubic filters compute) reproduces quadratics: an integer-valued quadratic
    image upscaled comes out as the quadratic at the output pixels' source positions, up to the output's uint8
    rounding, away from the clamped edges (torch's a = -0.75 misses by 2)."""
    from promptkd_edge.export.deepstream import nvinfer_scale

    h = w = 13
    out = (50, 61)
    quad = lambda y, x: 20 + (y - 6) ** 2 + (x - 6) ** 2 + x * y  # noqa: E731
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.repeat(quad(yy, xx)[..., None], 3, 2)
    assert img.max() <= 255
    got = nvinfer_scale(img.astype(np.uint8), out, "squash", "bicubic")[..., 0].astype(float)
    sy, sx = (np.arange(out[0]) + 0.5) * h / out[0] - 0.5, (np.arange(out[1]) + 0.5) * w / out[1] - 0.5
    want = quad(sy[:, None], sx[None, :])
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(got[inner] - want[inner]).max() <= 0.5 + 1e-6


def test_keeping_the_aspect_ratio_pads_symmetrically_as_gst_nvinfer():
    from promptkd_edge.export.deepstream import nvinfer_scale

    img = np.full((20, 40, 3), 200, np.uint8)  # wide: fitted to 16 x 32, 8 rows of zeros above and below
    out = nvinfer_scale(img, (32, 32), "longest", "bicubic")
    assert (out[8:24] == 200).all() and (out[:8] == 0).all() and (out[24:] == 0).all()


def test_the_config_records_the_measured_resize_difference(logits_bundle, tmp_path):
    """The agreement and logit difference written into the config equal an independent measurement: the bundle's
    own Classifier against torch's bilinear resize of the whole image (no crop, no antialias) into model.onnx."""
    bundle = _with_interpolation(logits_bundle, tmp_path / "b", "bilinear")
    data = tmp_path / "data"
    data.mkdir()
    for i, (h, w) in enumerate([(40, 90), (90, 40), (60, 60), (33, 50), (120, 48)]):  # crop and squash differ
        arr = np.random.default_rng(i).integers(0, 256, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
        Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC).save(data / f"{i}.png")
    images = sorted(data.glob("*.png"))
    result = cli("export", bundle, "--deepstream", tmp_path / "ds", "--data", data, "--parity-images", "5")
    assert result.exit_code == 0, result.output

    own = Classifier.from_bundle(bundle, backend="onnxruntime").logits(images)
    pixels = []
    for path in images:
        x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].double()
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
        pixels.append(x.round().clamp(0, 255)[0].float().numpy())
    ort = OnnxRuntimeBackend(bundle / "model.onnx", providers="cpu")
    theirs = ort.run(np.stack(pixels))["logits"]
    ort.close()
    agree, diff = int((own.argmax(1) == theirs.argmax(1)).sum()), float(np.abs(own - theirs).max())
    [config] = (tmp_path / "ds").glob("config_infer_*.txt")
    measured = comment(config).split("top-1 agreement ")[1]
    assert f"({agree}/5 images, run data: {data})" in measured
    got = float(measured.split("max |d logit| ")[1].split(" ")[0])
    assert diff > 0 and got == pytest.approx(diff, rel=0.02, abs=2e-3)


# ------------------------------------------------------------------------- the plan's TensorRT


def test_the_config_names_the_tensorrt_and_gpu_the_plan_needs(logits_bundle, tmp_path):
    write(logits_bundle, tmp_path / "ds")
    [config] = (tmp_path / "ds").glob("config_infer_*.txt")
    [engine] = open_bundle(logits_bundle).engines
    text = comment(config)
    assert f"built with TensorRT {engine.tensorrt} for {engine.gpu} (sm_87)" in text
    assert f"DeepStream's TensorRT must be {engine.tensorrt}" in text


def test_doctor_checks_the_plan_a_deepstream_config_names(logits_bundle, tmp_path, monkeypatch):
    """`pkd doctor --bundle DIR` on the DeepStream machine: the config's plan record against the TensorRT and GPU
    there (a plan deserializes only with the TensorRT release that built it, on that architecture)."""
    from test_engine_gate import _doctor, _fake_tensorrt

    write(logits_bundle, tmp_path / "ds")
    [engine] = open_bundle(logits_bundle).engines
    _fake_tensorrt(monkeypatch, tmp_path, engine.tensorrt)  # Orin, sm_87, as the plan records
    check = _doctor("--bundle", str(tmp_path / "ds"), "--json")["bundle"]["tensorrt_plans"]
    assert check["kind"] == "deepstream config" and check["reason"] is None
    [plan] = check["plans"]
    assert plan["runs_here"] is True and plan["file"].endswith(": pets.plan"), plan
    _fake_tensorrt(monkeypatch, tmp_path, "10.4.0")
    [config] = (tmp_path / "ds").glob("config_infer_*.txt")
    text = " ".join(_doctor("--bundle", str(config)).split())  # the config file itself, as text output
    assert (f"was built for TensorRT {engine.tensorrt} on sm_87 (Orin); this machine has TensorRT 10.4.0 on sm_87 "
            "(Orin): rebuild it here with `pkd export BUNDLE --trt`; then write the config again") in text
