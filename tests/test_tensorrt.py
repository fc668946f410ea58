"""TensorRT build and runtime against fake TensorRT 10 / 11 modules and a fake cuda-python runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_tensorrt import DataType, make_fake_cudart, make_fake_trt
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from promptkd_edge.errors import PkdError
from promptkd_edge.export import tensorrt_build as tb
from promptkd_edge.export.tensorrt_build import TrtBuildOptions, build_engine
from promptkd_edge.runtime import tensorrt_backend
from promptkd_edge.runtime.tensorrt_backend import TensorRTBackend

DIMS = (3, 4, 4)
PINNED = {"ln_post", "attn_softmax", "l2norm", "logits_matmul"}


# ------------------------------------------------------------------------------------------------ ONNX models
def _save(nodes, inits, path: Path, out_type=TensorProto.FLOAT) -> Path:
    graph = helper.make_graph(
        nodes, path.stem, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *DIMS])],
        [helper.make_tensor_value_info("logits", out_type, ["batch", 5])], inits)
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


def qdq_model(path: Path) -> Path:
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("QuantizeLinear", ["flat", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
             helper.make_node("MatMul", ["dq", "w"], ["logits"], name="logits_matmul")]
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"), numpy_helper.from_array(_w(48, 5), "w")]
    return _save(nodes, inits, path)


def fp16_model(path: Path) -> Path:
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("Cast", ["flat"], ["flat16"], name="cast_in", to=TensorProto.FLOAT16),
             helper.make_node("MatMul", ["flat16", "w"], ["h16"], name="logits_matmul"),
             helper.make_node("Cast", ["h16"], ["logits"], name="cast_out", to=TensorProto.FLOAT)]
    return _save(nodes, [numpy_helper.from_array(_w(48, 5, dtype=np.float16), "w")], path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {"clip": clip_like(root / "clip.onnx"), "qdq": qdq_model(root / "qdq.onnx"),
            "fp16": fp16_model(root / "fp16.onnx")}


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
    fake.cudart = rt
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


@pytest.fixture()
def trt10(monkeypatch, cudart):
    return _use(monkeypatch, "10.3.0", cudart)


@pytest.fixture()
def trt11(monkeypatch, cudart):
    return _use(monkeypatch, "11.4.0", cudart)


def build(onnx_path: Path, tmp_path: Path, bundle: str = "bundle", **opts) -> dict:
    """Build into tmp_path/bundle/engines with the ONNX copied to the bundle root as model.onnx."""
    root = tmp_path / bundle
    root.mkdir(exist_ok=True)
    target = root / "model.onnx"
    target.write_bytes(onnx_path.read_bytes())
    return build_engine(target, root / "engines", input_name="image", input_dims=DIMS,
                        options=TrtBuildOptions(**{"engine_cache_dir": tmp_path / "engines-cache", **opts}))


def flags(fake) -> list[str]:
    return [c[1] for c in fake.called("set_flag")]


# ------------------------------------------------------------------------------------------------ TRT 10
def test_trt10_fp16_pins_layers_and_sets_profiles(trt10, models, tmp_path):
    rec = build(models["clip"], tmp_path, precision="fp16", profiles=[(1, 2, 4), (5, 8, 16)], workspace_gib=1.5,
                opt_level=5, keep_fp32_nodes=["logits_matmul"])
    assert trt10.called("create_network") == [("create_network", 0)]
    assert flags(trt10) == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    pinned = trt10.called("layer.precision")
    assert {c[1] for c in pinned} == PINNED and all(c[2] is DataType.FLOAT for c in pinned)
    assert trt10.called("set_output_type") == [("set_output_type", c[1], 0, DataType.FLOAT) for c in pinned]
    assert trt10.called("set_shape") == [("set_shape", "image", (1, *DIMS), (2, *DIMS), (4, *DIMS)),
                                         ("set_shape", "image", (5, *DIMS), (8, *DIMS), (16, *DIMS))]
    assert len(trt10.called("add_optimization_profile")) == 2
    assert trt10.called("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", int(1.5 * 2**30))]
    assert trt10.called("builder_optimization_level") == [("builder_optimization_level", 5)]
    names = [c[0] for c in trt10.calls]
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


def test_trt10_int8_fp8_fp32_flags(trt10, cudart, models, tmp_path):
    build(models["qdq"], tmp_path, precision="int8")
    assert flags(trt10) == ["FP16", "INT8"]  # nothing pinned in this graph -> no OBEY
    trt10.calls.clear()
    build(models["clip"], tmp_path, precision="fp32")
    assert flags(trt10) == [] and not trt10.called("layer.precision")
    with pytest.raises(PkdError, match="fp8 needs an Ada or Hopper GPU"):
        build(models["qdq"], tmp_path, precision="fp8")
    with pytest.raises(PkdError, match="no QuantizeLinear nodes"):
        build(models["clip"], tmp_path, precision="int8")


def test_trt10_fp8_on_hopper(monkeypatch, models, tmp_path):
    rt = make_fake_cudart(name="NVIDIA H200", capability=(9, 0))
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    fake = _use(monkeypatch, "10.3.0", rt)
    rec = build(models["qdq"], tmp_path, precision="fp8")
    assert flags(fake) == ["FP16", "FP8"] and rec["file"] == "engines/model-fp8-sm90-trt10.3.0.plan"


# ------------------------------------------------------------------------------------------------ TRT 11
def test_trt11_strongly_typed_fp16_graph(trt11, models, tmp_path):
    rec = build(models["fp16"], tmp_path, precision="fp16", keep_fp32_nodes=["logits_matmul"])
    assert trt11.called("create_network") == [("create_network", 1 << 1)]
    assert not trt11.called("set_flag") and not trt11.called("layer.precision")
    assert rec["api"] == 11 and rec["file"] == "engines/model-fp16-sm87-trt11.4.0.plan" and rec["fp32_layers"] == 0
    assert not hasattr(trt11.BuilderFlag, "FP16") and not hasattr(trt11.NetworkDefinitionCreationFlag,
                                                                  "EXPLICIT_BATCH")


def test_trt11_refuses_precision_missing_from_graph(trt11, models, tmp_path):
    with pytest.raises(PkdError, match=r"silently build an FP32 engine \(TensorRT 11 is strongly typed\)"):
        build(models["clip"], tmp_path, precision="fp16")
    with pytest.raises(PkdError, match="no QuantizeLinear nodes.*TensorRT 11"):
        build(models["fp16"], tmp_path, precision="int8")
    assert not trt11.called("Builder")
    build(models["clip"], tmp_path, precision="fp32")
    build(models["qdq"], tmp_path, precision="int8")
    assert not trt11.called("set_flag") and len(trt11.called("Builder")) == 2


def test_graph_precision(models):
    assert tb.graph_precision(models["clip"]) == {"fp16": False, "qdq": False}
    assert tb.graph_precision(models["fp16"]) == {"fp16": True, "qdq": False}
    assert tb.graph_precision(models["qdq"]) == {"fp16": False, "qdq": True}


# ------------------------------------------------------------------------------------------------ caches, scripts
def test_timing_cache_read_and_written_back(trt10, models, tmp_path):
    cache = tmp_path / "timing.cache"
    build(models["clip"], tmp_path, timing_cache=cache)
    assert trt10.called("create_timing_cache") == [("create_timing_cache", b"")]
    assert cache.read_bytes() == b"+tactics"
    cache.write_bytes(b"old-cache")
    trt10.calls.clear()
    build(models["clip"], tmp_path, timing_cache=cache, engine_cache_dir=None)
    assert trt10.called("create_timing_cache") == [("create_timing_cache", b"old-cache")]
    assert trt10.called("set_timing_cache") == [("set_timing_cache", b"old-cache", False)]
    assert cache.read_bytes() == b"old-cache+tactics"
    trt10.calls.clear()
    trt10.foreign_timing_cache = True
    build(models["clip"], tmp_path, timing_cache=cache, engine_cache_dir=None)
    assert [c[1] for c in trt10.called("create_timing_cache")] == [b"old-cache+tactics", b""]


def test_engine_cache_hit_and_misses(trt10, models, tmp_path):
    first = build(models["clip"], tmp_path, bundle="a", precision="fp16")
    trt10.calls.clear()
    second = build(models["clip"], tmp_path, bundle="b", precision="fp16")
    assert not trt10.called("Builder") and second["cache_hit"] and not first["cache_hit"]
    assert second["sha256"] == first["sha256"] and second["fp32_layers"] == first["fp32_layers"] == 3
    assert (tmp_path / "b" / second["file"]).read_bytes() == (tmp_path / "a" / first["file"]).read_bytes()
    for change in ({"precision": "fp32"}, {"profiles": [(1, 4, 32)]}, {"opt_level": 2}):
        trt10.calls.clear()
        rec = build(models["clip"], tmp_path, bundle="b", **{"precision": "fp16", **change})
        assert trt10.called("Builder") and not rec["cache_hit"]
    trt10.calls.clear()
    build(models["clip"], tmp_path, bundle="c", engine_cache_dir=None)
    assert trt10.called("Builder")


def test_trtexec_scripts(trt10, monkeypatch, cudart, models, tmp_path):
    rec = build(models["clip"], tmp_path, precision="fp16", profiles=[(1, 2, 4), (5, 8, 16)], workspace_gib=1.5,
                opt_level=5, timing_cache=tmp_path / "tc.bin", keep_fp32_nodes=["logits_matmul"])
    script = tmp_path / "bundle" / rec["trtexec"]
    text = script.read_text()
    assert os.access(script, os.X_OK) and text.startswith("#!/bin/sh")
    for flag in ("--onnx=model.onnx", "--saveEngine=engines/model-fp16-sm87-trt10.3.0.plan",
                 "--minShapes=image:1x3x4x4", "--optShapes=image:2x3x4x4", "--maxShapes=image:4x3x4x4",
                 "--minShapes=image:5x3x4x4", "--optShapes=image:8x3x4x4", "--maxShapes=image:16x3x4x4",
                 "--memPoolSize=workspace:1536M", "--builderOptimizationLevel=5",
                 f"--timingCacheFile={(tmp_path / 'tc.bin').resolve()}", "--fp16", "--precisionConstraints=obey",
                 "--layerPrecisions=ln_post:fp32,attn_softmax:fp32,l2norm:fp32,logits_matmul:fp32",
                 "--layerOutputTypes=ln_post:fp32,"):
        assert flag in text, flag
    assert "--int8" not in text
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    int8 = (tmp_path / "bundle" / build(models["qdq"], tmp_path, precision="int8")["trtexec"]).read_text()
    assert "--fp16" in int8 and "--int8" in int8 and "--precisionConstraints" not in int8

    fake = _use(monkeypatch, "11.4.0", cudart)
    rec11 = build(models["fp16"], tmp_path, precision="fp16")
    text11 = (tmp_path / "bundle" / rec11["trtexec"]).read_text()
    assert "strongly typed" in text11 and "--saveEngine=engines/model-fp16-sm87-trt11.4.0.plan" in text11
    command = "".join(line for line in text11.splitlines() if not line.startswith("#"))
    assert not any(f in command for f in ("--fp16", "--int8", "--precisionConstraints", "--layerPrecisions"))
    assert fake.called("build_serialized_network")


# ------------------------------------------------------------------------------------------------ errors
def test_build_errors(trt10, models, tmp_path):
    graph = helper.make_graph([helper.make_node("NotAnOp", ["image"], ["logits"], name="bad")], "bad",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *DIMS])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])])
    bad = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(bad))
    with pytest.raises(PkdError, match="cannot parse model.onnx: .*No importer registered for op: NotAnOp"):
        build(bad, tmp_path)
    with pytest.raises(PkdError, match="has no input named 'pixel_values'"):
        build_engine(models["clip"], tmp_path / "x" / "engines", input_name="pixel_values", input_dims=DIMS,
                     options=TrtBuildOptions(engine_cache_dir=None))
    with pytest.raises(PkdError, match=r"profiles asked for \(batch, 3, 224, 224\)"):
        build_engine(models["clip"], tmp_path / "x" / "engines", input_name="image", input_dims=(3, 224, 224),
                     options=TrtBuildOptions(engine_cache_dir=None))
    trt10.fail_build = True
    with pytest.raises(PkdError, match="^TensorRT could not build the engine; see the log above$"):
        build(models["clip"], tmp_path, engine_cache_dir=None)
    trt10.builder_nullptr = True
    with pytest.raises(PkdError, match=r"^TensorRT found no usable GPU \(pybind11.*nullptr\)$"):
        build(models["clip"], tmp_path, engine_cache_dir=None)


def test_import_tensorrt_missing_and_versions(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(PkdError) as e:
        tb.import_tensorrt()
    assert "\n" not in str(e.value) and "pip install tensorrt" in str(e.value) and "python3-libnvinfer" in str(e.value)
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
    assert backend.name == "tensorrt" and backend.input_name == "image" and backend.output_names == ["logits"]
    assert backend.description == "TensorRT 10.3.0, Orin (sm_87), plan engines/model-fp16-sm87-trt10.3.0.plan"
    x = np.random.default_rng(0).standard_normal((3, *DIMS))  # float64: converted to the engine's float32
    out = backend.run(x)
    np.testing.assert_allclose(out["logits"], _reference(models["clip"], x), rtol=1e-6, atol=1e-6)
    assert out["logits"].dtype == np.float32 and not trt10.called("set_optimization_profile_async")
    assert trt10.called("set_input_shape")[-1] == ("set_input_shape", "image", (3, *DIMS))
    assert trt10.called("execute_async_v3") == [("execute_async_v3", 1000)]
    mallocs = len(cudart.called("cudaMalloc"))
    assert mallocs == 2 and [c[1] for c in cudart.called("cudaMemcpyAsync")] == ["cudaMemcpyHostToDevice",
                                                                                 "cudaMemcpyDeviceToHost"]
    backend.run(x[:2])  # smaller: buffers reused
    assert len(cudart.called("cudaMalloc")) == mallocs
    x10 = np.random.default_rng(1).standard_normal((10, *DIMS)).astype(np.float32)
    np.testing.assert_allclose(backend.run(x10)["logits"], _reference(models["clip"], x10), rtol=1e-6, atol=1e-6)
    assert trt10.called("set_optimization_profile_async") == [("set_optimization_profile_async", 1, 1000)]
    assert len(cudart.called("cudaMalloc")) == mallocs + 2 and len(cudart.called("cudaFree")) == 2  # grown
    backend.run(x[:1])
    assert trt10.called("set_optimization_profile_async")[-1] == ("set_optimization_profile_async", 0, 1000)
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
    assert not cudart.allocations and cudart.called("cudaStreamDestroy")
    with pytest.raises(PkdError, match="closed"):
        backend.run(x)


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
    _use(monkeypatch, "10.3.0", cudart)
    plan.write_bytes(b"not a plan")
    with pytest.raises(PkdError, match="does not match its sha256"):
        TensorRTBackend(plan, rec)
    with pytest.raises(PkdError, match="cannot be loaded by this TensorRT/GPU"):
        TensorRTBackend(plan, {**rec, "sha256": None})


def test_backend_without_cuda_python(trt10, monkeypatch, models, tmp_path):
    rec = build(models["clip"], tmp_path)
    monkeypatch.undo()  # drop the fake cudart seam and the fake tensorrt
    monkeypatch.setitem(sys.modules, "tensorrt", trt10)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PkdError, match=r"^cuda-python is not installed: `pip install cuda-python`[^\n]*$"):
        TensorRTBackend(tmp_path / "bundle" / rec["file"], rec)


# ------------------------------------------------------------------------------------------------ self test, imports
@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_self_test_with_fakes(monkeypatch, cudart, version):
    fake = _use(monkeypatch, version, cudart)
    result = tb.tensorrt_self_test()
    assert result["ok"] and result["tensorrt"] == version and result["max_abs_diff"] < 1e-6
    assert fake.called("set_shape") == [("set_shape", "x", (1, 4), (2, 4), (4, 4))]
    assert result["seconds"] >= 0 and not cudart.allocations


def test_self_test_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = tb.tensorrt_self_test()
    assert not result["ok"] and "TensorRT is not installed" in result["error"]


def test_runtime_imports_without_torch_or_tensorrt():
    code = ("import sys; import promptkd_edge.runtime.tensorrt_backend; "
            "assert not {'torch', 'tensorrt', 'onnx'} & set(sys.modules), sorted(sys.modules); "
            "import promptkd_edge.export.tensorrt_build; assert 'tensorrt' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
