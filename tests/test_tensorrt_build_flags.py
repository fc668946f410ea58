"""What the TensorRT builder is told beyond precision: TF32 (on by default in TensorRT, off in our plans), the
engine cache's key (GPU model, TF32), and the Q/DQ types TensorRT's ONNX parser gives a graph (issue 19, defects 1
and 7). Fakes from the real 10.3 / 11.4 bindings (tests/fake_tensorrt.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import test_tensorrt
from fake_tensorrt import make_fake_cudart, plan_header
from onnx import TensorProto, helper, numpy_helper
from test_tensorrt import DIMS, _trtexec_args, _use, build

from promptkd_edge.errors import PkdError
from promptkd_edge.export import tensorrt_build as tb
from promptkd_edge.formats.manifest import EngineEntry
from promptkd_edge.runtime import tensorrt_backend

# test_tensorrt's fixtures: fake CUDA runtime, fake TensorRT 10.3 / 11.4, its ONNX models, a private cache folder
cudart, trt10, trt11, models = test_tensorrt.cudart, test_tensorrt.trt10, test_tensorrt.trt11, test_tensorrt.models
_cache_env = test_tensorrt._cache_env


def _plan(tmp_path: Path, record: dict, bundle: str = "bundle") -> dict:
    return plan_header((tmp_path / bundle / record["file"]).read_bytes())


# ------------------------------------------------------------------------------------------------ TF32
def test_a_new_builder_config_has_tf32_on_as_tensorrt_documents(trt10, trt11):
    """NvInfer.h 10.3 and 11.1, BuilderFlag::kTF32: "Enabled by default": the fakes start from that default."""
    for fake in (trt10, trt11):
        config = fake.Builder(fake.Logger()).create_builder_config()
        assert config.get_flag(fake.BuilderFlag.TF32)
        config.clear_flag(fake.BuilderFlag.TF32)
        assert not config.get_flag(fake.BuilderFlag.TF32)


@pytest.mark.parametrize(("version", "graph", "precision", "flags"), [
    ("10.3.0", "clip", "fp32", []), ("10.3.0", "clip", "fp16", ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),
    ("10.3.0", "qdq", "int8", ["FP16", "INT8"]), ("11.4.0", "clip", "fp32", []), ("11.4.0", "fp16", "fp16", []),
    ("11.4.0", "qdq", "int8", [])])
def test_plans_are_built_without_tf32(monkeypatch, cudart, models, tmp_path, version, graph, precision, flags):
    """Defect 1: TensorRT enables TF32 unless told otherwise, so FP32 layers (all of an fp32 plan, the pinned ones
    of an fp16/int8 plan) rounded their inputs to 10-bit mantissas. Every plan is now built with TF32 cleared; the
    record, its manifest entry and the trtexec script say so."""
    fake = _use(monkeypatch, version, cudart)
    rec = build(models[graph], tmp_path, precision=precision)
    assert _plan(tmp_path, rec)["flags"] == flags  # the builder config's final flags, as the plan records them
    assert fake.fake.called("clear_flag") == [("clear_flag", "TF32")]
    assert rec["tf32"] is False
    entry = EngineEntry.from_dict(rec)
    assert entry.extra["tf32"] is False and EngineEntry.from_dict(entry.to_dict()).to_dict() == entry.to_dict()
    assert "--noTF32" in _trtexec_args(tmp_path / "bundle" / rec["trtexec"])


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0"])
def test_tf32_when_asked_for(monkeypatch, cudart, models, tmp_path, version):
    fake = _use(monkeypatch, version, cudart)
    rec = build(models["clip"], tmp_path, precision="fp32", tf32=True)
    assert _plan(tmp_path, rec)["flags"] == ["TF32"] and not fake.fake.called("clear_flag")
    assert rec["tf32"] is True and "--noTF32" not in _trtexec_args(tmp_path / "bundle" / rec["trtexec"])
    with pytest.raises(PkdError, match="tf32 is true or false"):
        tb.TrtBuildOptions(tf32="no")


@pytest.mark.parametrize(("args", "tf32"), [((), False), (("--trt-tf32",), True)])
def test_trt_tf32_option_reaches_the_build_options(monkeypatch, tmp_path, args, tf32):
    """`pkd export BUNDLE --trt [--trt-tf32]`: the options handed to the build carry the choice."""
    from typer.testing import CliRunner

    from promptkd_edge.cli import app
    from promptkd_edge.export import add_to_bundle as extend
    from promptkd_edge.formats import bundle

    seen = []

    def extend_bundle(source, options, **kwargs):
        seen.append(options.trt)
        raise PkdError("stop here")

    monkeypatch.setattr(extend, "extend_bundle", extend_bundle)
    monkeypatch.setattr(bundle, "is_bundle", lambda path: True)
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--trt", *args], catch_exceptions=False)
    assert "stop here" in result.output and [o.tf32 for o in seen] == [tf32]


# ------------------------------------------------------------------------------------------------ engine cache key
def test_engine_cache_is_keyed_by_tf32(trt10, models, tmp_path):
    first = build(models["clip"], tmp_path, bundle="a", precision="fp32")
    trt10.fake.calls.clear()
    second = build(models["clip"], tmp_path, bundle="b", precision="fp32", tf32=True)
    assert trt10.fake.called("Builder") and not second["cache_hit"]
    assert "TF32" in _plan(tmp_path, second, "b")["flags"] and "TF32" not in _plan(tmp_path, first, "a")["flags"]
    trt10.fake.calls.clear()
    assert build(models["clip"], tmp_path, bundle="c", precision="fp32")["cache_hit"]  # each its own entry
    assert not trt10.fake.called("Builder")


def test_engine_cache_is_keyed_by_gpu_model_not_only_sm(monkeypatch, models, tmp_path):
    """Two GPU models of one SM (sm_86: an RTX 3090 and an A40) get their own plans: TensorRT times tactics on the
    device it builds on. The first GPU's plan is a cache hit only on that GPU."""
    def on(name: str):
        rt = make_fake_cudart(name=name, capability=(8, 6))
        monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
        return _use(monkeypatch, "10.3.0", rt)

    on("NVIDIA GeForce RTX 3090")
    first = build(models["clip"], tmp_path, bundle="a", precision="fp16")
    other = on("NVIDIA A40")
    second = build(models["clip"], tmp_path, bundle="b", precision="fp16")
    assert other.fake.called("Builder") and not second["cache_hit"] and second["gpu"] == "NVIDIA A40"
    again = on("NVIDIA GeForce RTX 3090")
    assert build(models["clip"], tmp_path, bundle="c", precision="fp16")["cache_hit"]
    assert not again.fake.called("Builder") and first["gpu"] == "NVIDIA GeForce RTX 3090"
    options = tb.TrtBuildOptions(engine_cache_dir=None)
    keys = {tb.engine_cache_key("0" * 64, "10.3.0", {"name": n, "sm": "86"}, "image", DIMS, options)
            for n in ("NVIDIA GeForce RTX 3090", "NVIDIA A40")}
    assert len(keys) == 2


# ------------------------------------------------------------------------------------------------ Q/DQ types
def quantize_model(path: Path, zero_point: int | None = None, output_dtype: int | None = None,
                   opset: int = 17) -> Path:
    """Flatten -> QuantizeLinear -> DequantizeLinear -> MatMul; the Q/DQ zero point of type `zero_point` (none when
    None), the QuantizeLinear's `output_dtype` (opset 21) when given."""
    inputs = ["flat", "s"]
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array((np.random.default_rng(0).standard_normal((48, 5)) * 0.2).astype(np.float32),
                                     "w")]
    if zero_point is not None:
        inputs.append("zp")
        inits.append(numpy_helper.from_array(np.array(0, helper.tensor_dtype_to_np_dtype(zero_point)), "zp"))
    attrs = {"output_dtype": output_dtype} if output_dtype is not None else {}
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("QuantizeLinear", inputs, ["q"], name="q", **attrs),
             helper.make_node("DequantizeLinear", ["q", *inputs[1:]], ["dq"], name="dq"),
             helper.make_node("MatMul", ["dq", "w"], ["logits"], name="logits_matmul")]
    graph = helper.make_graph(nodes, path.stem,
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *DIMS])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model)  # no full check: ONNX, like TensorRT, refuses a type mismatch
    onnx.save(model, str(path))
    return path


def _parses(fake, path: Path) -> tuple[bool, str]:
    logger = fake.Logger()
    parser = fake.OnnxParser(fake.Builder(logger).create_network(0), logger)
    ok = parser.parse_from_file(str(path))
    return ok, "" if ok else parser.get_error(0).desc()


@pytest.mark.parametrize("api", [10, 11])
def test_quantize_without_zero_point_is_int8_as_tensorrt_parses_it(monkeypatch, cudart, tmp_path, api):
    """Defect 7: ONNX gives a QuantizeLinear without a zero point uint8 (shape inference says so), and the check
    refused it as UINT8; TensorRT's parser quantizes it to INT8 (onnx-tensorrt QuantDequantLinearHelper), so the
    graph builds. `output_dtype` (opset 21) decides where it is given; a uint8 zero point is still refused."""
    fake = _use(monkeypatch, "10.3.0" if api == 10 else "11.4.0", cudart)
    bare = quantize_model(tmp_path / "bare.onnx")
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(bare))).graph.value_info
    assert next(v for v in inferred if v.name == "q").type.tensor_type.elem_type == TensorProto.UINT8
    assert tb.check_tensorrt_qdq(bare, api) == 2
    assert _parses(fake, bare) == (True, "")
    rec = build(bare, tmp_path, precision="int8")
    assert (tmp_path / "bundle" / rec["file"]).is_file()

    as_int8 = quantize_model(tmp_path / "int8.onnx", output_dtype=TensorProto.INT8, opset=21)
    assert tb.check_tensorrt_qdq(as_int8, api) == 2 and _parses(fake, as_int8)[0]
    as_uint8 = quantize_model(tmp_path / "uint8.onnx", output_dtype=TensorProto.UINT8, opset=21)
    with pytest.raises(PkdError, match=r"^uint8\.onnx: QuantizeLinear 'q' carries UINT8 \(TensorRT quantizes to "
                                       r"signed types only: quantize to symmetric int8\); TensorRT"):
        tb.check_tensorrt_qdq(as_uint8, api)
    assert not _parses(fake, as_uint8)[0]
    uint8_zero_point = quantize_model(tmp_path / "u8zp.onnx", zero_point=TensorProto.UINT8)
    with pytest.raises(PkdError, match="QuantizeLinear 'q' carries UINT8"):
        tb.check_tensorrt_qdq(uint8_zero_point, api)
    # the 10.3 parser refuses a uint8 zero point; 11's reads it as INT8 (clamping what uint8 holds above 127)
    assert _parses(fake, uint8_zero_point)[0] is (api == 11)
    mismatch = quantize_model(tmp_path / "mismatch.onnx", zero_point=TensorProto.INT8,
                              output_dtype=TensorProto.FLOAT8E4M3FN, opset=21)
    with pytest.raises(PkdError, match=r"^mismatch\.onnx: QuantizeLinear 'q' has output_dtype FLOAT8E4M3FN but a "
                                       r"INT8 zero point; TensorRT's parser refuses the mismatch"):
        tb.check_tensorrt_qdq(mismatch, api)
    assert _parses(fake, mismatch) == (False, "Mismatch between attribute output_dtype FLOAT8E4M3FN and zero-point "
                                              "data type INT8.")
