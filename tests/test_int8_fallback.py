"""INT8 float fallback (export/int8_fallback.py): nodes whose quantization costs agreement are found by measurement and
kept float, as few as reach the target; a graph that agrees is left as it was."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import pkd
from onnx import TensorProto, helper, numpy_helper

from promptkd_edge.errors import PkdError
from promptkd_edge.export import int8_fallback
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.int8_fallback import float_fallback, quantized_nodes, target_thresholds, with_float_nodes
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.export.precision import quantize_int8
from promptkd_edge.models.student import load_student, save_student

LAYERS, WIDTH, CLASSES = 8, 32, 10


def mlp(path: Path, outliers: dict[int, float], seed: int = 0) -> np.ndarray:
    """An 8-MatMul ReLU network "image" [B, 32] -> "logits" [B, 10] written to `path`. `outliers[i]` = s multiplies
    output channel 0 of MatMul i by s and divides the matching input row of MatMul i + 1 by s: the same function
    (ReLU(s x) = s ReLU(x)), but MatMul i + 1's input then carries one channel s times the others, and one per-tensor
    INT8 scale rounds its other channels away. Returns 96 inputs on which the network's top class leads by at least
    3 (logits' std 6): a plain INT8 copy keeps every one of them."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1000, WIDTH)).astype(np.float32)
    weights, h = [], x
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, CLASSES if i == LAYERS - 1 else WIDTH)) * np.sqrt(2 / WIDTH)).astype(
            np.float32)
        h = h @ w if i == LAYERS - 1 else np.maximum(h @ w, 0)
        weights.append(w)
    weights[-1] *= 6.0 / h.std()
    top2 = np.sort(h * 6.0 / h.std(), axis=1)[:, -2:]
    x = x[top2[:, 1] - top2[:, 0] >= 3.0][:96]
    assert len(x) == 96
    for i, scale in outliers.items():
        weights[i][:, 0] *= scale
        weights[i + 1][0, :] /= scale
    nodes, inits, prev = [], [], "image"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "logits" if i == LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out if i == LAYERS - 1 else f"m{i}"], name=f"mm{i}"))
        if i < LAYERS - 1:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out], name=f"relu{i}"))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", WIDTH])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", CLASSES])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return x


def logits(path, x) -> np.ndarray:
    source = str(path) if isinstance(path, Path) else path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def quantize(src: Path, dst: Path, calib: np.ndarray):
    def requantize(extra=()):
        quantize_int8(src, dst, calib, "image", list(extra))

    requantize()
    return requantize


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def by_name(outputs):
    return outputs


def test_float_nodes_copy_computes_what_the_fp32_graph_does(tmp_path):
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    x = mlp(src, {2: 40.0})
    quantize(src, dst, x)
    qdq, fp32 = onnx.load(str(dst)), onnx.load(str(src))
    names = quantized_nodes(qdq)
    assert names == [f"mm{i}" for i in range(LAYERS)]
    reference = logits(src, x)
    assert np.abs(logits(dst, x) - reference).max() > 1e-2  # quantized: not the float function
    np.testing.assert_allclose(logits(with_float_nodes(qdq, fp32, set(names)), x), reference, rtol=1e-5, atol=1e-5)
    one = with_float_nodes(qdq, fp32, {"mm3"})
    assert quantized_nodes(one) == [n for n in names if n != "mm3"]
    assert len(qdq.graph.initializer) < len(one.graph.initializer)  # mm3's float weight came back from fp32


def test_a_graph_that_agrees_is_left_as_it_was(tmp_path):
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    x = mlp(src, {})
    requantize = quantize(src, dst, x)
    before = digest(dst)
    calls = []
    report = float_fallback(src, dst, x, lambda extra: calls.append(extra) or requantize(extra), by_name)
    assert report["needed"] is False and report["before"]["passed"] and report["nodes"] == []
    assert report["before"]["top1_agreement_beyond_ties"] >= target_thresholds()["top1_agreement"] == 0.995
    assert calls == [] and digest(dst) == before


def test_the_node_behind_an_outlier_is_kept_float_and_the_graph_then_agrees(tmp_path):
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    x = mlp(src, {3: 300.0})  # mm4's input: one channel 300x the others
    report = float_fallback(src, dst, x, quantize(src, dst, x), by_name)
    assert report["needed"] and report["before"]["top1_agreement_beyond_ties"] < 0.9
    assert report["nodes"] == ["mm4"] and report["reached"] and report["after"]["passed"]
    qdq = onnx.load(str(dst))  # written again by ONNX Runtime's quantizer, mm4 excluded
    assert quantized_nodes(qdq) == [f"mm{i}" for i in range(LAYERS) if i != 4]
    reference, got = logits(src, x), logits(dst, x)
    assert (reference.argmax(1) == got.argmax(1)).mean() >= target_thresholds()["top1_agreement"]


def test_as_few_nodes_as_reach_the_target_and_never_past_the_budget(tmp_path, monkeypatch):
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    x = mlp(src, {1: 300.0, 4: 300.0})  # two nodes with an outlier input: both are needed
    report = float_fallback(src, dst, x, quantize(src, dst, x), by_name)
    assert sorted(report["nodes"]) == ["mm2", "mm5"] and report["reached"] and report["budget"] == 2
    x = mlp(src, {1: 300.0, 3: 300.0, 5: 300.0})  # three: one more than a quarter of 8 nodes allows
    report = float_fallback(src, dst, x, quantize(src, dst, x), by_name)
    assert len(report["nodes"]) == 2 and set(report["nodes"]) < {"mm2", "mm4", "mm6"} and not report["reached"]
    monkeypatch.setattr(int8_fallback, "MAX_FLOAT_FRACTION", 0.5)
    report = float_fallback(src, dst, x, quantize(src, dst, x), by_name)
    assert sorted(report["nodes"]) == ["mm2", "mm4", "mm6"] and report["reached"]


@pytest.fixture(scope="module")
def outlier_run(tiny_run, module_dir) -> Path:
    """The tiny run with one projector channel 1000x larger between its two Linears, the function unchanged (ReLU is
    positively homogeneous): the second Linear's INT8 input scale then rounds every other channel away."""
    run = module_dir / "outlier-run"
    shutil.copytree(tiny_run, run)
    student = load_student(run / "student.safetensors")
    _, norm, _, last = student.projector
    x = torch.randn(64, student.projector.in_dim)
    student.eval()
    with torch.no_grad():
        before = student.projector(x)
        norm.weight[0] *= 1000.0
        norm.bias[0] *= 1000.0
        last.weight[:, 0] /= 1000.0
        torch.testing.assert_close(student.projector(x), before, rtol=1e-4, atol=1e-4)
    save_student(student, run / "student.safetensors")
    return run


def test_export_keeps_the_projector_float_where_int8_would_fail_its_gate(outlier_run, tmp_path):
    options = dict(precision="int8", parity_images=48, calibration_images=48)
    with pytest.raises(PkdError, match="parity gate failed .*(top-1 agreement|embeddings cosine)"):
        export_run(outlier_run, tmp_path / "plain", ExportOptions(**options, int8_fallback=False))
    manifest = export_run(outlier_run, tmp_path / "b", ExportOptions(**options)).to_dict()
    fallback = manifest["model"]["conversion"]["float_fallback"]
    assert manifest["valid"] and manifest["parity"][0]["passed"] and fallback["needed"] and fallback["reached"]
    qdq = onnx.load(str(tmp_path / "b" / "model.onnx"), load_external_data=False)
    scopes = {n.name: p.value for n in qdq.graph.node for p in n.metadata_props
              if p.key == "pkg.torch.onnx.name_scopes"}
    # the folded projector is Linear (BatchNorm folded in), ReLU, Linear: its second Linear takes the outlier
    assert len(fallback["nodes"]) == 1 and "'projector.2'" in scopes[fallback["nodes"][0]]
    assert fallback["nodes"][0] not in quantized_nodes(qdq)


def test_cli_says_what_it_kept_float_and_no_int8_fallback_turns_it_off(outlier_run, tmp_path):
    args = ["export", str(outlier_run), "--precision", "int8", "--parity-images", "32", "--calibration-images", "48"]
    result = pkd(*args, "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert "int8: 1 of " in result.stderr and "quantized nodes kept float" in result.stderr
    result = pkd(*args, "--out", str(tmp_path / "c"), "--no-int8-fallback")
    assert result.returncode == 2 and "parity gate failed" in result.stderr and not (tmp_path / "c").exists()
