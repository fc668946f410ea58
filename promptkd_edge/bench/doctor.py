"""`pkd doctor`: what this machine can run (CPU, torch/CUDA, ONNX Runtime providers, TensorRT, Jetson power mode).

Every component is imported lazily and probed inside its own guard: a missing or broken one is recorded with the
reason, never raised. The module itself imports no torch.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptkd_edge.utils import gpus, system
from promptkd_edge.utils.system import one_line

MEMINFO = Path("/proc/meminfo")
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
CPU_PROVIDER = "CPUExecutionProvider"

# L4T release -> JetPack (NVIDIA's JetPack archive); anything else falls back to the major-version family.
JETPACK_BY_L4T = {
    "32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5",
    "32.7.6": "4.6.6", "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
    "35.6.0": "5.1.4", "35.6.1": "5.1.5", "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2",
    "36.4.4": "6.2.1", "38.2.0": "7.0", "38.4.0": "7.1",
}
JETPACK_BY_L4T_MAJOR = {"32": "4.x", "34": "5.0 DP", "35": "5.x", "36": "6.x", "38": "7.x", "39": "7.x"}

# MatMul x[2,2] @ w[2,2] (ir_version 8, opset 13): what `_probe_model_bytes` builds with onnx.helper, kept for
# machines that have onnxruntime but not the onnx package (tests check that both agree).
PROBE_MODEL = (
    b"\x08\x08\x12\npkd-doctor:a\n\x11\n\x01x\n\x01w\x12\x01y\"\x06MatMul\x12\x05probe*\x1b\x08\x02\x08\x02\x10\x01"
    b"\"\x10\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@B\x01wZ\x13\n\x01x\x12\x0e\n\x0c\x08\x01\x12\x08\n\x02"
    b"\x08\x02\n\x02\x08\x02b\x13\n\x01y\x12\x0e\n\x0c\x08\x01\x12\x08\n\x02\x08\x02\n\x02\x08\x02B\x04\n\x00\x10\r"
)
PROBE_WEIGHTS = ((1.0, 2.0), (3.0, 4.0))


def _guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn(*args), or {"error": ...} when it raises anything at all."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - the doctor reports, it never raises
        return {"error": one_line(e)}


# ----------------------------------------------------------------------------------------------------- host
def probe_python() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable}


def probe_platform() -> dict[str, Any]:
    return {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
            "platform": platform.platform()}


def probe_cpu() -> dict[str, Any]:
    from promptkd_edge.runtime.cpu import cpu_info

    info = cpu_info()
    return {"model": info["model"], "cores": os.cpu_count(), "cores_usable": info["cores"],
            "speed_flags": info["speed_flags"], "max_mhz": info["max_mhz"]}


def probe_memory() -> dict[str, Any]:
    text = system.read_text(MEMINFO)
    if text:
        kib = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE)}
        if "MemTotal" in kib:
            avail = kib.get("MemAvailable")
            return {"total_gib": round(kib["MemTotal"] / 2**20, 2),
                    "available_gib": round(avail / 2**20, 2) if avail is not None else None}
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"total_gib": round(total / 2**30, 2), "available_gib": None}


# ---------------------------------------------------------------------------------------------------- torch
def probe_torch() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - ImportError, OSError from a broken CUDA library, ...
        return {"available": False, "reason": one_line(e)}
    info: dict[str, Any] = {"available": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
                            "cuda_available": False, "devices": []}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "CUDA initialization: ... driver too old" and the like
            info["cuda_available"] = bool(torch.cuda.is_available())
            for i in range(torch.cuda.device_count() if info["cuda_available"] else 0):
                major, minor = torch.cuda.get_device_capability(i)
                props = torch.cuda.get_device_properties(i)
                info["devices"].append({"index": i, "name": torch.cuda.get_device_name(i),
                                        "compute_capability": f"{major}.{minor}", "sm": f"sm_{major}{minor}",
                                        "memory_gib": round(props.total_memory / 2**30, 1)})
    except Exception as e:  # noqa: BLE001
        info["cuda_error"] = one_line(e)
    return info


# ---------------------------------------------------------------------------------------------- onnxruntime
def _probe_model_bytes() -> bytes:
    """A tiny MatMul ONNX model, built with onnx.helper when onnx is installed."""
    try:
        from onnx import TensorProto, helper
    except Exception:  # noqa: BLE001 - onnx is not a runtime dependency
        return PROBE_MODEL
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [v for row in PROBE_WEIGHTS for v in row])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                              producer_name="pkd-doctor")
    return model.SerializeToString()


def _check_provider(ort: Any, provider: str, model: bytes) -> str:
    """'loads', 'falls back to CPU', or 'error: ...' for one execution provider."""
    import numpy as np

    so = ort.SessionOptions()
    so.log_severity_level = 3
    providers = [provider] if provider == CPU_PROVIDER else [provider, CPU_PROVIDER]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sess = ort.InferenceSession(model, so, providers=providers)
            active = list(sess.get_providers())
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        return f"error: {one_line(e)}"
    if not active or active[0] != provider:
        return "falls back to CPU" if active and active[0] == CPU_PROVIDER else f"falls back to {active}"
    try:
        eye = np.eye(2, dtype=np.float32)
        out = sess.run(None, {"x": eye})[0]
    except Exception as e:  # noqa: BLE001
        return f"error: loads but cannot run: {one_line(e)}"
    if not np.allclose(out, np.asarray(PROBE_WEIGHTS, dtype=np.float32), atol=1e-3):
        return "error: loads but computes a wrong MatMul"
    return "loads"


def probe_onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001
        return {"available": False, "reason": one_line(e)}
    available = list(ort.get_available_providers())
    info: dict[str, Any] = {"available": True, "version": ort.__version__, "device": ort.get_device(),
                            "available_providers": available, "providers": {}}
    model = _probe_model_bytes()
    for provider in available:
        info["providers"][provider] = _check_provider(ort, provider, model)
    return info


# ------------------------------------------------------------------------------------------------- OpenVINO
def probe_openvino() -> dict[str, Any]:
    """Version, what the CPU plugin computes in (FP32, BF16, FP16, INT8), and a tiny MatMul run in f32."""
    try:
        import openvino as ov
    except Exception as e:  # noqa: BLE001
        return {"available": False, "reason": one_line(e)}
    import tempfile

    import numpy as np

    info: dict[str, Any] = {"available": True, "version": ov.__version__.split("-")[0]}
    try:
        from promptkd_edge.runtime.openvino_backend import shared_core

        core = shared_core()
        info["capabilities"] = [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "probe.onnx"
            path.write_bytes(_probe_model_bytes())
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            out = compiled.create_infer_request().infer({0: np.eye(2, dtype=np.float32)})[compiled.outputs[0]]
        info["self_test"] = bool(np.allclose(out, np.asarray(PROBE_WEIGHTS, dtype=np.float32), atol=1e-3))
    except Exception as e:  # noqa: BLE001 - a plugin that cannot start is a finding
        info["error"] = one_line(e)
    return info


def _row_openvino(d: dict[str, Any]) -> tuple[str, str]:
    if not d.get("available"):
        return "missing", d.get("reason", "not installed") + " (pip install 'promptkd-edge[openvino]')"
    if d.get("error") or not d.get("self_test"):
        return "warning", f"{d['version']}, CPU plugin: {d.get('error') or 'computes a wrong MatMul'}"
    caps = d.get("capabilities", [])
    bf16 = "bf16 native (gated bundles run in bf16)" if "BF16" in caps else "no native bf16 (f32 only)"
    computes = ", ".join(c for c in caps if c in ("FP32", "BF16", "FP16", "INT8"))
    return "ok", f"{d['version']}, CPU computes {computes}; {bf16}"


# ------------------------------------------------------------------------------------------------- TensorRT
def probe_tensorrt(run_tensorrt_check: bool = True) -> dict[str, Any]:
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, or OSError for a missing libnvinfer/libnvonnxparser
        return {"available": False, "reason": one_line(e)}
    info: dict[str, Any] = {"available": True, "version": str(getattr(trt, "__version__", "unknown")),
                            "self_test": None}
    if run_tensorrt_check:
        try:
            from promptkd_edge.export.tensorrt_build import tensorrt_self_test

            info["self_test"] = dict(tensorrt_self_test())
        except Exception as e:  # noqa: BLE001 - no GPU, no driver, a build failure: all are findings
            info["self_test"] = {"ok": False, "error": one_line(e)}
    return info


# ---------------------------------------------------------------------------------------------- CUDA, GPUs
def _cuda_version(v: int | None) -> str | None:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else None


def probe_cuda_python() -> dict[str, Any]:
    """cuda-python's version and the CUDA runtime's view (runtime/tensorrt_backend.py: what TensorRT runs on)."""
    try:
        import cuda.bindings
        from cuda.bindings import runtime as cudart
    except Exception as e:  # noqa: BLE001
        return {"available": False, "reason": one_line(e)}
    from promptkd_edge.runtime.tensorrt_backend import cuda_runtime, driver_mismatch

    view = cuda_runtime(cudart)
    version = getattr(cuda.bindings, "__version__", None)
    return {"available": True, "version": version, "device_count": view.device_count, "error": view.error,
            "driver_cuda": _cuda_version(view.driver_cuda), "runtime_cuda": _cuda_version(view.runtime_cuda),
            "driver_mismatch": driver_mismatch(version, view.driver_cuda)}


def _with_unit(value: float | None, unit: str, digits: int = 0) -> str:
    return "[N/A]" if value is None else f"{value:.{digits}f} {unit}"


def probe_nvidia_smi() -> dict[str, Any]:
    """The GPUs NVML (else nvidia-smi) lists: name, driver, SM clocks, power limit (utils/gpus.py)."""
    scan = gpus.scan(timeout=system.COMMAND_TIMEOUT_S)
    if scan.source is None:
        return {"available": False, "reason": scan.error}
    if scan.error:
        return {"available": True, "gpus": [], "error": scan.error}
    return {"available": True, "gpus": [
        {"name": g.name, "driver": g.driver, "clock_sm": _with_unit(g.clock_sm_mhz, "MHz"),
         "clock_max_sm": _with_unit(g.clock_max_sm_mhz, "MHz"), "power_limit": _with_unit(g.power_limit_w, "W", 2)}
        for g in scan.gpus]}


# --------------------------------------------------------------------------------------------------- Jetson
def jetpack_guess(l4t: str) -> str | None:
    """JetPack release for an L4T release such as '36.4.3' (exact table, else the major family, e.g. '6.x')."""
    parts = l4t.split(".")
    candidates = [l4t, ".".join((parts + ["0", "0"])[:3])]
    for c in candidates:
        if c in JETPACK_BY_L4T:
            return JETPACK_BY_L4T[c]
    return JETPACK_BY_L4T_MAJOR.get(parts[0])


def _parse_nvpmodel(out: str) -> tuple[str | None, int | None]:
    m = re.search(r"NV Power Mode:\s*(.+?)\s*$\s*(\d+)?", out, re.MULTILINE)
    if not m:
        return None, None
    return m.group(1), int(m.group(2)) if m.group(2) is not None else None


def _parse_jetson_clocks(out: str) -> str:
    """'on' when jetson_clocks pinned the clocks (min == max), 'off' when not, else 'unknown'."""
    gpu = re.search(r"^GPU MinFreq=(\d+) MaxFreq=(\d+)", out, re.MULTILINE)
    if gpu:
        return "on" if gpu.group(1) == gpu.group(2) else "off"
    cpus = re.findall(r"^cpu\d+: Online=1 .*?MinFreq=(\d+) MaxFreq=(\d+)", out, re.MULTILINE)
    if cpus:
        return "on" if all(lo == hi for lo, hi in cpus) else "off"
    return "unknown"


def probe_jetson() -> dict[str, Any]:
    model_text = system.read_text(DEVICE_TREE_MODEL)
    model = model_text.strip("\x00 \n") if model_text else None
    release = system.read_text(NV_TEGRA_RELEASE)
    if release is None:
        return {"is_jetson": False, "model": model, "reason": f"no {NV_TEGRA_RELEASE}"}
    line = next((ln.strip() for ln in release.splitlines() if ln.strip()), "")
    info: dict[str, Any] = {"is_jetson": True, "model": model, "l4t_line": line, "l4t": None, "jetpack": None}
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", line)
    if m:
        info["l4t"] = f"{m.group(1)}.{m.group(2).rstrip('.')}"
        info["jetpack"] = jetpack_guess(info["l4t"])

    exe = system.which("nvpmodel")
    info["power_mode"], info["power_mode_id"] = None, None
    if not exe:
        info["power_mode_error"] = "nvpmodel not on PATH"
    else:
        rc, out = system.run_command([exe, "-q"])
        name, mode_id = _parse_nvpmodel(out) if rc == 0 else (None, None)
        if name is None:
            info["power_mode_error"] = one_line(out)
        info["power_mode"], info["power_mode_id"] = name, mode_id

    exe = system.which("jetson_clocks")
    if not exe:
        info["jetson_clocks"] = "unknown (jetson_clocks not on PATH)"
    else:
        rc, out = system.run_command([exe, "--show"])
        info["jetson_clocks"] = _parse_jetson_clocks(out) if rc == 0 else "unknown (needs root)"
    return info


def probe_backends() -> dict[str, Any]:
    """The runtime's backend kinds (runtime/backends.py, the registry `Classifier.from_bundle` loads from): each
    one's modules installed here or not, its devices, its gate, and whether `auto` may pick it."""
    from promptkd_edge.runtime.backends import availability

    return {"kinds": availability()}


def _row_backends(d: dict[str, Any]) -> tuple[str, str]:
    kinds = d["kinds"]
    here = [k["backend"] for k in kinds if k["available"]]
    auto = [k["backend"] for k in kinds if k["available"] and k["auto"]]
    absent = [f"{k['backend']} ({k['reason']})" for k in kinds if not k["available"]]
    detail = f"installed: {', '.join(here) or 'none'}; auto picks among: {', '.join(auto) or 'none'}"
    return ("ok" if here else "warning"), detail + (f"; not installed: {'; '.join(absent)}" if absent else "")


# --------------------------------------------------------------------------------------------------- report
def probe(run_tensorrt_check: bool = True) -> dict[str, Any]:
    """Describe what this machine can run; never raises for a missing or broken component."""
    start = time.perf_counter()
    report: dict[str, Any] = {
        "python": _guarded(probe_python),
        "platform": _guarded(probe_platform),
        "cpu": _guarded(probe_cpu),
        "memory": _guarded(probe_memory),
        "torch": _guarded(probe_torch),
        "onnxruntime": _guarded(probe_onnxruntime),
        "openvino": _guarded(probe_openvino),
        "tensorrt": _guarded(probe_tensorrt, run_tensorrt_check),
        "cuda_python": _guarded(probe_cuda_python),
        "nvidia_smi": _guarded(probe_nvidia_smi),
        "jetson": _guarded(probe_jetson),
        "backends": _guarded(probe_backends),
    }
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report


def _gpu_seen(report: dict[str, Any]) -> bool:
    return bool(report.get("nvidia_smi", {}).get("gpus") or report.get("cuda_python", {}).get("device_count")
                or report.get("jetson", {}).get("is_jetson"))


def _row_torch(t: dict[str, Any], gpu_seen: bool) -> tuple[str, str]:
    if not t.get("available"):
        return "missing", t.get("reason", "not installed")
    build = f"CUDA {t['cuda_build']} build" if t.get("cuda_build") else "CPU-only build"
    if t.get("cuda_available"):
        devices = "; ".join(f"{d['name']} ({d['sm']})" for d in t.get("devices", []))
        return "ok", f"{t['version']}, {build}, CUDA available: {devices}"
    detail = f"{t['version']}, {build}, CUDA unavailable" + (f" ({t['cuda_error']})" if t.get("cuda_error") else "")
    return ("warning" if gpu_seen else "ok"), detail + (" although a GPU is present" if gpu_seen else "")


def _row_tensorrt(t: dict[str, Any]) -> tuple[str, str]:
    if not t.get("available"):
        return "missing", t.get("reason", "not installed")
    test = t.get("self_test")
    if test is None:
        return "ok", f"{t['version']} (self-test skipped)"
    if test.get("error"):
        return "warning", f"{t['version']}, self-test failed: {test['error']}"
    if not test.get("ok"):
        return "warning", f"{t['version']}, self-test wrong: max|diff| {test.get('max_abs_diff')}"
    return "ok", (f"{t['version']}, self-test ok (max|diff| {test.get('max_abs_diff', 0):.2g}, "
                  f"{test.get('seconds', 0):.1f} s)")


def _row_jetson(j: dict[str, Any]) -> tuple[str, str]:
    if not j.get("is_jetson"):
        return "missing", "not a Jetson" + (f" ({j['reason']})" if j.get("reason") else "")
    jp = f", JetPack {j['jetpack']} (guess)" if j.get("jetpack") else ""
    mode = j.get("power_mode")
    if mode is not None:
        mode = mode + (f" ({j['power_mode_id']})" if j.get("power_mode_id") is not None else "")
    else:
        mode = f"unknown: {j.get('power_mode_error', '?')}"
    detail = f"{j.get('model') or 'Jetson'}, L4T {j.get('l4t') or j.get('l4t_line')}{jp}, power mode {mode}, " \
             f"jetson_clocks {j.get('jetson_clocks')}"
    return ("ok" if j.get("power_mode") is not None else "warning"), detail


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(component, status 'ok'/'missing'/'warning', detail) rows for a table, one per component and ORT provider."""
    rows: list[tuple[str, str, str]] = []
    gpu_seen = _gpu_seen(report)

    def add(component: str, section: str, fn: Callable[[dict[str, Any]], tuple[str, str]]) -> None:
        data = report.get(section) or {}
        if "error" in data and len(data) == 1:
            rows.append((component, "warning", f"probe failed: {data['error']}"))
            return
        try:
            rows.append((component, *fn(data)))
        except Exception as e:  # noqa: BLE001 - a half-filled section must not break the table
            rows.append((component, "warning", f"cannot summarise: {one_line(e)}"))

    add("python", "python", lambda d: ("ok", f"{d['version']} ({d['executable']})"))
    add("platform", "platform", lambda d: ("ok", f"{d['system']} {d['release']} {d['machine']}"))
    add("cpu", "cpu", lambda d: ("ok", f"{d['model']}, {d['cores_usable'] or d['cores']} cores usable "
                                       f"of {d['cores']}" + (f"; {' '.join(d['speed_flags'])}"
                                                             if d.get("speed_flags") else "")))
    add("memory", "memory", lambda d: ("ok", f"{d['total_gib']:.1f} GiB total" + (
        f", {d['available_gib']:.1f} GiB available" if d.get("available_gib") is not None else "")))
    add("torch", "torch", lambda d: _row_torch(d, gpu_seen))
    add("onnxruntime", "onnxruntime", lambda d: ("ok", f"{d['version']}, providers: "
                                                       f"{', '.join(d['available_providers'])}")
        if d.get("available") else ("missing", d.get("reason", "not installed")))
    for provider, state in (report.get("onnxruntime") or {}).get("providers", {}).items():
        rows.append((f"onnxruntime {provider}", "ok" if state == "loads" else "warning", state))
    add("openvino", "openvino", _row_openvino)
    add("tensorrt", "tensorrt", _row_tensorrt)

    def cuda_row(d: dict[str, Any]) -> tuple[str, str]:
        if not d.get("available"):
            return "missing", d.get("reason", "not installed")
        if d.get("driver_mismatch"):
            return "warning", d["driver_mismatch"]
        if d.get("device_count"):
            return "ok", f"{d['device_count']} CUDA device(s), driver CUDA {d.get('driver_cuda')}"
        detail = f"cuda-bindings {d.get('version')}, no CUDA device ({d['error']})"
        return ("warning" if gpu_seen else "missing"), detail

    add("cuda-python", "cuda_python", cuda_row)

    def smi_row(d: dict[str, Any]) -> tuple[str, str]:
        if not d.get("available"):
            return "missing", d.get("reason", "not found")
        if d.get("error") or not d.get("gpus"):
            return "warning", d.get("error") or "no GPU listed"
        return "ok", "; ".join(f"{g['name']}, driver {g['driver']}, SM {g['clock_sm']} (max {g['clock_max_sm']}), "
                               f"power limit {g['power_limit']}" for g in d["gpus"])

    add("nvidia-smi", "nvidia_smi", smi_row)
    add("jetson", "jetson", _row_jetson)
    add("backends", "backends", _row_backends)
    return rows
