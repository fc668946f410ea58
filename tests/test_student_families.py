"""Students of every tower family through the CLI, as a user runs them: a weights file for the student, distill
with the defaults (`--prompt-depth 9` on a tower with fewer blocks), export with its parity gates, predict; then a
TensorRT plan of the bundle, built and gated on the fake TensorRT held against the real 10.3 bindings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import pytest
from conftest import NAMES, TEACHER, write_images
from safetensors.torch import save_file
from test_engine_gate import _fake_tensorrt
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.export.plan import add_engine
from promptkd_edge.export.tensorrt_build import TrtBuildOptions
from promptkd_edge.models.towers import family_of

FAMILIES = {"pkd-tiny-map-vit": "timm-vit", "pkd-tiny-eva": "timm-vit", "pkd-tiny-hybrid": "hybrid",
            "pkd-tiny-convnext": "conv"}


def run(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory) -> tuple[str, Path, str]:
    """(arch, folder holding run/ and bundle/, what distill printed) for a student of that architecture."""
    arch, root = request.param, tmp_path_factory.mktemp(request.param)
    model = open_clip.create_model(arch)
    weights = root / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    write_images(root / "data", 12)
    out = run("distill", "--random-init", "--teacher", TEACHER, "--student", f"{arch}:{weights}", "--classes",
              root / "classes.txt", "--data", root / "data", "--out", root / "run", "--epochs", "2", "--batch-size",
              "4", "--workers", "0", "--cache-dir", root / "cache").output
    run("export", root / "run", "--out", root / "bundle", "--parity-images", "4")
    run("export", root / "run", "--out", root / "bundle-int8", "--precision", "int8", "--parity-images", "4")
    return arch, root, out


def test_distill_export_predict_with_a_weights_file(family_run):
    arch, root, out = family_run
    assert family_of(arch) == FAMILIES[arch]
    flat = " ".join(out.split())
    if FAMILIES[arch] == "timm-vit":
        blocks = len(open_clip.create_model(arch).visual.trunk.blocks)
        assert flat.count(f"image tower has {blocks} blocks, so all {blocks} get prompts") == 1, out
        assert f"student adaptation: deep visual prompts, 4 tokens x {blocks} of {blocks} blocks" in flat
    else:  # the defaults as typed: --prompt-depth means nothing to SSF, and nothing is said of it
        assert "get prompts" not in flat and "student adaptation: SSF scale and shift on" in flat, out
    for bundle in ("bundle", "bundle-int8"):  # FP32 and INT8 (SmoothQuant where the family has LayerNorm pairs)
        manifest = json.loads((root / bundle / "manifest.json").read_text())
        assert manifest["valid"] and all(p["passed"] for p in manifest["parity"] if p.get("required", True))
    image = next((root / "data").rglob("*.png"))
    [prediction] = json.loads(run("predict", root / "bundle", image, "--json").stdout)["predictions"]
    assert prediction["labels"][0] in NAMES


def _plan(family_run, tmp_path: Path, monkeypatch, precision: str) -> tuple[Path, dict]:
    """(a copy of the family's FP32 bundle, the record of the `precision` plan added to it on the fake TensorRT 10)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(family_run[1] / "bundle", bundle)
    _fake_tensorrt(monkeypatch, tmp_path)
    trt = TrtBuildOptions(precision=precision, profiles=[(1, 2, 4)])
    return bundle, add_engine(bundle, ExportOptions(precision=precision, trt=trt, parity_images=3,
                                                    calibration_images=4))


def test_a_tensorrt_plan_of_the_family_builds_and_passes_its_gate(family_run, tmp_path, monkeypatch):
    """TensorRT 10's parser takes every operator of the family's graph (the fake refuses ops onnx-tensorrt has no
    importer for in its table) and the fp16 plan passes its gate against ONNX Runtime."""
    _, record = _plan(family_run, tmp_path, monkeypatch, "fp16")
    assert record["parity_passed"] and record["fp32_layers"] > 0  # LayerNorm/Softmax/Reduce pinned to FP32


def test_int8_leaves_the_attention_pool_float(family_run):
    """An attention-pool head (SigLIP's MAP head: timm AttentionPoolLatent) stays float in the INT8 graph, found by
    the module class the exporter records on its nodes; every other weight MatMul/Gemm/Conv is quantized."""
    import onnx

    from promptkd_edge.export.graph import attention_pool_nodes, head_nodes

    arch, root, _ = family_run
    fp32 = onnx.load(str(root / "bundle" / "model.onnx"))
    pool = set(attention_pool_nodes(fp32))
    int8 = onnx.load(str(root / "bundle-int8" / "model.onnx"))
    manifest = json.loads((root / "bundle-int8" / "manifest.json").read_text())
    assert manifest["model"]["conversion"]["float_attention_pool_nodes"] == len(pool)
    has_pool = any(type(m).__name__ == "AttentionPoolLatent" for m in open_clip.create_model(arch).visual.modules())
    assert bool(pool) == has_pool, arch
    constants = {i.name for i in int8.graph.initializer}
    dequantized = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in constants}
    weighted = [n for n in int8.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                and (n.input[1] in constants or n.input[1] in dequantized)]
    skip = pool | set(head_nodes(fp32))
    assert weighted and all((n.input[1] in dequantized) == (n.name not in skip) for n in weighted), arch


def test_slim_keeps_what_finds_the_attention_pool(tmp_path):
    """onnxslim drops node metadata; `slim` gives it back to every node whose name survives, so `pkd export --slim
    --precision int8` still finds (and leaves float) the attention pool."""
    import onnx
    import torch

    from promptkd_edge.export.fold import FoldedStudent
    from promptkd_edge.export.graph import attention_pool_nodes, slim
    from promptkd_edge.export.onnx_export import export_onnx
    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.openclip import ModelSpec, load_clip
    from promptkd_edge.models.student import StudentConfig, build_student

    arch = "pkd-tiny-map-vit"
    student = build_student(load_clip(ModelSpec.parse(arch)), StudentConfig(spec=arch, teacher_dim=32)).eval()
    vectors = ClassVectors(NAMES, torch.nn.functional.normalize(torch.randn(len(NAMES), 32), dim=-1), "t", "{}", 100.0)
    path = tmp_path / "model.onnx"
    export_onnx(FoldedStudent(student, vectors), path, student.preprocess.size)
    pool = set(attention_pool_nodes(onnx.load(str(path))))
    slim(path)
    names = {n.name for n in onnx.load(str(path)).graph.node}
    assert pool and set(attention_pool_nodes(onnx.load(str(path)))) == pool & names and pool & names


def test_tensorrt_int8_graph_leaves_the_attention_pool_float(family_run, tmp_path, monkeypatch):
    """The INT8 graph a TensorRT plan is built from keeps the attention pool float too (TensorRT 10, fake held
    against the real bindings), and the plan's record says how many nodes that is."""
    import onnx

    from promptkd_edge.export.graph import attention_pool_nodes

    bundle, record = _plan(family_run, tmp_path, monkeypatch, "int8")
    pool = set(attention_pool_nodes(onnx.load(str(bundle / "model.onnx"))))
    assert record["conversion"]["float_attention_pool_nodes"] == len(pool)
    graph = onnx.load(str(bundle / record["onnx"])).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    weighted = [n for n in graph.node if n.op_type == "MatMul" and n.name in pool and len(n.input) > 1]
    assert all(n.input[1] not in dequantized for n in weighted)
    assert any(n.input[1] in dequantized for n in graph.node if n.op_type == "MatMul" and n.name not in pool)
