"""benchmarks/gpu_check.sh: the dry run on this CPU (every step's JSON and figures), failures, hangs and deaths that
do not stop the later steps, the time budget, and step 2's stand-in engine driving the real TensorRTBackend over
the fake cudart (what the GPU box does over the real cuda-bindings)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from promptkd_edge.errors import PkdError
from promptkd_edge.runtime import tensorrt_backend

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_steps  # noqa: E402
import trt_standin as ts  # noqa: E402

SCRIPT = BENCHMARKS / "gpu_check.sh"
NAMES = [name for name, _, _ in gpu_steps.STEPS]
RAN_ON_CPU = ["preflight", "trt_runtime", "numerics", "latency", "text_encoder", "bundle", "distill", "decode"]


def gpu_check(out: Path, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **(env or {})}
    for key in ("PKD_GPU_CHECK_INJECT", "PKD_GPU_CHECK_TIMEOUTS", "PKD_GPU_CHECK_BUDGET"):
        if env is None or key not in env:
            full.pop(key, None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=timeout)


def results(out: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


@pytest.fixture(scope="module")
def dry_run(module_dir) -> tuple[subprocess.CompletedProcess, dict[str, dict], float]:
    out = module_dir / "dry-run"
    start = time.perf_counter()
    proc = gpu_check(out, "--dry-run")
    return proc, results(out), time.perf_counter() - start


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ------------------------------------------------------------------------------------------ the dry run
def test_dry_run_writes_every_step(dry_run):
    proc, found, seconds = dry_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert seconds < 180
    assert list(found) == NAMES
    for i, name in enumerate(NAMES, 1):
        r = found[name]
        assert r["step"] == i and r["dry_run"] is True and finite(r["seconds"]) and r["seconds"] >= 0
        expected = "ok" if name in RAN_ON_CPU else "skipped"
        assert r["status"] == expected, (name, r["reason"], r.get("traceback"))
    assert "dry run" in found["tensorrt"]["reason"] and "GPU" in found["tensorrt"]["reason"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split("|")[2].strip() for line in table] == NAMES  # the summary table, one row per step


def test_dry_run_preflight(dry_run):
    r = dry_run[1]["preflight"]
    assert r["imports"]["torch"]["ok"] and r["imports"]["open_clip"]["ok"]
    assert r["cuda"]["available"] is False
    assert "cuda.bindings" in r["imports"] and "tensorrt" in r["imports"]
    assert "python" in r["doctor"] and "error" not in r["doctor"]  # `pkd doctor --json` parsed
    assert r["skips"]["tensorrt"].startswith("step 8 is skipped: tensorrt does not import")


def test_dry_run_numerics_are_the_tf32_facts(dry_run):
    r = dry_run[1]["numerics"]
    assert r["logit_scale"] == 100.0 and r["fp32_gate_max_abs_logit_diff"] == 1e-3
    assert r["tf32"] is None and "CUDA" in r["tf32_reason"]
    for name in ("tf32_emulated", "fp16", "bf16"):
        m = r[name]
        assert finite(m["max_abs_logit_delta"]) and m["max_abs_logit_delta"] > 0, name
        assert 0 < m["mean_abs_logit_delta"] <= m["max_abs_logit_delta"]
        assert 0.99 < m["min_cosine"] <= 1 + 1e-6 and 0 <= m["top1_agreement"] <= 1
    # bf16 keeps 8 mantissa bits, TF32 10: the emulation sits between FP32 and bf16
    assert r["tf32_emulated"]["max_abs_logit_delta"] < r["bf16"]["max_abs_logit_delta"]
    assert r["tf32_passes_fp32_gate"] == (r["tf32_emulated"]["max_abs_logit_delta"] <= 1e-3)


def test_dry_run_latency_text_bundle_distill(dry_run):
    found = dry_run[1]
    rows = found["latency"]["rows"]
    assert sorted(r["batch"] for r in rows) == [1, 8, 32]
    for r in rows:
        assert r["backend"] == "torch-eager-fp32" and r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]
        assert r["first_call_ms"] > 0 and r["images_per_s"] > 0
    assert [u["backend"] for u in found["latency"]["unavailable"]] == ["torch-eager-fp16"]

    t = found["text_encoder"]
    assert t["fp32"]["names_per_s"] > 0 and t["bf16"]["names_per_s"] > 0
    assert 0.99 < t["bf16"]["min_cosine_vs_fp32"] <= 1 + 1e-6 and 0 < t["bf16"]["max_abs_delta_vs_fp32"] < 0.1

    b = found["bundle"]
    assert b["valid"] and b["images"] == 12 and b["torch_on_cuda"] is False
    assert b["torch_description"].endswith("on cpu") and "onnxruntime" in b["onnxruntime_description"]
    assert b["top1_agreement"] == 1.0 and 0 <= b["max_abs_probability_delta"] < 1e-3

    d = found["distill"]
    assert [r["mode"] for r in d["rows"]] == ["teacher every step", "teacher-feature cache"]
    assert all(r["images_per_second"] > 0 and r["batch"] == 8 for r in d["rows"])
    assert d["cache_speedup"]["8"] > 0


def test_dry_run_decode_measures_each_variant_against_the_reference(dry_run):
    """Step 9 runs the GPU decode's code on the CPU (torch-cpu) beside the PIL reference and the DCT downscale."""
    r = dry_run[1]["decode"]
    assert r["device"] == "cpu" and r["frame_size"] == [1920, 1080] and r["frames"] == 8
    v = r["variants"]
    assert [v[k]["decode"] for k in ("reference", "draft", "torch")] == ["exact", "draft", "torch-cpu"]
    assert v["reference"]["max_abs_pixel_diff"] == 0 and v["reference"]["max_abs_logit_diff"] == 0
    for row in v.values():
        assert row["ms_per_image"] > 0 and 0 <= row["mean_abs_pixel_diff"] <= row["max_abs_pixel_diff"] <= 8
        assert 0 <= row["top1_agreement"] <= 1 and finite(row["max_abs_logit_diff"])
    assert v["torch"]["max_abs_pixel_diff"] > 0  # its own decoder and float resize: measured, not assumed equal


def test_dry_run_standin_engine(dry_run):
    r = dry_run[1]["trt_runtime"]
    assert r["out_of_profile_refused"] is True and "not driven" in r["tensorrt_backend"]
    assert 0 <= r["max_abs_error"]["logits"] < ts.TOLERANCE["logits"]
    assert 0 < r["max_abs_error"]["probs"] < ts.TOLERANCE["probs"]  # float16 probabilities round


# ------------------------------------------------------------------------------------------ failures and limits
def test_failed_hung_and_dead_steps_do_not_stop_the_rest(tmp_path):
    start = time.perf_counter()
    proc = gpu_check(tmp_path, "--dry-run", "--steps", "2,3,4,5,8", env={
        "PKD_GPU_CHECK_INJECT": "trt_runtime=fail,numerics=hang,latency=crash",
        "PKD_GPU_CHECK_TIMEOUTS": "numerics=3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = results(tmp_path)
    assert list(found) == ["trt_runtime", "numerics", "latency", "text_encoder", "tensorrt"]  # only --steps ran
    assert found["trt_runtime"]["status"] == "failed"
    assert found["trt_runtime"]["reason"] == "RuntimeError: injected failure (PKD_GPU_CHECK_INJECT)"
    assert found["numerics"]["status"] == "timeout" and found["numerics"]["reason"] == "ran past its 3 s limit"
    assert 3 <= found["numerics"]["seconds"] < 15
    assert found["latency"]["status"] == "failed"
    assert found["latency"]["reason"] == "exited with status 9 before writing its result"
    assert found["text_encoder"]["status"] == "ok" and found["text_encoder"]["fp32"]["names_per_s"] > 0
    assert found["tensorrt"]["status"] == "skipped"
    assert time.perf_counter() - start < 90


def test_budget_spent_skips_the_rest(tmp_path):
    proc = gpu_check(tmp_path, "--dry-run", "--steps", "2,8", env={"PKD_GPU_CHECK_BUDGET": "5"})
    assert proc.returncode == 0
    found = results(tmp_path)
    assert [found[n]["status"] for n in ("trt_runtime", "tensorrt")] == ["skipped", "skipped"]
    assert found["trt_runtime"]["reason"] == "no time left in the 5 s budget"


# ------------------------------------------------------------------------------------------ TF32 emulation
def test_round_to_tf32_matches_an_independent_rounding():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(4000).astype(np.float32) * 10.0 ** rng.integers(-6, 6, 4000),
                        np.float32([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 0.0])])  # ties to even both ways
    m, e = np.frexp(x.astype(np.float64))
    want = np.ldexp(np.round(m * 2**11) / 2**11, e)  # 11 significant bits; np.round: half to even
    got = gpu_steps.round_to_tf32(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_emulated_tf32_rounds_linear_operands_and_restores():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 8)
    x = torch.randn(4, 256)
    exact = layer(x)
    with gpu_steps.emulated_tf32():
        rounded = layer(x)
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)  # patched too: same rounding
    ref = (gpu_steps.round_to_tf32(x).double() @ gpu_steps.round_to_tf32(layer.weight).double().t()
           + layer.bias.double())
    assert torch.allclose(rounded.double(), ref, atol=1e-5) and torch.equal(rounded, want)
    assert 0 < (rounded - exact).abs().max() < 1e-2
    assert torch.equal(layer(x), exact)  # restored


# ------------------------------------------------------------------------------------------ step 2 on the CPU
def fake_device(rt) -> ts.ArrayDevice:
    """numpy over the fake cudart's memory; where its streams are asynchronous, the engine's work queues behind
    the stream's copies as kernels do."""

    def launch(handle: int, work, uses: set) -> None:
        rt.enqueue(rt.stream_of(handle), work, uses)

    return ts.numpy_device(launch if hasattr(rt, "enqueue") else None)


@pytest.fixture()
def standin(monkeypatch, tmp_path):
    """TensorRTBackend over the stand-in `tensorrt` (numpy on the fake cudart's host "device" memory), counted."""
    from fake_tensorrt import make_fake_cudart

    rt = make_fake_cudart(name="NVIDIA H200", capability=(9, 0))
    counting = ts.CountingCudart(rt)
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: counting)
    trt = ts.make_standin_tensorrt(fake_device(rt), ts.standin_weights(), ts.PROFILES, ts.SCALE)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    plan = tmp_path / "standin.plan"
    plan.write_bytes(ts.make_plan(ts.FEATURES, ts.CLASSES, ts.PROFILES))
    record = {"file": plan.name, "tensorrt": trt.__version__, "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    return trt, counting, lambda: tensorrt_backend.TensorRTBackend(plan, record)


def test_standin_drives_the_real_backend(standin):
    trt, counting, make = standin
    figures = ts.check_backend(make, trt, counting, threads=8, calls_per_thread=4, timed_runs=3)
    assert figures["profile_switches"] == [1, 2, 0]
    # 3 tensors, each grown at batch 1, 5 and 32; nothing after the largest batch ran
    assert figures["allocations"] == {"device": 9, "pinned": 9}
    assert figures["threaded_calls"] == 32 and figures["executions"] >= 4 + 5 + 32 + 1 + 3
    assert all(0 <= e < ts.TOLERANCE[n] for n, e in figures["max_abs_error"].items())
    calls = figures["cuda_calls"]  # everything allocated was freed (grown buffers at once, the rest at close)
    assert calls["cudaFreeHost"] == calls["cudaMallocHost"] == 9 and calls["cudaFree"] == calls["cudaMalloc"] == 9
    assert calls["cudaStreamCreate"] == calls["cudaStreamDestroy"] == 1


def test_standin_engine_refuses_what_tensorrt_refuses(standin):
    trt, _, make = standin
    backend = make()
    ctx = trt.standin.contexts[-1]
    assert ctx.set_input_shape(ts.INPUT, (5, ts.FEATURES)) is False  # profile 0 is 1..1
    with pytest.raises(RuntimeError, match="optimization profile"):
        ctx.set_optimization_profile_async(3, 1)
    with pytest.raises(PkdError, match="outside the engine's profiles"):
        backend.run(ts.batch_of(33, 0))
    backend.close()


# Each mutation of the backend's CUDA side that step 2 must catch on the GPU; the CPU's synchronous fake cannot show
# a missing cudaStreamSynchronize (a real race only on a GPU), so that one is left to the GPU run.
def _default_stream(self):
    if not self.context.execute_async_v3(0):
        raise PkdError("failed")


def _pageable(self, name, shape, dtype):
    return np.empty(shape, dtype)


def _no_switch(self, batch, profile=None):
    return 0


@pytest.mark.parametrize("target, attribute, mutant, match", [
    (tensorrt_backend.TensorRTBackend, "_execute", _default_stream, "default stream"),
    (tensorrt_backend._Buffers, "host_array", _pageable, "pageable"),
    (tensorrt_backend.TensorRTBackend, "_pick_profile", _no_switch, "rejected input shape"),
])
def test_step2_catches_backend_defects(standin, monkeypatch, target, attribute, mutant, match):
    trt, counting, make = standin
    monkeypatch.setattr(target, attribute, mutant)
    with pytest.raises((ts.Failed, PkdError), match=match):
        ts.check_backend(make, trt, counting, threads=2, calls_per_thread=2, timed_runs=1)


def test_step2_gpu_path_over_fakes(monkeypatch, tmp_path):
    """gpu_steps.trt_runtime as it runs on the GPU box (not the dry run), with the fake cudart for cuda-bindings and
    numpy for CuPy: its wiring (counted cudart where the backend looks it up, plan, record) holds."""
    import types

    from fake_tensorrt import make_fake_cudart

    rt = make_fake_cudart(name="NVIDIA H200", capability=(9, 0))
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)  # restored after the step replaces it
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # likewise
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setattr(ts, "cupy_device", lambda device_id=0: fake_device(rt))
    step = gpu_steps.Step(2, "trt_runtime", tmp_path, tmp_path, False, time.perf_counter())
    figures = gpu_steps.trt_runtime(step)
    assert figures["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0", "sm": "90"}
    assert figures["profile_switches"] == [1, 2, 0] and figures["threads"] == 8
    assert figures["cuda_calls"]["cudaGetDeviceProperties"] >= 1  # the backend's own lookups were counted
    assert (tmp_path / "standin.plan").read_bytes().startswith(ts.PLAN_MAGIC)
