"""pkd export: the folded graph equals the PyTorch student, precisions are gated, bundles are checked."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import pkd

from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.fold import FoldedStudent, fold_batchnorm
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.formats.manifest import EngineEntry
from promptkd_edge.models.class_vectors import ClassVectors
from promptkd_edge.models.student import load_student
from promptkd_edge.runtime import Classifier
from promptkd_edge.runtime.bundle import open_bundle
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend


def reference_logits(run: Path, images: list[Path]) -> np.ndarray:
    """Independent of the export: open_clip's own eval transform, the unfolded student, W applied outside."""
    from PIL import Image

    from promptkd_edge.data.views import eval_transform

    student = load_student(run / "student.safetensors")
    vectors = ClassVectors.load(run)
    tf = eval_transform(student.preprocess)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in images])
    with torch.no_grad():
        return vectors.logits(student(x)).numpy()


@pytest.fixture(scope="module")
def bundles(tiny_run, module_dir) -> dict[str, Path]:
    """One bundle per export flavour of the shared tiny run."""
    root = module_dir
    flavours = {"fp32": {}, "fp16": {"precision": "fp16"}, "int8": {"precision": "int8", "head": "both"},
                "uint8": {"input_format": "uint8", "head": "embeddings"}, "pixels": {"input_format": "pixels"}}
    for name, kw in flavours.items():
        export_run(tiny_run, root / name, ExportOptions(**kw))
    return {name: root / name for name in flavours}


def test_fold_batchnorm_equals_linear_then_batchnorm():
    torch.manual_seed(0)
    linear, bn = torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(7, 6)
    torch.testing.assert_close(fold_batchnorm(linear, bn)(x), bn(linear(x)), atol=1e-6, rtol=1e-5)


def test_folded_student_equals_student_and_class_vectors(tiny_run):
    student = load_student(tiny_run / "student.safetensors")
    with torch.no_grad():  # make the BatchNorm statistics non-trivial so the fold matters
        student.projector[1].running_mean.uniform_(-0.5, 0.5)
        student.projector[1].running_var.uniform_(0.5, 2.0)
    vectors = ClassVectors.load(tiny_run)
    x = torch.randn(3, 3, 32, 32)
    logits, emb = FoldedStudent(student, vectors, "both")(x)
    with torch.no_grad():
        ref = student(x)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, vectors.logits(ref), atol=1e-4, rtol=1e-5)


def test_fp32_bundle_matches_pytorch_at_batch_1_3_8(bundles, tiny_run):
    bundle = open_bundle(bundles["fp32"])
    m = manifest_json(bundles["fp32"])  # the file format (export/BUNDLE.md)
    assert m["valid"] and m["model"]["precision"] == "fp32" and m["versions"]["opset"] == 20
    gate = m["parity"][0]
    assert gate["passed"] and gate["top1_agreement"] == 1.0 and gate["max_abs_logit_diff"] <= 1e-3
    assert gate["image_source"].startswith("run data")
    assert set(m["files"]) == {"model.onnx", "classes.json", "class_vectors.safetensors", "preprocess.json",
                               "student.safetensors"}
    assert m["model"]["inputs"] == [{"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float32",
                                     "layout": "NCHW"}]
    assert m["model"]["outputs"] == [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}]
    proto = onnx.load(str(bundle.model_path))
    onnx.checker.check_model(proto, full_check=True)
    assert not any(i.name.startswith("projector.1") for i in proto.graph.initializer)  # BatchNorm folded away
    ort = OnnxRuntimeBackend(bundle.model_path, providers="cpu")
    student, vectors = load_student(tiny_run / "student.safetensors"), ClassVectors.load(tiny_run)
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = vectors.logits(student(x)).numpy()
        got = ort.run(x.numpy())["logits"]
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_classifier_predicts_like_the_pytorch_student(bundles, tiny_run):
    images = sorted((tiny_run.parent / "unlabeled").rglob("*.png"))[:6]
    ref = reference_logits(tiny_run, images)
    for name in ("fp32", "uint8", "pixels"):  # uint8 / pixel graphs normalise themselves; predictions must not move
        clf = Classifier.from_bundle(bundles[name], backend="onnxruntime")
        np.testing.assert_allclose(clf.logits(images), ref, atol=1e-3)
        preds = clf.predict(images, top_k=2)
        names = ClassVectors.load(tiny_run).names
        assert [p.label for p in preds] == [names[i] for i in ref.argmax(1)]
        probs = np.exp(ref - ref.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        assert preds[0].probability == pytest.approx(float(probs[0].max()), abs=1e-4)
        assert len(preds[0].labels) == 2 and preds[0].probabilities[0] >= preds[0].probabilities[1]


def test_pixel_bundle_takes_nchw_float_pixels(bundles):
    m = manifest_json(bundles["pixels"])["model"]
    assert m["input_format"] == "pixels" and m["uint8_input"] is False
    assert m["inputs"][0] == {"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float32", "layout": "NCHW"}
    assert open_bundle(bundles["uint8"]).model.input_format == "uint8"
    clf = Classifier.from_bundle(bundles["pixels"], backend="onnxruntime")  # auto might pick bf16 for one of them
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    x = clf.inputs([img])
    assert x.dtype == np.float32 and x.max() > 1.5  # pixel units, not normalised
    plain = Classifier.from_bundle(bundles["fp32"], backend="onnxruntime")
    np.testing.assert_allclose(clf.logits([img]), plain.logits([img]), atol=1e-3)


def manifest_json(bundle: Path) -> dict:
    """manifest.json as written: the file format the tests hold the bundle to."""
    return json.loads((bundle / "manifest.json").read_text())


def _deepstream_bundle(bundles, tmp_path, monkeypatch, profiles=((1, 4, 8),), precision="fp16"):
    """The pixel bundle with a plan built by the fake TensorRT 10.3 (a real engine record)."""
    from promptkd_edge.export.plan import add_engine
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    bundle = tmp_path / "pets-ds"
    shutil.copytree(bundles["pixels"], bundle)
    _fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    add_engine(bundle, ExportOptions(precision=precision, trt=TrtBuildOptions(precision=precision,
                                                                              profiles=list(profiles)),
                                     parity_images=3))
    return bundle


def test_deepstream_config_matches_the_manifest(bundles, tmp_path, monkeypatch):
    """Every nvinfer field comes from the bundle: its plan, labels, input size, output, precision, profiles."""
    import configparser

    bundle = _deepstream_bundle(bundles, tmp_path, monkeypatch, profiles=((1, 4, 8), (1, 16, 32)))
    r = pkd("export", str(bundle), "--deepstream", str(tmp_path / "ds"), "--deepstream-mode", "secondary",
            "--threshold", "5")  # writing the config needs no TensorRT
    assert r.returncode == 0, r.stderr
    config_path = tmp_path / "ds" / "config_infer_pets_ds.txt"
    manifest = manifest_json(bundle)
    [engine] = manifest["engines"]
    parser = configparser.ConfigParser()
    parser.read(config_path)
    prop = parser["property"]
    plan = tmp_path / "ds" / prop["model-engine-file"]
    assert plan.read_bytes() == (bundle / engine["file"]).read_bytes()
    labels = (tmp_path / "ds" / prop["labelfile-path"]).read_text().strip().split(";")
    assert labels == open_bundle(bundle).class_names
    _, c, h, w = manifest["model"]["inputs"][0]["shape"]
    assert prop["infer-dims"] == f"{c};{h};{w}"
    assert prop["batch-size"] == "8"  # the first profile's max (nvinfer runs profile 0)
    assert prop["output-blob-names"] == "logits" and "logits" in [o["name"] for o in manifest["model"]["outputs"]]
    assert prop["network-mode"] == "2" and engine["precision"] == "fp16"
    assert (prop["network-type"], prop["process-mode"], prop["model-color-format"]) == ("1", "2", "0")
    assert (prop["net-scale-factor"], prop["offsets"]) == ("1.0", "0.0;0.0;0.0")  # identity: the graph normalises
    assert prop["maintain-aspect-ratio"] == "0" and prop["classifier-threshold"] == "5"
    assert prop["operate-on-gie-id"] == "1"


def test_deepstream_refuses_what_nvinfer_cannot_run(bundles, tmp_path, monkeypatch):
    from promptkd_edge.export.deepstream import batch_size_for, write_config

    r = pkd("export", str(bundles["fp32"]), "--deepstream", str(tmp_path / "ds"))
    assert r.returncode == 2 and "export the run again with --pixel-input" in r.stderr
    assert not (tmp_path / "ds").exists()
    with pytest.raises(PkdError, match="outputs embeddings only|is uint8"):
        write_config(bundles["uint8"], tmp_path / "ds")
    with pytest.raises(PkdError, match="it has: none"):
        write_config(bundles["pixels"], tmp_path / "ds")
    assert batch_size_for([[1, 8, 32]], None) == 32 and batch_size_for([[1, 8, 32]], 64) == 32
    assert batch_size_for([[1, 8, 32]], 4) == 4
    with pytest.raises(PkdError, match="first optimization profile starts at batch 4"):
        batch_size_for([[4, 8, 16], [1, 1, 1]], None)


def test_uint8_bundle_takes_nhwc_uint8(bundles):
    m = manifest_json(bundles["uint8"])["model"]
    assert m["inputs"][0] == {"name": "image", "shape": ["batch", 32, 32, 3], "dtype": "uint8", "layout": "NHWC"}
    assert m["outputs"] == [{"name": "embeddings", "shape": ["batch", 128], "dtype": "float32"}]
    clf = Classifier.from_bundle(bundles["uint8"])
    emb = clf.embed([np.full((40, 50, 3), 128, np.uint8)])
    assert emb.shape == (1, 128) and np.linalg.norm(emb, axis=1) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(PkdError, match="dtype float32; this model takes uint8"):
        clf.run(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(PkdError, match=r"shape \[1, 3, 32, 32\]"):
        clf.run(np.zeros((1, 3, 32, 32), np.uint8))


def test_embeddings_head_swaps_class_lists_without_rebuilding(bundles):
    clf = Classifier.from_bundle(bundles["uint8"])
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    emb = clf.embed([img])
    other = clf.with_classes(["a", "b"], np.stack([emb[0], -emb[0]]), logit_scale=10.0)
    pred = other.predict([img], top_k=2)[0]
    assert pred.labels == ["a", "b"]
    assert pred.probability == pytest.approx(1 / (1 + np.exp(-20.0)), abs=1e-5)
    with pytest.raises(PkdError, match="inside its graph"):
        Classifier.from_bundle(bundles["fp32"]).with_classes(["a"], emb)
    with pytest.raises(PkdError, match="logits only"):
        Classifier.from_bundle(bundles["fp32"]).embed([img])


def test_fp16_graph_keeps_layernorm_softmax_and_head_in_fp32(bundles):
    m = manifest_json(bundles["fp16"])
    gate = m["parity"][0]
    assert m["model"]["precision"] == "fp16" and gate["passed"] and gate["min_cosine"] >= 0.999
    proto = onnx.load(str(bundles["fp16"] / "model.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    types = _value_types(proto)
    for node in proto.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax") or node.name in m["model"]["fp32_nodes"]:
            assert types[node.output[0]] == onnx.TensorProto.FLOAT, node.name
    assert m["model"]["inputs"][0]["dtype"] == "float32" and m["model"]["outputs"][0]["dtype"] == "float32"


def _value_types(proto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name: v.type.tensor_type.elem_type for v in values}


def test_int8_bundle_is_qdq_and_passes_its_gate(bundles):
    m = manifest_json(bundles["int8"])
    gate = m["parity"][0]
    assert m["model"]["precision"] == "int8" and gate["passed"]
    assert gate["top1_agreement"] >= 0.99 and gate["min_cosine"] >= 0.99 and gate["cosine_of"] == "embeddings"
    assert m["model"]["conversion"]["calibration_images"] > 0 and m["model"]["conversion"]["quantized_nodes"] > 0
    proto = onnx.load(str(bundles["int8"] / "model.onnx"))
    dq_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    quantized = [n for n in proto.graph.node if any(i in dq_outputs for i in n.input)]
    assert {n.op_type for n in quantized} <= {"MatMul", "Gemm", "Conv", "Shape"}  # no Q/DQ on outputs
    assert not any(n.name in m["model"]["fp32_nodes"] for n in quantized)  # the logits MatMul stays float


def test_failed_gate_writes_nothing_and_force_marks_the_bundle_invalid(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.THRESHOLDS, "fp32", {"top1_agreement": 1.0, "max_abs_logit_diff": 0.0})
    out = tmp_path / "b"
    with pytest.raises(PkdError, match=r"parity gate failed .*max \|delta logit\|"):
        export_run(tiny_run, out, ExportOptions(parity_images=4))
    assert not out.exists() and not list(tmp_path.iterdir())
    manifest = export_run(tiny_run, out, ExportOptions(parity_images=4, force=True))
    assert manifest.valid is False and not manifest.parity[0].passed
    with pytest.raises(PkdError, match="failed its parity gate"):
        Classifier.from_bundle(out)
    assert Classifier.from_bundle(out, allow_invalid=True).predict([np.zeros((32, 32, 3), np.uint8)])


def test_existing_bundle_is_not_overwritten_unless_asked(tiny_run, tmp_path):
    out = tmp_path / "b"
    export_run(tiny_run, out, ExportOptions(parity_images=2))
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(PkdError, match="already exists and is a bundle"):
        export_run(tiny_run, out, ExportOptions(parity_images=2, head="both"))
    assert (out / "manifest.json").read_bytes() == before
    m = export_run(tiny_run, out, ExportOptions(parity_images=2, head="both", overwrite=True))
    assert m.model.head == "both" and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_tampered_or_incomplete_bundle_is_refused(bundles, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundles["fp32"], bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PkdError, match="model.onnx does not match its sha256"):
        Classifier.from_bundle(bad)
    r = pkd("predict", str(bad), str(bundles["fp32"] / "classes.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "modified" in r.stderr and "Traceback" not in r.stderr
    (bad / "model.onnx").write_bytes((bundles["fp32"] / "model.onnx").read_bytes())
    (bad / "class_vectors.safetensors").unlink()
    with pytest.raises(PkdError, match="class_vectors.safetensors is missing"):
        open_bundle(bad)


def test_bad_images_are_one_clear_error(bundles):
    clf = Classifier.from_bundle(bundles["fp32"])
    with pytest.raises(PkdError, match="4 channels"):
        clf.predict([np.zeros((32, 32, 4), np.uint8)])
    with pytest.raises(PkdError, match="no images given"):
        clf.predict([])


def test_concurrent_predict_calls_agree_with_sequential_ones(bundles):
    from concurrent.futures import ThreadPoolExecutor

    clf = Classifier.from_bundle(bundles["fp32"])
    rng = np.random.default_rng(1)
    batches = [[rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)] for _ in range(8)]
    expected = [clf.logits(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(clf.logits, batches))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e, g)


def test_runtime_imports_and_predicts_without_torch(bundles):
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from promptkd_edge.runtime import Classifier\n"
            f"c = Classifier.from_bundle({str(bundles['fp32'])!r})\n"
            "p = c.predict([np.zeros((32, 32, 3), np.uint8)])[0]\n"
            "print(p.label, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "False"


def test_torch_backend_runs_the_same_graph(bundles):
    x = [np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    ort = Classifier.from_bundle(bundles["fp32"], backend="onnxruntime").logits(x)
    tch = Classifier.from_bundle(bundles["fp32"], backend="torch")
    assert tch.description.startswith("torch")
    np.testing.assert_allclose(tch.logits(x), ort, atol=1e-4)


def test_cli_export_predict_and_errors(tiny_run, tmp_path):
    out = tmp_path / "bundle"
    r = pkd("export", str(tiny_run), "--out", str(out), "--parity-images", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["valid"] is True
    images = tiny_run.parent / "unlabeled"
    r = pkd("predict", str(out), str(images), "--top-k", "2", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert len(result["predictions"]) == 16 and len(result["predictions"][0]["labels"]) == 2
    # auto on a CPU: the faster of the gated options measured here (ONNX Runtime or OpenVINO), and why
    assert result["backend"].split()[0] in ("onnxruntime", "openvino") and result["backend"].endswith("(auto)")
    assert result["backend_choice"]["picked"] in ("onnxruntime", "openvino-fp32", "openvino-bf16")
    (tmp_path / "empty").mkdir()
    for args, message in [
        (("export", str(tiny_run), "--out", str(out)), "already exists"),
        (("export", str(tiny_run), "--out", str(tmp_path / "t"), "--trt"), "TensorRT is not installed"),
        (("export", str(tiny_run), "--out", str(tmp_path / "f"), "--precision", "fp8"), "TensorRT only"),
        (("export", str(out)), "is a bundle"),
        (("predict", str(out), str(tmp_path / "empty")), "no images under"),
        (("predict", str(tmp_path / "nope"), str(images)), "bundle not found"),
        (("predict", str(out), str(images), "--backend", "tensorrt"), "holds no TensorRT plan"),
    ]:
        r = pkd(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "t").exists() and not (tmp_path / "f").exists()


@pytest.mark.slow
def test_vit_b16_student_exports_with_parity(tmp_path):
    """The real architecture (random weights, 224 px, 4 prompts x 9 layers, 768-d teacher space)."""
    from promptkd_edge.models.openclip import ModelSpec, load_clip
    from promptkd_edge.models.student import StudentConfig, build_student, save_student

    torch.manual_seed(0)
    config = StudentConfig(spec="ViT-B-16", teacher_dim=768, prompt_tokens=4, prompt_depth=9, init_seed=0)
    student = build_student(load_clip(ModelSpec.parse("ViT-B-16")), config).eval()
    with torch.no_grad():
        student.tower.prompts.normal_(std=0.5)  # prompts that move the output, so folding them is checked
    run = tmp_path / "run"
    run.mkdir()
    save_student(student, run / "student.safetensors")
    vectors = ClassVectors([f"c{i}" for i in range(20)], torch.nn.functional.normalize(torch.randn(20, 768), dim=-1),
                           "ViT-L-14", "a photo of a {}.", 100.0)
    vectors.save(run)
    m = export_run(run, tmp_path / "b", ExportOptions(parity_images=3, head="both"))
    assert m.valid and m.parity[0].extra["image_source"] == "generated"
    assert m.model.inputs[0].shape == ["batch", 3, 224, 224]
    ort = OnnxRuntimeBackend(tmp_path / "b" / "model.onnx", providers="cpu")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            emb = student(x)
        out = ort.run(x.numpy())
        np.testing.assert_allclose(out["embeddings"], emb.numpy(), atol=1e-4)
        np.testing.assert_allclose(out["logits"], vectors.logits(emb).numpy(), atol=2e-3)
        assert (out["logits"].argmax(1) == vectors.logits(emb).numpy().argmax(1)).all()


# ------------------------------------------------------------------------------ TensorRT, against the fakes

def _fake_tensorrt(monkeypatch, tmp_path, version: str = "10.3.0"):
    from fake_tensorrt import make_fake_cudart, make_fake_trt

    from promptkd_edge.runtime import tensorrt_backend

    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "cache"))
    rt = make_fake_cudart()
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    fake = make_fake_trt(version)
    fake.fake.cudart = rt
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def _float_types_outside_qdq(path: Path) -> dict[str, set[str]]:
    """{op type: element types of its float inputs} for the compute nodes of a graph (shape inference on)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)})
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    out: dict[str, set[str]] = {}
    for node in g.node:
        if node.op_type in ("MatMul", "Gemm", "Conv", "Gelu", "Add", "Mul", "LayerNormalization", "Softmax"):
            ts = {onnx.TensorProto.DataType.Name(types[i]) for i in node.input if i and types.get(i) in floats}
            out.setdefault(node.op_type, set()).update(ts)
    return out


@pytest.mark.parametrize(("version", "precision", "graph"), [
    ("10.3.0", "fp16", "model.onnx"), ("11.4.0", "fp16", "model.fp16.onnx"), ("10.3.0", "int8", "model.int8.onnx"),
    ("11.4.0", "int8", "model.int8-fp16.onnx")])
def test_export_with_tensorrt_builds_gates_and_records_the_plan(tiny_run, tmp_path, monkeypatch, version,
                                                                 precision, graph):
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    fake = _fake_tensorrt(monkeypatch, tmp_path, version)
    out = tmp_path / "b"
    trt = TrtBuildOptions(precision=precision, profiles=[(1, 1, 1), (1, 4, 8)])
    export_run(tiny_run, out, ExportOptions(precision=precision, trt=trt, parity_images=6, calibration_images=8))
    m = manifest_json(out)
    assert m["valid"] and m["model"]["precision"] == "fp32"  # model.onnx stays the FP32 master
    [engine] = m["engines"]
    assert engine["onnx"] == graph and engine["tensorrt"] == version and engine["precision"] == precision
    assert engine["profiles"] == [[1, 1, 1], [1, 4, 8]] and engine["compute_capability"] == "8.7"
    assert engine["file"] in m["files"] and graph in m["files"] and engine["trtexec"] in m["files"]
    [gate] = [p for p in m["parity"] if p.get("engine") == engine["file"]]
    assert gate["passed"] and gate["reference"] == "pytorch" and gate["top1_agreement"] >= 0.99
    flags = [c[1] for c in fake.fake.called("set_flag")]
    if version.startswith("10"):
        assert "FP16" in flags and "OBEY_PRECISION_CONSTRAINTS" in flags
        pinned = {c[1] for c in fake.fake.called("layer.precision")}
        assert set(m["model"]["fp32_nodes"]) <= pinned  # the L2 norm and the logits MatMul stay FP32
    else:
        assert not flags
    if precision == "int8":  # defect 1: no INT32 biases (TensorRT's DequantizeLinear refuses them)
        from promptkd_edge.export.tensorrt_build import check_tensorrt_qdq

        assert check_tensorrt_qdq(out / graph, int(version.split(".")[0])) > 0
        assert engine["conversion"]["tool"] == "onnxruntime.quantization" and engine["conversion"]["biases"] == "float"
        types = _float_types_outside_qdq(out / graph)
        if version.startswith("11"):  # defect 10: FP16 wherever it is not INT8; the FP32 islands stay FP32
            assert types["MatMul"] >= {"FLOAT16"} and types["Gelu"] == {"FLOAT16"}
            assert types["LayerNormalization"] == {"FLOAT"} and types["Softmax"] == {"FLOAT"}
        else:  # TensorRT 10 picks FP16 with its builder flags; the graph stays FP32 around the Q/DQ
            assert types["MatMul"] == {"FLOAT"}
    # the runtime picks the plan on this (fake) TensorRT and GPU, and agrees with ONNX Runtime
    clf = Classifier.from_bundle(out)
    assert clf.backend.name == "tensorrt"
    x = [np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    ort = Classifier.from_bundle(out, backend="onnxruntime").logits(x)
    np.testing.assert_allclose(clf.logits(x), ort, atol=0.05 if precision != "fp32" else 1e-4)


def test_plan_for_another_gpu_falls_back_to_the_cpu(tiny_run, tmp_path, monkeypatch):
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    _fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    out = tmp_path / "b"
    export_run(tiny_run, out, ExportOptions(precision="fp32", trt=TrtBuildOptions(precision="fp32"),
                                            parity_images=2))
    _fake_tensorrt(monkeypatch, tmp_path, "11.4.0")  # the same bundle on a machine with another TensorRT
    clf = Classifier.from_bundle(out)
    assert clf.backend.name in ("onnxruntime", "openvino") and clf.backend.device == "cpu"  # the CPU's choice
    assert "built for TensorRT 10.3.0" in clf.notes[0]
    with pytest.raises(PkdError, match="rebuild it here"):
        Classifier.from_bundle(out, backend="tensorrt")


def test_adding_a_plan_to_an_existing_bundle_on_the_target(bundles, tmp_path, monkeypatch):
    from promptkd_edge.export.plan import add_engine
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    bundle = tmp_path / "b"
    shutil.copytree(bundles["fp32"], bundle)
    fake = _fake_tensorrt(monkeypatch, tmp_path, "11.4.0")
    record = add_engine(bundle, ExportOptions(precision="fp32", trt=TrtBuildOptions(precision="fp32"),
                                              parity_images=4))
    m = manifest_json(bundle)
    assert m["engines"] == [record] and m["valid"]
    assert m["parity"][-1]["reference"] == "onnxruntime-cpu fp32" and m["parity"][-1]["passed"]
    assert fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED is not None
    with pytest.raises(PkdError, match="built from an FP32 model.onnx"):
        add_engine(bundles["fp16"], ExportOptions(precision="fp16", trt=TrtBuildOptions(precision="fp16")))


def test_a_second_device_builds_from_the_bundles_recorded_graph(tiny_run, tmp_path, monkeypatch):
    """Plans for several GPUs / TensorRT releases come from one calibration: the recorded Q/DQ graph is reused."""
    from promptkd_edge.export import plan as plan_module
    from promptkd_edge.export.plan import add_engine
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    _fake_tensorrt(monkeypatch, tmp_path, "11.4.0")
    out = tmp_path / "b"
    options = ExportOptions(precision="int8", trt=TrtBuildOptions(precision="int8"), parity_images=4,
                            calibration_images=8)
    first = export_run(tiny_run, out, options).engines[0].to_dict()
    _fake_tensorrt(monkeypatch, tmp_path, "11.5.0")  # another TensorRT 11 release on the target

    def no_new_graph(*args, **kwargs):
        raise AssertionError("the recorded graph should have been reused")

    monkeypatch.setattr(plan_module, "quantize_for_tensorrt", no_new_graph)
    second = add_engine(out, options)
    m = manifest_json(out)
    assert [e["tensorrt"] for e in m["engines"]] == ["11.4.0", "11.5.0"] and m["valid"]
    assert second["onnx"] == first["onnx"] == "model.int8-fp16.onnx" and second["onnx_sha256"] == first["onnx_sha256"]
    assert second["conversion"] == first["conversion"]


def _digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("failure", ["no_gpu", "fail_build", "parity"])
def test_a_failed_trt_build_leaves_the_bundle_as_it_was(bundles, tmp_path, monkeypatch, failure):
    """Defect 12: `pkd export BUNDLE --trt` wrote model.fp16.onnx into the bundle before finding that no GPU was
    usable, then exited 2. Now TensorRT and the GPU are checked first, and the graph, plan and script are staged
    and moved in only with the manifest that records them."""
    from promptkd_edge.export import parity
    from promptkd_edge.export.plan import add_engine
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    bundle = tmp_path / "b"
    shutil.copytree(bundles["fp32"], bundle)
    before = _digest(bundle)
    fake = _fake_tensorrt(monkeypatch, tmp_path, "11.4.0")
    if failure == "parity":
        real_compare = parity.compare
        monkeypatch.setattr(parity, "compare", lambda *a, **k: {**real_compare(*a, **k), "passed": False,
                                                                 "failures": ["forced"]})
    else:
        setattr(fake.fake, failure, True)
    options = ExportOptions(precision="fp16", trt=TrtBuildOptions(precision="fp16"), parity_images=3)
    with pytest.raises(PkdError) as e:
        add_engine(bundle, options)
    assert "\n" not in str(e.value)
    assert _digest(bundle) == before and not any(p.name.startswith(".") for p in bundle.iterdir())
    assert fake.fake.called("Builder")  # the check ran TensorRT's builder, then stopped before writing
    if failure == "no_gpu":
        assert not fake.fake.called("parse_from_file")


def test_io_binding_path_equals_a_plain_run(bundles):
    """The IO-binding path GPU sessions take (outputs bound on the device, one copy back; staged batches for
    benchmarks), run here on the CPU device: the same numbers as a plain run."""
    path = bundles["int8"] / "model.onnx"
    plain = OnnxRuntimeBackend(path, providers="cpu")
    bound = OnnxRuntimeBackend(path, providers="cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding and bound.device == "cpu"
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    want, got = plain.run(x), bound.run(x)
    assert list(got) == list(want) == ["logits", "embeddings"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    staged = bound.stage(x)
    assert bound.run_staged(staged) is None and bound.run_staged(staged) is None
    np.testing.assert_array_equal(staged[0].copy_outputs_to_cpu()[0], want["logits"])


def test_gpu_session_that_fell_back_to_cpu_is_reported(bundles, monkeypatch):
    """onnxruntime-gpu without CUDA libraries quietly runs on CPU; the runtime must say so."""
    import onnxruntime as ort

    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", lambda path, so, providers: real_session(
        path, so, providers=["CPUExecutionProvider"]))
    clf = Classifier.from_bundle(bundles["fp32"], backend="onnxruntime")
    assert clf.backend.fell_back_to_cpu and "fell back to CPU" in clf.notes[-1]
    assert "failed to load: running on CPU" in clf.description


def test_gate_counts_flips_between_near_ties_apart():
    """Two classes the reference gives probabilities less than a percentage point apart are a near tie: a flip
    there is reported but does not fail the agreement threshold; a flip between well-separated classes does."""
    ref = np.array([[10.0, 9.995, 0.0], [10.0, 2.0, 0.0]] + [[0.0, 10.0, 1.0]] * 98)
    emb = {"embeddings": np.ones((100, 4))}  # the cosine is not what this test is about

    def compare(reference, candidate):
        return parity.compare({"logits": reference, **emb}, {"logits": candidate, **emb}, "int8", "t", "s")

    tie = ref.copy()
    tie[0] = [9.99, 9.996, 0.0]  # the near tie flips
    figures = compare(ref, tie)
    assert figures["top1_agreement"] == 0.99 and figures["near_tie_flips"] == 1
    assert figures["top1_agreement_beyond_ties"] == 1.0 and figures["passed"]
    clear = tie.copy()
    clear[1] = [1.0, 2.0, 0.0]  # a well-separated flip: 10 vs 2 in the reference
    figures = compare(ref, clear)
    assert figures["top1_agreement_beyond_ties"] == 0.99 and figures["passed"]  # 99 % is the int8 threshold
    emb = {"embeddings": np.ones((50, 4))}
    figures = compare(ref[:50], clear[:50])
    assert not figures["passed"] and figures["failures"][0] == ("top-1 agreement 98.00% < 99.0% (not counting 1 "
                                                                "near-tie flips)")


def test_slim_export_keeps_parity(tiny_run, tmp_path):
    # needs onnxslim: the [slim] extra, part of [dev]
    m = export_run(tiny_run, tmp_path / "b", ExportOptions(slim=True, parity_images=4))
    assert m.valid and m.model.slim_nodes_removed > 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_calibration_ranges_are_exact(symmetric):
    from onnx import TensorProto, helper

    from promptkd_edge.export.precision import _Batches, percentile_ranges

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1000])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((37, 1000)).astype(np.float32) * 3  # 5 batches, the last short
    ranges = percentile_ranges(model, ["x", "y"], _Batches("x", x, 8), 99.9, symmetric)
    n = x.size
    if symmetric:  # nearest rank: the k-th largest |x|, k = ceil(n * 0.1 %)
        t = np.sort(np.abs(x).ravel())[n - int(np.ceil(n * 0.001))]
        assert ranges["x"] == pytest.approx((-t, t))
    else:
        s, k = np.sort(x.ravel()), int(np.ceil(n * 0.0005))
        assert ranges["x"] == pytest.approx((s[k - 1], s[n - k]))
        assert ranges["y"][0] == 0.0 and ranges["y"][1] == pytest.approx(s[n - k])  # relu: range includes 0


def test_triton_repository_entry_from_a_bundle(bundles, tmp_path):
    repo = tmp_path / "models"
    r = pkd("export", str(bundles["uint8"]), "--triton", str(repo), "--max-batch", "16")
    assert r.returncode == 0, r.stderr
    folder = repo / "uint8"
    config = (folder / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 16" in config
    assert 'name: "image"\n    data_type: TYPE_UINT8\n    dims: [ 32, 32, 3 ]' in config  # batch dim implicit
    assert 'name: "embeddings"\n    data_type: TYPE_FP32\n    dims: [ 128 ]' in config
    assert "preferred_batch_size: [ 4, 8, 16 ]" in config and "KIND_GPU" in config
    assert (folder / "1" / "model.onnx").read_bytes() == (bundles["uint8"] / "model.onnx").read_bytes()
    assert (folder / "1" / "labels.txt").read_text().splitlines() == open_bundle(bundles["uint8"]).class_names

    from promptkd_edge.export.triton import write_repository

    folder = write_repository(bundles["fp32"], repo, name="pets", gpu=False)
    config = (folder / "config.pbtxt").read_text()
    assert 'output [\n  {\n    name: "logits"\n    data_type: TYPE_FP32\n    dims: [ 3 ]\n    label_filename: ' \
           '"1/labels.txt"' in config and "KIND_CPU" in config
    with pytest.raises(PkdError, match="it has: none"):
        write_repository(bundles["fp32"], repo, backend="tensorrt")
    r = pkd("export", str(tmp_path / "nope"), "--triton", str(repo))
    assert r.returncode == 2 and "--triton and --deepstream take a bundle as SOURCE" in r.stderr


def test_triton_entry_serves_the_tensorrt_plan(tiny_run, tmp_path, monkeypatch):
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions
    from promptkd_edge.export.triton import write_repository

    _fake_tensorrt(monkeypatch, tmp_path, "10.3.0")
    m = export_run(tiny_run, tmp_path / "b", ExportOptions(trt=TrtBuildOptions(precision="fp32",
                                                                                 profiles=[(1, 4, 8)]),
                                                           parity_images=2))
    folder = write_repository(tmp_path / "b", tmp_path / "repo", backend="tensorrt", max_batch=64)
    config = (folder / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "max_batch_size: 8" in config  # the plan's largest profile
    assert (folder / "1" / "model.plan").read_bytes() == (tmp_path / "b" / m.engines[0].file).read_bytes()
    assert 'profile: [ "0" ]' in config


def test_triton_lists_every_profile_and_refuses_gaps(bundles, tmp_path):
    """Defect 4: Triton uses profile 0 unless instance_group lists the profiles; with [1,1,1] and [1,8,32] every
    batch above 1 failed. All profiles are listed, and batches no profile covers are refused."""
    from promptkd_edge.export.triton import plan_batch_limit, write_repository
    from promptkd_edge.formats.manifest import write_manifest

    bundle = tmp_path / "b"
    shutil.copytree(bundles["fp32"], bundle)
    manifest = open_bundle(bundle).manifest
    (bundle / "engines").mkdir()
    (bundle / "engines" / "a.plan").write_bytes(b"plan")
    manifest.engines = [EngineEntry(file="engines/a.plan", profiles=[[1, 1, 1], [1, 8, 32]], tensorrt="10.3.0",
                                    compute_capability="8.7", gpu="Orin", precision="fp16")]
    write_manifest(bundle, manifest)
    folder = write_repository(bundle, tmp_path / "repo", backend="tensorrt")
    config = (folder / "config.pbtxt").read_text()
    assert 'instance_group [\n  {\n    count: 1\n    kind: KIND_GPU\n    profile: [ "0", "1" ]\n  }\n]' in config
    assert "max_batch_size: 32" in config and "preferred_batch_size: [ 4, 8, 16, 32 ]" in config
    with pytest.raises(PkdError, match="^batch 2, 3 lies in none"):
        plan_batch_limit([[1, 1, 1], [4, 8, 16]], 3)
    with pytest.raises(PkdError, match=r"^batch 2, 3 lies in none of the plan's profiles \(1\.\.1, 4\.\.16\), but "
                                       r"Triton's dynamic batcher may form it up to max_batch_size 16: rebuild the "
                                       r"plan with --trt-profile covering 1\.\.16 or pass --triton-max-batch 1$"):
        plan_batch_limit([[1, 1, 1], [4, 8, 16]], None)
    with pytest.raises(PkdError, match="--trt-profile covering 1..8$"):
        plan_batch_limit([[2, 4, 8]], None)
    assert plan_batch_limit([[1, 1, 1], [4, 8, 16]], 1) == 1 and plan_batch_limit([[1, 4, 8]], 64) == 8


def test_work_folders_of_killed_exports_are_removed(tiny_run, tmp_path):
    """An export killed mid-way (kill -9, power loss) leaves `.NAME.tmp-PID` with its owner record; the next export
    removes it when that process is gone, and says so. Live processes' folders and unrelated folders stay."""
    import subprocess

    from promptkd_edge.utils.files import claim
    from promptkd_edge.utils.progress import LineProgress

    def left_by(folder: Path, pid: int) -> Path:  # the owner record the killed process wrote first
        claim(folder)
        record = json.loads((folder / ".pkd-owner.json").read_text())
        (folder / ".pkd-owner.json").write_text(json.dumps({**record, "pid": pid}))
        return folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".old-bundle.tmp-{dead.pid}"
        (stale / "engines").mkdir(parents=True)
        (stale / "model.onnx").write_bytes(b"\0" * 3 * 2**20)  # what a killed export leaves
        left_by(stale, dead.pid)
        busy = left_by(tmp_path / f".other.tmp-{alive.pid}", alive.pid)
        busy.mkdir(exist_ok=True)
        (busy / "model.onnx").write_bytes(b"partial")
        mine = tmp_path / f".notes.tmp-{dead.pid}"  # not an export's (no bundle files): not ours to delete
        mine.mkdir()
        (mine / "todo.txt").write_text("keep")
        (tmp_path / "a").mkdir()
        replaced = tmp_path / f".a.old-{dead.pid}"  # an overwrite's old bundle, left by a kill before its removal
        only_copy = tmp_path / f".c.old-{dead.pid}"  # killed between the two renames: c is missing, keep it
        for folder in (replaced, only_copy):
            folder.mkdir()
            (folder / "manifest.json").write_text("{}")
            left_by(folder, dead.pid)
        log = io.StringIO()
        export_run(tiny_run, tmp_path / "b", ExportOptions(parity_images=2), LineProgress(stream=log))
        assert not stale.exists() and not replaced.exists()
        assert busy.exists() and mine.exists() and only_copy.exists() and (tmp_path / "b" / "manifest.json").is_file()
        assert f"removed {stale} (3.0 MB), left by an interrupted export" in log.getvalue()
        assert f"{only_copy} holds a bundle that an interrupted --overwrite moved aside; rename it to " \
               f"{tmp_path / 'c'}" in log.getvalue()
        # the same inside a bundle: a TensorRT staging folder of a killed `pkd export BUNDLE --trt`
        staging = tmp_path / "b" / f".engine-{dead.pid}"
        (staging / "engines").mkdir(parents=True)
        left_by(staging, dead.pid)
        from promptkd_edge.export.out_folder import clean_leftovers

        clean_leftovers(tmp_path / "b", r"\.engine-(\d+)", LineProgress(stream=log))
        assert not staging.exists() and f"removed {staging}" in log.getvalue()
    finally:
        alive.kill()
        alive.wait()
