"""Frames in memory: BGR arrays, `pkd export --frame-input` (the graph resizes and crops whole uint8 frames), its
parity gate against open_clip's transform, frame profiles of TensorRT plans, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import _fake_tensorrt, reference_logits

from promptkd_edge.errors import PkdError
from promptkd_edge.export import frame as frame_graph
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.runtime import Classifier
from promptkd_edge.runtime.preprocess import PreprocessSpec, prepare

SIZES = [(72, 128), (90, 160)]  # frames 2.25x and 2.8x the tiny model's 32 pixels: the resize downscales


def frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Camera-like frames: smooth colour fields with edges and noise (parity.generated_images at a frame size)."""
    from promptkd_edge.export.parity import generated_images

    return list(frame_graph.frames_at(generated_images(count, (32, 32), seed), size))


def open_clip_logits(run: Path, images: list[np.ndarray], tmp: Path) -> np.ndarray:
    """The reference, independent of the bundle: open_clip's eval transform on the frames saved as PNG files."""
    from PIL import Image

    paths = []
    for i, a in enumerate(images):
        paths.append(tmp / f"f{i}.png")
        Image.fromarray(a).save(paths[-1])
    return reference_logits(run, paths)


@pytest.fixture(scope="module")
def frame_bundle(tiny_run, module_dir) -> Path:
    out = module_dir / "frame"
    export_run(tiny_run, out, ExportOptions(input_format="frame", head="both", parity_images=12,
                                            frame_gate_sizes=SIZES))
    return out


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_frame_bundle_matches_open_clip_on_frames_of_two_sizes(frame_bundle, tiny_run, tmp_path):
    m = manifest(frame_bundle)
    assert m["valid"] and m["model"]["input_format"] == "frame"
    assert m["model"]["inputs"][0]["shape"] == ["batch", "height", "width", 3]
    assert m["model"]["inputs"][0]["dtype"] == "uint8"
    record = m["model"]["frame"]
    assert record["method"] == "matrix" and record["gate_sizes"] == [list(s) for s in SIZES]
    gates = [p for p in m["parity"] if "frame matrix" in p["target"]]
    assert gates and all(g["passed"] for g in gates)
    clf = Classifier.from_bundle(frame_bundle, backend="onnxruntime")
    for k, size in enumerate(SIZES):
        x = frames(5, size, seed=10 + k)
        want = open_clip_logits(tiny_run, x, tmp_path)
        got = clf.logits(x)
        recorded = max(g["max_abs_logit_diff"] for g in gates)
        assert np.abs(got - want).max() <= max(recorded * 2, 1e-3)  # within the measured difference
        assert (got.argmax(1) == want.argmax(1)).all()


def test_auto_backend_times_a_frame_bundle_on_frames(frame_bundle, monkeypatch):
    from promptkd_edge.runtime import backends

    monkeypatch.setattr(backends, "PROBE_FRAME", (72, 128))  # 1080p by default; small frames keep this fast
    clf = Classifier.from_bundle(frame_bundle)  # backend "auto" measures the CPU options on frames
    assert clf.choice is not None and "onnxruntime" in clf.choice.timings
    x = frames(3, SIZES[1], seed=5)
    np.testing.assert_allclose(clf.logits(x), Classifier.from_bundle(frame_bundle, backend="onnxruntime").logits(x),
                               atol=1e-3)


def test_mixed_frame_sizes_keep_their_order_and_bgr_is_rgb_reversed(frame_bundle):
    clf = Classifier.from_bundle(frame_bundle, backend="onnxruntime")
    mixed = [frames(1, SIZES[i % 2], seed=i)[0] for i in range(5)]
    each = np.concatenate([clf.logits([f]) for f in mixed])
    np.testing.assert_allclose(clf.logits(mixed, batch_size=4), each, rtol=1e-5, atol=1e-5)
    bgr = Classifier.from_bundle(frame_bundle, backend="onnxruntime", channel_order="bgr")
    np.testing.assert_allclose(bgr.logits([f[..., ::-1] for f in mixed]), each, rtol=1e-5, atol=1e-5)
    assert not np.allclose(bgr.logits(mixed), each, atol=1e-3)  # the order matters on these frames


def test_bgr_arrays_on_a_crop_bundle_equal_rgb_reversed(tiny_run, module_dir):
    out = module_dir / "plain"
    export_run(tiny_run, out, ExportOptions(parity_images=4))
    x = frames(3, (40, 56), seed=4)
    rgb = Classifier.from_bundle(out, backend="onnxruntime")
    bgr = Classifier.from_bundle(out, backend="onnxruntime", channel_order="bgr")
    np.testing.assert_allclose(bgr.logits([a[..., ::-1].copy() for a in x]), rgb.logits(x), atol=1e-6)
    spec = rgb.preprocess
    np.testing.assert_array_equal(prepare([a[..., ::-1] for a in x], spec, channel_order="bgr"), prepare(x, spec))
    with pytest.raises(PkdError, match="channel order 'rgba'"):
        Classifier.from_bundle(out, backend="onnxruntime", channel_order="rgba")


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((40, 60, 3), np.float32), "image 1: .*uint8.*float32"),
    (np.zeros((40, 60, 4), np.uint8), "image 1: .*4 channels"),
    (np.zeros((40, 60, 2), np.uint8), "image 1: .*2 channels"),
    (np.zeros((0, 60, 3), np.uint8), "image 1: .*empty"),
    (np.zeros((3, 32, 32), np.float32), "image 1: .*normalised NCHW"),
])
def test_bad_frames_are_one_line_naming_the_input(frame_bundle, bad, message):
    good = frames(1, SIZES[0])[0]
    for order in ("rgb", "bgr"):
        clf = Classifier.from_bundle(frame_bundle, backend="onnxruntime", channel_order=order)
        with pytest.raises(PkdError, match=message) as err:
            clf.predict([good, bad, good])
        assert "\n" not in str(err.value)


def test_frame_graph_refuses_a_normalised_batch_but_takes_a_crop_sized_frame(frame_bundle):
    clf = Classifier.from_bundle(frame_bundle, backend="onnxruntime")
    with pytest.raises(PkdError, match=r"takes \[batch, height, width, 3\] uint8"):
        clf.run(np.zeros((2, 3, 32, 32), np.float32))
    crop = frames(2, (32, 32))
    assert clf.logits(crop).shape == (2, 3)  # a frame at the model size is a frame like any other
    with pytest.raises(PkdError, match="different sizes"):
        prepare([crop[0], frames(1, SIZES[0])[0]], clf.preprocess, input_format="frame")


def test_gate_refuses_a_resize_that_fails_with_the_measured_numbers(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(frame_graph, "THRESHOLDS", {"top1_agreement": 1.0, "min_cosine": 1.01})  # nothing passes
    with pytest.raises(PkdError, match=r"no in-graph frame resize passed the bundle's parity thresholds "
                                       r"\(top1_agreement 1, min_cosine 1.01\).*matrix on onnxruntime-cpu: top-1 "
                                       r"[0-9.]+%, cosine [0-9.]+.*export without --frame-input") as err:
        export_run(tiny_run, tmp_path / "b", ExportOptions(input_format="frame", parity_images=4,
                                                           frame_gate_sizes=SIZES[:1], frame_resize="matrix"))
    assert "\n" not in str(err.value) and not (tmp_path / "b").exists()


SPEC = PreprocessSpec(size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))


def identity_model(path: Path) -> Path:
    """A normalised-input model that returns its input: behind the frame transform, it outputs the crop itself."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "id",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 32, 32])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_resize_without_antialias_is_measured_worse_than_the_matrix(tmp_path):
    """The methods against open_clip's transform on the pixels themselves (an identity model): PIL's filter in the
    graph is within one level of 255; cubic without antialias is not, at a 1080p-like downscale ratio."""
    import onnxruntime

    spec, src = SPEC, identity_model(tmp_path / "id.onnx")
    x = np.stack(frames(3, (154, 274), seed=2))  # 1080/224 ~ 4.8: the same ratio as 1080p to 224
    want = prepare(list(x), spec)
    levels, shares = {}, {}
    for method in ("matrix", "antialias", "cubic"):
        frame_graph.wrap_model(src, src.with_name(f"{method}.onnx"), spec, method)
        session = onnxruntime.InferenceSession(str(src.with_name(f"{method}.onnx")), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": x})[0]
        off = np.abs(got - want) * np.asarray(spec.std).reshape(1, 3, 1, 1) * 255  # in levels of 255
        levels[method], shares[method] = off.max(), (off > 0.5).mean()
    assert levels["matrix"] <= 1.01 and levels["antialias"] <= 1.01
    assert shares["matrix"] < 0.01 and shares["antialias"] < 0.01  # PIL's rounding between passes kept
    assert levels["cubic"] > 3


def test_tensorrt_parser_refuses_an_antialiased_resize(tmp_path, monkeypatch):
    fake = _fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    for method, parses in (("antialias", False), ("box-cubic", True), ("matrix", True)):
        path = frame_graph.wrap_model(identity_model(tmp_path / "id.onnx"), tmp_path / f"{method}.onnx", SPEC,
                                      method)
        logger = fake.Logger(fake.Logger.WARNING)
        parser = fake.OnnxParser(fake.Builder(logger).create_network(0), logger)
        assert parser.parse_from_file(str(path)) is parses
        if not parses:
            assert "Antialiasing is not supported" in str(parser.get_error(0))


def test_old_bundles_have_no_frame_record(tiny_run, module_dir):
    out = module_dir / "plain"
    if not out.exists():
        export_run(tiny_run, out, ExportOptions(parity_images=4))
    m = manifest(out)
    assert "frame" not in m["model"] and m["model"]["input_format"] == "normalized"
    clf = Classifier.from_bundle(out, backend="onnxruntime")
    assert clf.logits(frames(2, SIZES[0])).shape == (2, 3)


def test_export_options_refuse_what_a_frame_graph_cannot_be():
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    with pytest.raises(PkdError, match="FP32 model.onnx"):
        ExportOptions(input_format="frame", precision="int8").validate()
    with pytest.raises(PkdError, match="not parsed by TensorRT"):
        ExportOptions(input_format="frame", frame_resize="antialias", trt=TrtBuildOptions()).validate()
    with pytest.raises(PkdError, match="unknown --frame-resize"):
        ExportOptions(input_format="frame", frame_resize="lanczos").validate()


def test_tensorrt_plan_of_a_frame_bundle_has_frame_profiles(frame_bundle, tmp_path, monkeypatch):
    import shutil

    from promptkd_edge.export.plan import add_engine
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    fake = _fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    bundle = tmp_path / "b"
    shutil.copytree(frame_bundle, bundle)
    sizes = [(24, 24), (72, 128), (96, 176)]
    trt = TrtBuildOptions(precision="fp16", profiles=[(1, 2, 4)], frame_sizes=sizes, engine_cache_dir=None)
    record = add_engine(bundle, ExportOptions(precision="fp16", trt=trt, parity_images=4))
    [call] = fake.fake.called("set_shape")
    assert call[1:] == ("image", (1, 24, 24, 3), (2, 72, 128, 3), (4, 96, 176, 3))
    assert record["frame_sizes"] == [list(s) for s in sizes] and record["parity_passed"]
    script = (bundle / record["trtexec"]).read_text()
    assert "--minShapes=image:1x24x24x3" in script and "--maxShapes=image:4x96x176x3" in script
    pinned = {c[1] for c in fake.fake.called("layer.precision")}
    assert any(name.startswith("frame/MatMul") for name in pinned)  # the in-graph resize stays FP32 on TRT 10
    m = manifest(bundle)
    [gate] = [p for p in m["parity"] if p.get("engine") == record["file"]]
    assert gate["images"] == 2 * 4  # the parity images at both gate sizes the profile takes
    clf = Classifier.from_bundle(bundle)
    assert clf.backend.name == "tensorrt"
    mixed = [frames(1, s, seed=i)[0] for i, s in enumerate([(72, 128), (24, 24), (96, 176), (72, 128)])]
    ort = Classifier.from_bundle(bundle, backend="onnxruntime").logits(mixed)
    np.testing.assert_allclose(clf.logits(mixed), ort, atol=1e-4)
    with pytest.raises(PkdError, match=r"image 1: a 176x97 frame is outside the TensorRT plan's frame profile "
                                       r"\(24x24 to 176x96\); rebuild the plan with --trt-frame-sizes"):
        clf.logits([mixed[0], frames(1, (97, 176))[0]])  # above the profile's max height
    with pytest.raises(PkdError, match="rejected input shape"):  # the plan itself holds the profile too
        clf.run(np.stack(frames(1, (97, 176))))


def test_export_run_with_a_tensorrt_11_fp16_plan_of_frames(tiny_run, tmp_path, monkeypatch):
    """`pkd export RUN --frame-input --trt` on TensorRT 11 (strongly typed: an FP16 graph is written, with the frame
    transform kept FP32); the plan is gated against the frame graph on ONNX Runtime at the gate's frame sizes."""
    import onnx

    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    _fake_tensorrt(monkeypatch, tmp_path, "11.4.0")
    out = tmp_path / "b"
    trt = TrtBuildOptions(precision="fp16", profiles=[(1, 2, 4)], frame_sizes=[(32, 32), (72, 128), (90, 160)],
                          engine_cache_dir=None)
    export_run(tiny_run, out, ExportOptions(input_format="frame", precision="fp16", trt=trt, parity_images=4,
                                            frame_gate_sizes=SIZES))
    m = manifest(out)
    [engine] = m["engines"]
    assert m["valid"] and engine["onnx"] == "model.fp16.onnx" and engine["frame_sizes"][2] == [90, 160]
    graph = onnx.load(str(out / "model.fp16.onnx")).graph
    transform = [n for n in graph.node if n.name.startswith("frame/")]
    fp16 = onnx.TensorProto.FLOAT16
    assert len(transform) == len(frame_graph.frame_node_names(onnx.load(str(out / "model.onnx"))))
    assert not [n.name for n in transform if n.op_type == "Cast" and n.attribute[0].i == fp16]  # FP32 throughout
    assert any(n.op_type == "Cast" and n.attribute[0].i == fp16 for n in graph.node)  # the model behind is FP16
    [gate] = [p for p in m["parity"] if p.get("engine") == engine["file"]]
    assert gate["passed"] and gate["images"] == 2 * 4 and "frame graph" in gate["reference"]
    x = [frames(1, s, seed=i)[0] for i, s in enumerate(SIZES)]
    got = Classifier.from_bundle(out, backend="tensorrt").logits(x)
    np.testing.assert_allclose(got, Classifier.from_bundle(out, backend="onnxruntime").logits(x), atol=0.05)


def test_triton_serves_frames_of_any_size_and_the_rest_refuses_one_line(frame_bundle, tmp_path):
    from promptkd_edge.export.deepstream import write_config
    from promptkd_edge.export.triton import write_repository

    folder = write_repository(frame_bundle, tmp_path / "models", name="frames", gpu=False)
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "image"\n    data_type: TYPE_UINT8\n    dims: [ -1, -1, 3 ]' in config
    with pytest.raises(PkdError, match="nvinfer scales every frame"):
        write_config(frame_bundle, tmp_path / "ds")
    with pytest.raises(PkdError, match="torch backend runs the student on crops"):
        Classifier.from_bundle(frame_bundle, backend="torch")
    from promptkd_edge.export.add_to_bundle import extend_bundle

    with pytest.raises(PkdError, match="bf16 is not offered"):
        extend_bundle(frame_bundle, ExportOptions(precision="bf16"))


def test_cli_frame_input_options(tiny_run, tmp_path):
    from conftest import pkd

    r = pkd("export", str(tiny_run), "--out", str(tmp_path / "b"), "--frame-input", "--uint8-input")
    assert r.returncode == 2 and "choose one" in r.stderr
    r = pkd("export", str(tiny_run), "--out", str(tmp_path / "b"), "--frame-input", "--frame-gate-size", "72by128")
    assert r.returncode == 2 and "--frame-gate-size '72by128' is not HEIGHTxWIDTH" in r.stderr
    r = pkd("export", str(tiny_run), "--out", str(tmp_path / "b"), "--frame-input", "--trt",
            "--trt-frame-sizes", "72x128,32x32,96x176")
    assert r.returncode == 2 and "need min <= opt <= max" in r.stderr
    assert not (tmp_path / "b").exists()


_ = torch  # the tiny run's student is a torch model
