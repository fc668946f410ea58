"""`probe` on this CPU machine, and faked GPU / Jetson situations."""

from __future__ import annotations

import subprocess
import sys
import types

import onnxruntime as ort
import pytest

from promptkd_edge.bench import doctor
from promptkd_edge.utils import system


@pytest.fixture(autouse=True)
def no_nvml(monkeypatch):
    """NVML answers nothing, so the faked nvidia-smi is what the GPU probe reads (as on a machine without it)."""
    from fake_pynvml import make_fake_pynvml

    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(init_error=True))


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture(scope="module")
def report() -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "tensorrt", None)
        return doctor.probe()


def _rows(report: dict) -> dict[str, tuple[str, str]]:
    rows = doctor.summary_rows(report)
    assert all(isinstance(r, tuple) and len(r) == 3 and r[1] in ("ok", "missing", "warning") for r in rows)
    return {component: (status, detail) for component, status, detail in rows}


def test_probe_on_this_machine(report):
    assert report["seconds"] < 5
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["cpu"]["cores"] >= 1 and report["cpu"]["model"]
    assert report["memory"]["total_gib"] > 0
    torch = report["torch"]
    assert torch["available"] and torch["version"] and torch["cuda_available"] is False and torch["devices"] == []
    onnx_rt = report["onnxruntime"]
    assert onnx_rt["version"] == ort.__version__
    assert onnx_rt["providers"]["CPUExecutionProvider"] == "loads"
    trt = report["tensorrt"]
    assert trt["available"] is False and "tensorrt" in trt["reason"] and "\n" not in trt["reason"]
    assert report["jetson"]["is_jetson"] is False


def test_summary_rows_cover_each_component(report):
    rows = _rows(report)
    for component in ("python", "platform", "cpu", "memory", "torch", "onnxruntime", "tensorrt", "cuda-python",
                      "nvidia-smi", "jetson", "onnxruntime CPUExecutionProvider"):
        assert component in rows, component
    assert rows["torch"][0] == "ok" and "CUDA unavailable" in rows["torch"][1]
    assert rows["onnxruntime CPUExecutionProvider"] == ("ok", "loads")
    assert rows["tensorrt"][0] == "missing"
    assert rows["jetson"][0] == "missing"
    assert all("\n" not in detail for _, detail in rows.values())


def test_probe_model_matches_embedded_copy():
    assert doctor._probe_model_bytes() == doctor.PROBE_MODEL


def test_gpu_provider_that_falls_back_to_cpu(monkeypatch):
    """onnxruntime-gpu without CUDA libraries: CUDA is listed, the session silently runs on CPU."""
    real = ort.InferenceSession
    requested: list[list[str]] = []

    def fake_session(model, so=None, providers=None, **kwargs):
        requested.append(list(providers))
        return real(model, so, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    info = doctor.probe_onnxruntime()
    assert info["providers"] == {"TensorrtExecutionProvider": "falls back to CPU",
                                 "CUDAExecutionProvider": "falls back to CPU", "CPUExecutionProvider": "loads"}
    assert ["CUDAExecutionProvider", "CPUExecutionProvider"] in requested
    rows = _rows({"onnxruntime": info})
    assert rows["onnxruntime CUDAExecutionProvider"] == ("warning", "falls back to CPU")


def test_gpu_provider_that_errors(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("libcublasLt.so.13: cannot open shared object file\nsecond line")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", broken)
    state = doctor.probe_onnxruntime()["providers"]["CUDAExecutionProvider"]
    assert state == "error: RuntimeError: libcublasLt.so.13: cannot open shared object file"


def test_onnxruntime_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    info = doctor.probe_onnxruntime()
    assert info["available"] is False and "onnxruntime" in info["reason"]
    assert _rows({"onnxruntime": info})["onnxruntime"][0] == "missing"


def test_tensorrt_self_test_is_recorded(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    fake_build = types.ModuleType("promptkd_edge.export.tensorrt_build")
    fake_build.tensorrt_self_test = lambda: {"ok": True, "tensorrt": "10.3.0", "max_abs_diff": 1e-4, "seconds": 2.5}
    monkeypatch.setitem(sys.modules, "promptkd_edge.export.tensorrt_build", fake_build)
    info = doctor.probe_tensorrt()
    assert info["version"] == "10.3.0" and info["self_test"]["ok"] is True
    assert _rows({"tensorrt": info})["tensorrt"][0] == "ok"
    assert doctor.probe_tensorrt(run_tensorrt_check=False)["self_test"] is None

    def no_gpu():
        raise TypeError("pybind11::init(): factory function returned nullptr\nmore")

    fake_build.tensorrt_self_test = no_gpu
    info = doctor.probe_tensorrt()
    assert info["self_test"] == {"ok": False, "error": "TypeError: pybind11::init(): factory function returned nullptr"}
    status, detail = _rows({"tensorrt": info})["tensorrt"]
    assert status == "warning" and "self-test failed" in detail


def test_fake_jetson(monkeypatch, tmp_path, no_tensorrt):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                       "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    calls: list[list[str]] = []

    def fake_run(cmd, timeout=system.COMMAND_TIMEOUT_S):
        calls.append(cmd)
        if cmd[-1] == "-q":
            return 0, "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n"
        return 1, "Error: jetson_clocks must be run as root\n"

    monkeypatch.setattr(doctor, "NV_TEGRA_RELEASE", release)
    monkeypatch.setattr(doctor, "DEVICE_TREE_MODEL", model)
    monkeypatch.setattr(system, "which", lambda name: f"/usr/bin/{name}" if name != "nvidia-smi" else None)
    monkeypatch.setattr(system, "run_command", fake_run)
    info = doctor.probe_jetson()
    assert info["is_jetson"] and info["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert info["l4t"] == "36.4.3" and info["jetpack"] == "6.2"
    assert info["power_mode"] == "MAXN" and info["power_mode_id"] == 0
    assert info["jetson_clocks"] == "unknown (needs root)"
    assert ["/usr/bin/nvpmodel", "-q"] in calls
    status, detail = _rows({"jetson": info})["jetson"]
    assert status == "ok" and "power mode MAXN (0)" in detail and "JetPack 6.2" in detail

    report = doctor.probe(run_tensorrt_check=False)
    assert report["jetson"]["power_mode"] == "MAXN"
    rows = _rows(report)
    assert rows["jetson"][0] == "ok"
    assert rows["torch"][0] == "warning"  # a GPU board, but this torch cannot use CUDA


def test_jetson_clocks_and_nvpmodel_parsing():
    shown = ("SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin\nOnline CPUs: 0-11\n"
             "cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600\n"
             "GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000\n")
    assert doctor._parse_jetson_clocks(shown) == "on"
    assert doctor._parse_jetson_clocks(shown.replace("GPU MinFreq=1300500000", "GPU MinFreq=306000000")) == "off"
    assert doctor._parse_jetson_clocks("nothing useful") == "unknown"
    assert doctor._parse_nvpmodel("NV Power Mode: 15W\n2\n") == ("15W", 2)
    assert doctor._parse_nvpmodel("garbage") == (None, None)
    assert doctor.jetpack_guess("36.4") == "6.1"
    assert doctor.jetpack_guess("36.9.9") == "6.x"
    assert doctor.jetpack_guess("99.1") is None


def test_nvidia_smi_parsing(monkeypatch):
    monkeypatch.setattr(system, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(system, "run_command", lambda cmd, timeout=0: (
        0, "0, GPU-8932f937, NVIDIA H200, 570.86.15, 143771, 345, 1980, 2619, 700.00, 9.0\n"))
    info = doctor.probe_nvidia_smi()
    assert info["gpus"] == [{"name": "NVIDIA H200", "driver": "570.86.15", "clock_sm": "345 MHz",
                             "clock_max_sm": "1980 MHz", "power_limit": "700.00 W"}]
    assert _rows({"nvidia_smi": info})["nvidia-smi"][0] == "ok"
    monkeypatch.setattr(system, "run_command", lambda cmd, timeout=0: (
        9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\nMake sure ..."))
    info = doctor.probe_nvidia_smi()
    assert info["error"].startswith("NVIDIA-SMI has failed")
    assert _rows({"nvidia_smi": info})["nvidia-smi"][0] == "warning"


def test_a_crashing_probe_is_recorded(monkeypatch, no_tensorrt):
    def boom():
        raise RuntimeError("unexpected\ndetail")

    monkeypatch.setattr(doctor, "probe_cuda_python", boom)
    report = doctor.probe(run_tensorrt_check=False)
    assert report["cuda_python"] == {"error": "RuntimeError: unexpected"}
    assert _rows(report)["cuda-python"] == ("warning", "probe failed: RuntimeError: unexpected")


def test_run_command_reports_instead_of_raising():
    rc, out = system.run_command(["/nonexistent/command"])
    assert rc == -1 and "FileNotFoundError" in out
    rc, out = system.run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2)
    assert rc == -1 and "timed out" in out


def test_imports_without_torch():
    code = "import sys, promptkd_edge.bench.doctor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
