"""TensorRT build and runtime against fakes generated from the real TensorRT 10.3 / 11.4 bindings (every call is
checked against the real signatures; tests/fake_tensorrt.py) and a fake cuda-python runtime."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_tensorrt import make_fake_cudart, make_fake_trt
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from promptkd_edge.errors import PkdError
from promptkd_edge.export import tensorrt_build as tb
from promptkd_edge.export.tensorrt_build import TrtBuildOptions, build_engine
from promptkd_edge.runtime import tensorrt_backend
from promptkd_edge.runtime.tensorrt_backend import TensorRTBackend
from promptkd_edge.utils import system as tb_system

DIMS = (3, 4, 4)
PINNED = {"ln_post", "attn_softmax", "l2norm", "logits_matmul"}


# ------------------------------------------------------------------------------------------------ ONNX models
def _save(nodes, inits, path: Path, out_type=TensorProto.FLOAT, out_dim: int = 5) -> Path:
    graph = helper.make_graph(
        nodes, path.stem, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *DIMS])],
        [helper.make_tensor_value_info("logits", out_type, ["batch", out_dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _w(*shape: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.2).astype(dtype)


def clip_like(path: Path) -> Path:
    """Flatten -> MatMul -> LayerNorm -> Softmax -> ReduceL2/Div (L2 norm) -> logits MatMul."""
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("MatMul", ["flat", "w1"], ["h"], name="proj"),
             helper.make_node("LayerNormalization", ["h", "ln_s", "ln_b"], ["ln"], name="ln_post", axis=-1),
             helper.make_node("Softmax", ["ln"], ["sm"], name="attn_softmax", axis=-1),
             helper.make_node("ReduceL2", ["sm"], ["norm"], name="l2norm", axes=[-1], keepdims=1),
             helper.make_node("Div", ["sm", "norm"], ["emb"], name="l2div"),
             helper.make_node("MatMul", ["emb", "w2"], ["logits"], name="logits_matmul")]
    inits = [numpy_helper.from_array(_w(48, 8), "w1"), numpy_helper.from_array(np.ones(8, np.float32), "ln_s"),
             numpy_helper.from_array(np.zeros(8, np.float32), "ln_b"), numpy_helper.from_array(_w(8, 5, seed=1), "w2")]
    return _save(nodes, inits, path)


def qdq_model(path: Path, q_type=TensorProto.INT8, bias_type=None, zero_point: int = 0) -> Path:
    """Flatten -> Q/DQ -> MatMul (+ an optional DQ'd bias of `bias_type`, the way ONNX Runtime quantizes biases)."""
    zp = numpy_helper.from_array(np.array(zero_point, onnx.helper.tensor_dtype_to_np_dtype(q_type)), "zp")
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("QuantizeLinear", ["flat", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
             helper.make_node("MatMul", ["dq", "w"], ["mm" if bias_type else "logits"], name="logits_matmul")]
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), zp, numpy_helper.from_array(_w(48, 5), "w")]
    if bias_type is not None:
        bias = np.arange(5).astype(onnx.helper.tensor_dtype_to_np_dtype(bias_type))
        nodes += [helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="projector.0.bias_DequantizeLinear"),
                  helper.make_node("Add", ["mm", "b"], ["logits"], name="bias_add")]
        inits += [numpy_helper.from_array(bias, "b_q"), numpy_helper.from_array(np.array(0.001, np.float32), "b_s")]
    return _save(nodes, inits, path)


def fp16_model(path: Path) -> Path:
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("Cast", ["flat"], ["flat16"], name="cast_in", to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["flat16", "w"], ["h16"], name="logits_matmul"),
             helper.make_node("Cast", ["h16"], ["logits"], name="cast_out", to=TensorProto.FLOAT)]
    return _save(nodes, [numpy_helper.from_array(_w(48, 5, dtype=np.float16), "w")], path)


def look_alike_names(path: Path) -> Path:
    """Nodes whose names are prefixes of one another, and a Gemm (three TensorRT layers: name, name_<n>, ...)."""
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("MatMul", ["flat", "w1"], ["a"], name="node_matmul_1"),
             helper.make_node("MatMul", ["a", "w10"], ["b"], name="node_matmul_10"),
             helper.make_node("Gemm", ["b", "w2", "bias"], ["logits"], name="node_gemm_1")]
    inits = [numpy_helper.from_array(_w(48, 8), "w1"), numpy_helper.from_array(_w(8, 8, seed=2), "w10"),
             numpy_helper.from_array(_w(8, 5, seed=3), "w2"), numpy_helper.from_array(np.zeros(5, np.float32), "bias")]
    return _save(nodes, inits, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {"clip": clip_like(root / "clip.onnx"), "qdq": qdq_model(root / "qdq.onnx"),
            "fp16": fp16_model(root / "fp16.onnx"), "names": look_alike_names(root / "names.onnx")}


# ------------------------------------------------------------------------------------------------ fakes
@pytest.fixture(autouse=True)
def _cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "pkd-cache"))


@pytest.fixture()
def cudart(monkeypatch):
    rt = make_fake_cudart()
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    return rt


def _use(monkeypatch, version: str, rt):
    fake = make_fake_trt(version)
    fake.fake.cudart = rt
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


@pytest.fixture()
def trt10(monkeypatch, cudart):
    return _use(monkeypatch, "10.3.0", cudart)


@pytest.fixture()
def trt11(monkeypatch, cudart):
    return _use(monkeypatch, "11.4.0", cudart)


def build(onnx_path: Path, tmp_path: Path, bundle: str = "bundle", log=None, **opts) -> dict:
    """Build into tmp_path/bundle/engines with the ONNX copied to the bundle root as model.onnx."""
    root = tmp_path / bundle
    root.mkdir(exist_ok=True)
    target = root / "model.onnx"
    target.write_bytes(onnx_path.read_bytes())
    return build_engine(target, root / "engines", input_name="image", input_dims=DIMS, progress_log=log,
                        options=TrtBuildOptions(**{"engine_cache_dir": tmp_path / "engines-cache", **opts}))


def flags(fake) -> list[str]:
    return [c[1] for c in fake.fake.called("set_flag")]


# ------------------------------------------------------------------------------------------------ TRT 10
def test_trt10_fp16_pins_layers_and_sets_profiles(trt10, models, tmp_path):
    rec = build(models["clip"], tmp_path, precision="fp16", profiles=[(1, 2, 4), (5, 8, 16)], workspace_gib=1.5,
                opt_level=5, keep_fp32_nodes=["logits_matmul"])
    ctl = trt10.fake
    assert ctl.called("create_network") == [("create_network", 0)]  # weakly typed: precision from builder flags
    assert flags(trt10) == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    pinned = ctl.called("layer.precision")
    assert {c[1] for c in pinned} == PINNED and all(c[2] == "FLOAT" for c in pinned)
    assert ctl.called("set_output_type") == [("set_output_type", c[1], 0, "FLOAT") for c in pinned]
    assert ctl.called("set_shape") == [("set_shape", "image", (1, *DIMS), (2, *DIMS), (4, *DIMS)),
                                       ("set_shape", "image", (5, *DIMS), (8, *DIMS), (16, *DIMS))]
    assert len(ctl.called("add_optimization_profile")) == 2
    assert ctl.called("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", int(1.5 * 2**30))]
    assert ctl.called("builder_optimization_level") == [("builder_optimization_level", 5)]
    names = [c[0] for c in ctl.calls]
    assert max(i for i, n in enumerate(names) if n in ("set_flag", "layer.precision")) < names.index(
        "build_serialized_network")
    plan = tmp_path / "bundle" / rec["file"]
    assert rec["file"] == "engines/model-fp16-sm87-trt10.3.0.plan" and plan.is_file()
    assert rec["sha256"] == tb.sha256_file(plan) and rec["onnx"] == "model.onnx"
    assert rec["onnx_sha256"] == tb.sha256_file(tmp_path / "bundle" / "model.onnx")
    assert {k: rec[k] for k in ("tensorrt", "api", "gpu", "compute_capability", "precision", "profiles",
                                "workspace_gib", "builder_optimization_level", "cache_hit", "fp32_layers",
                                "trtexec")} == {
        "tensorrt": "10.3.0", "api": 10, "gpu": "Orin", "compute_capability": "8.7", "precision": "fp16",
        "profiles": [[1, 2, 4], [5, 8, 16]], "workspace_gib": 1.5, "builder_optimization_level": 5,
        "cache_hit": False, "fp32_layers": 4, "trtexec": "engines/model-fp16-sm87-trt10.3.0.trtexec.sh"}
    assert rec["build_seconds"] >= 0


def test_pinning_matches_a_nodes_layers_not_names_it_prefixes(trt10, models, tmp_path):
    """Defect 6: `node_matmul_1` pinned `node_matmul_10` too (prefix match). The parser names a node's extra
    layers `<node>_<n>`: the Gemm's three layers are pinned, the look-alike MatMul is not."""
    messages = []
    build(models["names"], tmp_path, precision="fp16", keep_fp32_nodes=["node_matmul_1", "node_gemm_1", "absent"],
          log=messages.append)
    layers = [trt10.fake.called("layer.precision")]
    pinned = {c[1] for c in layers[0]}
    assert pinned == {"node_matmul_1", "node_gemm_1", "node_gemm_1_0", "node_gemm_1_1"}
    assert "node_matmul_10" not in pinned
    assert any("matched no TensorRT layer: absent" in m for m in messages)
    assert tb.layers_of_node("a.b+c").fullmatch("a.b+c_12") and not tb.layers_of_node("a.b+c").fullmatch("aXb+c")


def test_trt10_int8_fp8_fp32_flags(trt10, cudart, models, tmp_path):
    build(models["qdq"], tmp_path, precision="int8")
    assert flags(trt10) == ["FP16", "INT8"]  # nothing pinned in this graph -> no OBEY
    trt10.fake.calls.clear()
    build(models["clip"], tmp_path, precision="fp32")
    assert flags(trt10) == [] and not trt10.fake.called("layer.precision")
    with pytest.raises(PkdError, match="fp8 needs an Ada or Hopper GPU"):
        build(models["qdq"], tmp_path, precision="fp8")
    with pytest.raises(PkdError, match="no QuantizeLinear nodes"):
        build(models["clip"], tmp_path, precision="int8")


def test_trt10_fp8_on_hopper(monkeypatch, tmp_path):
    rt = make_fake_cudart(name="NVIDIA H200", capability=(9, 0))
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    fake = _use(monkeypatch, "10.3.0", rt)
    rec = build(qdq_model(tmp_path / "fp8.onnx", q_type=TensorProto.FLOAT8E4M3FN), tmp_path, precision="fp8")
    assert flags(fake) == ["FP16", "FP8"] and rec["file"] == "engines/model-fp8-sm90-trt10.3.0.plan"


# ------------------------------------------------------------------------------------------------ TRT 11
def test_trt11_strongly_typed_fp16_graph(trt11, models, tmp_path):
    rec = build(models["fp16"], tmp_path, precision="fp16", keep_fp32_nodes=["logits_matmul"])
    # TensorRT 11's NetworkDefinitionCreationFlag.STRONGLY_TYPED is 0, so the flag bits are 1 (the hand-written fake
    # said 1 and this test asserted 2, which is PREFER_JIT_PYTHON_PLUGINS on the real 11.4)
    assert int(trt11.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    assert trt11.fake.called("create_network") == [("create_network", 1)]
    assert not trt11.fake.called("set_flag") and not trt11.fake.called("layer.precision")
    assert rec["api"] == 11 and rec["file"] == "engines/model-fp16-sm87-trt11.4.0.plan" and rec["fp32_layers"] == 0
    assert not hasattr(trt11.BuilderFlag, "FP16") and not hasattr(trt11.NetworkDefinitionCreationFlag,
                                                                  "EXPLICIT_BATCH")


def test_trt11_refuses_precision_missing_from_graph(trt11, models, tmp_path):
    with pytest.raises(PkdError, match=r"silently build an FP32 engine \(TensorRT 11 is strongly typed\)"):
        build(models["clip"], tmp_path, precision="fp16")
    with pytest.raises(PkdError, match="no QuantizeLinear nodes.*TensorRT 11"):
        build(models["fp16"], tmp_path, precision="int8")
    assert not trt11.fake.called("Builder")
    build(models["clip"], tmp_path, precision="fp32")
    build(models["qdq"], tmp_path, precision="int8")
    assert not trt11.fake.called("set_flag") and len(trt11.fake.called("Builder")) == 2


def test_graph_precision(models):
    assert tb.graph_precision(models["clip"]) == {"fp16": False, "qdq": False}
    assert tb.graph_precision(models["fp16"]) == {"fp16": True, "qdq": False}
    assert tb.graph_precision(models["qdq"]) == {"fp16": False, "qdq": True}


# ------------------------------------------------------------------------------------------------ Q/DQ TensorRT takes
@pytest.mark.parametrize("api", [10, 11])
def test_qdq_types_tensorrt_rejects_are_refused_before_the_build(monkeypatch, cudart, tmp_path, api):
    """Defect 1: ONNX Runtime quantizes biases to INT32 (DequantizeLinear with an INT32 input), which TensorRT's
    parser rejects; uint8 activations and non-zero zero points are refused too, in one line, before the builder."""
    fake = _use(monkeypatch, "10.3.0" if api == 10 else "11.4.0", cudart)
    ok = qdq_model(tmp_path / "ok.onnx", bias_type=None)
    assert tb.check_tensorrt_qdq(ok, api) == 2
    bias = qdq_model(tmp_path / "bias.onnx", bias_type=TensorProto.INT32)
    with pytest.raises(PkdError, match=r"^model\.onnx: DequantizeLinear 'projector\.0\.bias_DequantizeLinear' carries "
                                       r"INT32 \(a quantized bias: quantize without biases for TensorRT\); "
                                       rf"TensorRT {api} quantizes only to INT8, FLOAT8E4M3FN, INT4"):
        build(bias, tmp_path, precision="int8")
    with pytest.raises(PkdError, match="carries UINT8"):
        tb.check_tensorrt_qdq(qdq_model(tmp_path / "u8.onnx", q_type=TensorProto.UINT8), api)
    with pytest.raises(PkdError, match="non-zero zero point"):
        tb.check_tensorrt_qdq(qdq_model(tmp_path / "zp.onnx", zero_point=3), api)
    assert not fake.fake.called("Builder")
    # the fake parser refuses the INT32 DequantizeLinear as onnx-tensorrt does, had the check not stopped it
    logger = fake.Logger()
    network = fake.Builder(logger).create_network(0)
    parser = fake.OnnxParser(network, logger)
    assert not parser.parse_from_file(str(bias)) and "INT32" in parser.get_error(0).desc()


# ------------------------------------------------------------------------------------------------ caches, scripts
def test_timing_cache_read_and_written_back(trt10, models, tmp_path):
    cache = tmp_path / "timing.cache"
    build(models["clip"], tmp_path, timing_cache=cache)
    first = cache.read_bytes()
    assert trt10.fake.called("create_timing_cache") == [("create_timing_cache", b"")]
    assert first.startswith(b"FAKETC:10.3.0\n")
    trt10.fake.calls.clear()
    build(models["clip"], tmp_path, timing_cache=cache, engine_cache_dir=None)
    assert trt10.fake.called("create_timing_cache") == [("create_timing_cache", first)]
    assert trt10.fake.called("set_timing_cache") == [("set_timing_cache", "+tactics", False)]
    assert cache.read_bytes() == first + b"+tactics"


@pytest.mark.parametrize(("content", "why"), [(b"\x00garbage from a crash", "cannot be read"),
                                              (b"FAKETC:10.3.0\nforeign device", "another device")])
def test_unusable_timing_cache_starts_empty_instead_of_failing(trt10, models, tmp_path, content, why):
    """Defect 8: `create_timing_cache` gives None for a cache it cannot deserialize (another TensorRT, a corrupt
    file); the build went on with None. Now it starts an empty cache, says so, and writes a good one back."""
    cache = tmp_path / "timing.cache"
    cache.write_bytes(content)
    messages = []
    rec = build(models["clip"], tmp_path, timing_cache=cache, engine_cache_dir=None, log=messages.append)
    assert (tmp_path / "bundle" / rec["file"]).is_file()
    assert any(why in m and str(cache) in m for m in messages)
    assert trt10.fake.called("set_timing_cache")[-1] == ("set_timing_cache", "", False)
    assert cache.read_bytes() == b"FAKETC:10.3.0\n+tactics"


def test_engine_cache_hit_and_misses(trt10, models, tmp_path):
    first = build(models["clip"], tmp_path, bundle="a", precision="fp16")
    trt10.fake.calls.clear()
    second = build(models["clip"], tmp_path, bundle="b", precision="fp16")
    assert not trt10.fake.called("Builder") and second["cache_hit"] and not first["cache_hit"]
    assert second["sha256"] == first["sha256"] and second["fp32_layers"] == first["fp32_layers"] == 3
    assert (tmp_path / "b" / second["file"]).read_bytes() == (tmp_path / "a" / first["file"]).read_bytes()
    for change in ({"precision": "fp32"}, {"profiles": [(1, 4, 32)]}, {"opt_level": 2}):
        trt10.fake.calls.clear()
        rec = build(models["clip"], tmp_path, bundle="b", **{"precision": "fp16", **change})
        assert trt10.fake.called("Builder") and not rec["cache_hit"]
    trt10.fake.calls.clear()
    build(models["clip"], tmp_path, bundle="c", engine_cache_dir=None)
    assert trt10.fake.called("Builder")


def _trtexec_args(script: Path) -> list[str]:
    """The arguments the script passes to trtexec (what the shell would pass)."""
    text = script.read_text()
    command = text[text.index("exec trtexec"):].replace("\\\n", " ")
    return shlex.split(command)[2:]


def test_trtexec_scripts(trt10, monkeypatch, cudart, models, tmp_path):
    """Defects 2 and 3: trtexec takes several profiles only as `--profile=i` right before each shape triple, and the
    script saved its engine over the recorded plan, which the bundle's sha256 check then refused."""
    rec = build(models["clip"], tmp_path, precision="fp16", profiles=[(1, 2, 4), (5, 8, 16)], workspace_gib=1.5,
                opt_level=5, timing_cache=tmp_path / "tc.bin", keep_fp32_nodes=["logits_matmul"])
    script = tmp_path / "bundle" / rec["trtexec"]
    assert os.access(script, os.X_OK) and script.read_text().startswith("#!/bin/sh")
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    args = _trtexec_args(script)
    i0, i1 = args.index("--profile=0"), args.index("--profile=1")
    assert args[i0 + 1:i0 + 4] == ["--minShapes=image:1x3x4x4", "--optShapes=image:2x3x4x4",
                                   "--maxShapes=image:4x3x4x4"]
    assert args[i1 + 1:i1 + 4] == ["--minShapes=image:5x3x4x4", "--optShapes=image:8x3x4x4",
                                   "--maxShapes=image:16x3x4x4"]
    assert sum(a.startswith("--minShapes") for a in args) == 2
    save = next(a for a in args if a.startswith("--saveEngine="))
    assert save == "--saveEngine=engines/model-fp16-sm87-trt10.3.0.trtexec.plan" != f"--saveEngine={rec['file']}"
    for flag in ("--onnx=model.onnx", "--skipInference", "--memPoolSize=workspace:1536M",
                 "--builderOptimizationLevel=5", f"--timingCacheFile={(tmp_path / 'tc.bin').resolve()}", "--fp16",
                 "--precisionConstraints=obey"):
        assert flag in args, flag
    precisions = next(a for a in args if a.startswith("--layerPrecisions=")).split("=", 1)[1].split(",")
    assert set(precisions) == {f"{n}:fp32" for n in PINNED}
    assert "--int8" not in args
    int8 = _trtexec_args(tmp_path / "bundle" / build(models["qdq"], tmp_path, precision="int8")["trtexec"])
    assert "--fp16" in int8 and "--int8" in int8 and "--precisionConstraints=obey" not in int8

    fake = _use(monkeypatch, "11.4.0", cudart)
    rec11 = build(models["fp16"], tmp_path, precision="fp16")
    script11 = tmp_path / "bundle" / rec11["trtexec"]
    assert "strongly typed" in script11.read_text()
    args11 = _trtexec_args(script11)
    assert "--saveEngine=engines/model-fp16-sm87-trt11.4.0.trtexec.plan" in args11
    assert args11[args11.index("--profile=0") + 1].startswith("--minShapes=image:1x")
    assert not any(a.startswith(("--fp16", "--int8", "--precisionConstraints", "--layerPrecisions")) for a in args11)
    assert fake.fake.called("build_serialized_network")


# ------------------------------------------------------------------------------------------------ errors
def test_build_errors(trt10, models, tmp_path):
    graph = helper.make_graph([helper.make_node("NotAnOp", ["image"], ["logits"], name="bad")], "bad",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *DIMS])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])])
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(bad))
    with pytest.raises(PkdError, match=r"cannot parse model.onnx: In node 0 with name: bad and operator: NotAnOp "
                                       r".*No importer registered for op: NotAnOp"):
        build(bad, tmp_path)
    with pytest.raises(PkdError, match="has no input named 'pixel_values'"):
        build_engine(models["clip"], tmp_path / "x" / "engines", input_name="pixel_values", input_dims=DIMS,
                     options=TrtBuildOptions(engine_cache_dir=None))
    with pytest.raises(PkdError, match=r"profiles asked for \(batch, 3, 224, 224\)"):
        build_engine(models["clip"], tmp_path / "x" / "engines", input_name="image", input_dims=(3, 224, 224),
                     options=TrtBuildOptions(engine_cache_dir=None))
    trt10.fake.fail_build = True
    with pytest.raises(PkdError, match="^TensorRT could not build the engine; see the log above$"):
        build(models["clip"], tmp_path, engine_cache_dir=None)
    trt10.fake.no_gpu = True
    with pytest.raises(PkdError, match=r"^TensorRT 10\.3\.0 found no usable GPU \(pybind11.*nullptr\)$"):
        build(models["clip"], tmp_path, engine_cache_dir=None)
    with pytest.raises(PkdError, match=r"^TensorRT 10\.3\.0 found no usable GPU"):
        tb.check_can_build()


def test_import_tensorrt_missing_and_versions(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(PkdError) as e:
        tb.import_tensorrt()
    text = str(e.value)
    assert "\n" not in text and "promptkd-edge[trt]" in text and "python3-libnvinfer" in text
    assert "promptkd-edge[jetson]" in text and "[trt-cu13]" in text
    assert tb.api_generation(make_fake_trt("10.3.0")) == 10 and tb.api_generation(make_fake_trt("11.4.0")) == 11
    with pytest.raises(PkdError, match="^TensorRT 8.6.1 is too old; promptkd-edge needs 10.x or 11.x$"):
        tb.api_generation(make_fake_trt("8.6.1"))


def test_options_validation(monkeypatch, tmp_path):
    for bad in ({"precision": "int4"}, {"profiles": [(8, 1, 32)]}, {"profiles": [(0, 1, 2)]}, {"profiles": []},
                {"opt_level": 6}, {"workspace_gib": 0}):
        with pytest.raises(PkdError):
            TrtBuildOptions(**bad)
    assert TrtBuildOptions().profiles == [(1, 8, 32)]
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "c"))
    assert TrtBuildOptions().engine_cache_dir == tmp_path / "c" / "engines"
    monkeypatch.delenv("PKD_CACHE_DIR")
    assert TrtBuildOptions().engine_cache_dir == Path.home() / ".cache" / "promptkd-edge" / "engines"


def test_gpu_info(monkeypatch):
    rt = make_fake_cudart(name="NVIDIA H200", capability=(9, 0))
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    assert tb.gpu_info() == {"name": "NVIDIA H200", "compute_capability": "9.0", "sm": "90"}
    rt = make_fake_cudart(count_error=True)
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    with pytest.raises(PkdError, match=r"no CUDA GPU is visible \(cudaErrorInsufficientDriver\)"):
        tb.gpu_info()


def test_gpu_info_without_cuda_python_asks_nvml(monkeypatch):
    """No cuda-python: the GPU's name and compute capability come from utils/gpus (NVML here), never from torch."""
    from fake_pynvml import make_fake_pynvml

    def no_cudart():
        raise PkdError("cuda-python is not installed")

    monkeypatch.setattr(tensorrt_backend, "load_cudart", no_cudart)
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert tb.gpu_info() == {"name": "NVIDIA H200", "compute_capability": "9.0", "sm": "90"}
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(init_error=True))
    monkeypatch.setattr(tb_system, "which", lambda name: None)
    with pytest.raises(PkdError, match=r"no CUDA GPU is visible \(nvidia-smi not on PATH\)"):
        tb.gpu_info()


def test_cuda_python_13_on_a_cuda_12_driver_says_which_pin(monkeypatch):
    """Defect 7: cuda-python 13.x needs a CUDA 13 driver; on JetPack 6 (a CUDA 12.6 driver) every call fails. The
    failure names the fix instead of "no CUDA GPU"."""
    rt = make_fake_cudart(count_error=False, devices=0, driver_cuda=12060)
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    monkeypatch.setattr(tensorrt_backend, "cuda_bindings_version", lambda: "13.5.0")
    with pytest.raises(PkdError) as e:
        tb.gpu_info()
    assert str(e.value) == ("cuda-python 13.5.0 needs a CUDA 13 driver (driver >= 580), but this driver runs CUDA "
                            "12.6 (JetPack 6 ships CUDA 12): `pip install 'cuda-python>=12.0,<13'`")
    monkeypatch.setattr(tensorrt_backend, "cuda_bindings_version", lambda: "12.9.4")
    with pytest.raises(PkdError, match=r"no CUDA GPU is visible \(0 devices\)"):
        tb.gpu_info()
    assert tensorrt_backend.driver_mismatch("13.0.1", 13000) is None
    assert tensorrt_backend.driver_mismatch("12.6.2", 13020) is None  # newer drivers run older CUDA


def test_extras_pin_cuda_python_below_13_for_cuda_12_drivers():
    """Defect 7: `cuda-python>=12` resolved to 13.x. The [trt] and [jetson] extras keep it < 13; drivers >= 580
    get [trt-cu13]."""
    import tomllib
    from packaging.requirements import Requirement

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]

    def spec(extra: str, name: str):
        return next(Requirement(r).specifier for r in extras[extra] if Requirement(r).name == name)

    for extra in ("trt", "jetson"):
        assert "12.6.3" in spec(extra, "cuda-python") and "13.0.0" not in spec(extra, "cuda-python"), extra
    assert "13.4.4" in spec("trt-cu13", "cuda-python") and "12.9.0" not in spec("trt-cu13", "cuda-python")
    assert "10.3.0" in spec("trt", "tensorrt-cu12") and "11.4.0.106" in spec("trt-cu13", "tensorrt-cu13")


def test_check_plan_compatible():
    record = {"file": "engines/x.plan", "tensorrt": "10.3.0", "compute_capability": "8.7", "gpu": "Orin"}
    tb.check_plan_compatible(record, make_fake_trt("10.3.0"), {"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(PkdError) as e:
        tb.check_plan_compatible(record, make_fake_trt("11.4.0"), {"name": "H200", "compute_capability": "9.0"})
    assert str(e.value) == ("engines/x.plan was built for TensorRT 10.3.0 on sm_87 (Orin); this machine has "
                            "TensorRT 11.4.0 on sm_90 (H200): rebuild it here with `pkd export BUNDLE --trt`")


# ------------------------------------------------------------------------------------------------ runtime
def _reference(model: Path, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(str(model)).run(None, {"image": x.astype(np.float32)})[0]


def test_backend_run_path(trt10, cudart, models, tmp_path):
    rec = build(models["clip"], tmp_path, precision="fp16", profiles=[(1, 2, 4), (5, 8, 16)])
    backend = TensorRTBackend(tmp_path / "bundle" / rec["file"], rec)
    ctl = trt10.fake
    assert backend.name == "tensorrt" and backend.input_name == "image" and backend.output_names == ["logits"]
    assert backend.description == "TensorRT 10.3.0, Orin (sm_87), plan engines/model-fp16-sm87-trt10.3.0.plan"
    x = np.random.default_rng(0).standard_normal((3, *DIMS))  # float64: converted to the engine's float32
    out = backend.run(x)
    np.testing.assert_allclose(out["logits"], _reference(models["clip"], x), rtol=1e-6, atol=1e-6)
    assert out["logits"].dtype == np.float32 and not ctl.called("set_optimization_profile_async")
    assert ctl.called("set_input_shape")[-1] == ("set_input_shape", "image", (3, *DIMS))
    assert ctl.called("execute_async_v3") == [("execute_async_v3", 1000)]
    # every copy goes between pinned host memory and device memory; buffers are allocated once per tensor
    copies = cudart.called("cudaMemcpyAsync")  # (name, kind, bytes, host memory pinned, stream)
    assert [c[1] for c in copies] == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"] and all(c[3] for c in copies)
    assert {c[4] for c in copies} == {1000}  # the backend's stream, never the default stream 0
    allocations = (len(cudart.called("cudaMalloc")), len(cudart.called("cudaMallocHost")))
    assert allocations == (2, 2)
    again = backend.run(x[:2])  # smaller: buffers reused, and results are copies (the pinned buffers are reused)
    assert (len(cudart.called("cudaMalloc")), len(cudart.called("cudaMallocHost"))) == allocations
    np.testing.assert_allclose(out["logits"][:2], again["logits"], rtol=1e-6, atol=1e-6)
    x10 = np.random.default_rng(1).standard_normal((10, *DIMS)).astype(np.float32)
    np.testing.assert_allclose(backend.run(x10)["logits"], _reference(models["clip"], x10), rtol=1e-6, atol=1e-6)
    assert ctl.called("set_optimization_profile_async") == [("set_optimization_profile_async", 1, 1000)]
    assert len(cudart.called("cudaMalloc")) == 4 and len(cudart.called("cudaFree")) == 2  # grown
    assert len(cudart.called("cudaMallocHost")) == 4 and len(cudart.called("cudaFreeHost")) == 2
    backend.run(x[:1])
    assert ctl.called("set_optimization_profile_async")[-1] == ("set_optimization_profile_async", 0, 1000)
    with pytest.raises(PkdError, match=r"^batch 64 is outside the engine's profiles \[1\.\.4, 5\.\.16\]; "
                                       r"rebuild with --trt-profile$"):
        backend.run(np.zeros((64, *DIMS), np.float32))
    with pytest.raises(PkdError, match="does not fit the engine's batchx3x4x4"):
        backend.run(np.zeros((2, 3, 8, 8), np.float32))
    with ThreadPoolExecutor(4) as pool:  # concurrent runs are serialized by the lock
        results = list(pool.map(lambda n: backend.run(x10[:n])["logits"], [1, 4, 7, 10, 3, 10]))
    for n, got in zip([1, 4, 7, 10, 3, 10], results, strict=True):
        np.testing.assert_allclose(got, _reference(models["clip"], x10[:n]), rtol=1e-6, atol=1e-6)
    backend.close()
    assert not cudart.allocations and not cudart.pinned and cudart.called("cudaStreamDestroy")
    assert not [m for m in ctl.log if m[0] in ("WARNING", "ERROR")]  # e.g. enqueueV3 on the default stream
    with pytest.raises(PkdError, match="closed"):
        backend.run(x)


def test_staged_runs_copy_nothing(trt10, cudart, models, tmp_path):
    """What `pkd bench` times as compute on a GPU: the batch stays on the device."""
    rec = build(models["clip"], tmp_path, profiles=[(1, 4, 8)])
    with TensorRTBackend(tmp_path / "bundle" / rec["file"], rec) as backend:
        x = np.random.default_rng(4).standard_normal((4, *DIMS)).astype(np.float32)
        shape = backend.stage(x)
        before = len(cudart.called("cudaMemcpyAsync"))
        for _ in range(3):
            backend.run_staged(shape)
        assert len(cudart.called("cudaMemcpyAsync")) == before and len(trt10.fake.called("execute_async_v3")) == 3
        np.testing.assert_allclose(backend.run(x)["logits"], _reference(models["clip"], x), rtol=1e-6, atol=1e-6)


def test_profile_switch_failure_is_one_line(trt10, models, tmp_path):
    """Defect 9: set_optimization_profile_async raises RuntimeError on failure (it never returns False)."""
    rec = build(models["clip"], tmp_path, profiles=[(1, 2, 4), (5, 8, 16)])
    with TensorRTBackend(tmp_path / "bundle" / rec["file"], rec) as backend:
        trt10.fake.fail_profile_switch = True
        with pytest.raises(PkdError, match=r"^TensorRT could not switch to optimization profile 1 \(Error in set "
                                           r"optimization profile async\.\)$"):
            backend.run(np.zeros((6, *DIMS), np.float32))


def test_backend_trt11(trt11, models, tmp_path):
    rec = build(models["fp16"], tmp_path, precision="fp16", profiles=[(1, 4, 8)])
    with TensorRTBackend(tmp_path / "bundle" / rec["file"], rec) as backend:
        x = np.random.default_rng(2).standard_normal((5, *DIMS)).astype(np.float32)
        np.testing.assert_allclose(backend.run(x)["logits"], _reference(models["fp16"], x), rtol=1e-6, atol=1e-6)


def test_backend_refuses_foreign_or_broken_plans(trt10, monkeypatch, cudart, models, tmp_path):
    rec = build(models["clip"], tmp_path)
    plan = tmp_path / "bundle" / rec["file"]
    _use(monkeypatch, "11.4.0", cudart)
    with pytest.raises(PkdError, match=r"built for TensorRT 10\.3\.0 on sm_87 \(Orin\); this machine has TensorRT "
                                       r"11\.4\.0 on sm_87 \(Orin\): rebuild it here"):
        TensorRTBackend(plan, rec)
    fake = _use(monkeypatch, "10.3.0", cudart)
    plan.write_bytes(b"not a plan")
    with pytest.raises(PkdError, match="does not match its sha256"):
        TensorRTBackend(plan, rec)
    with pytest.raises(PkdError, match="cannot be loaded by this TensorRT/GPU"):
        TensorRTBackend(plan, {**rec, "sha256": None})
    fake.fake.no_gpu = True
    with pytest.raises(PkdError, match=r"^TensorRT 10\.3\.0 found no usable GPU \(pybind11::init\(\): factory"):
        TensorRTBackend(plan, {**rec, "sha256": None})


def test_backend_without_cuda_python(trt10, monkeypatch, models, tmp_path):
    rec = build(models["clip"], tmp_path)
    monkeypatch.undo()  # drop the fake cudart seam and the fake tensorrt
    monkeypatch.setitem(sys.modules, "tensorrt", trt10)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PkdError, match=r"^cuda-python is not installed: `pip install 'cuda-python>=12\.6,<13'`"
                                       r"[^\n]*$"):
        TensorRTBackend(tmp_path / "bundle" / rec["file"], rec)


# ------------------------------------------------------------------------------------------------ self test, imports
@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_self_test_with_fakes(monkeypatch, cudart, version):
    fake = _use(monkeypatch, version, cudart)
    result = tb.tensorrt_self_test()
    assert result["ok"] and result["tensorrt"] == version and result["max_abs_diff"] < 1e-6
    assert fake.fake.called("set_shape") == [("set_shape", "x", (1, 4), (2, 4), (4, 4))]
    assert result["seconds"] >= 0 and not cudart.allocations and not cudart.pinned


def test_self_test_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = tb.tensorrt_self_test()
    assert not result["ok"] and "TensorRT is not installed" in result["error"]


def test_runtime_imports_without_torch_or_tensorrt():
    code = ("import sys; import promptkd_edge.runtime.tensorrt_backend; "
            "assert not {'torch', 'tensorrt', 'onnx'} & set(sys.modules), sorted(sys.modules); "
            "import promptkd_edge.export.tensorrt_build; assert 'tensorrt' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
