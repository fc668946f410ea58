"""Where a benchmark ran: CPU, threads, GPU clocks and power limit (utils/gpus.py), Jetson power mode, versions.

Fast (well under 2 s) and never raises. Imports no torch, onnxruntime or tensorrt: versions come from package metadata
and torch is only consulted when the caller has already imported it.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import Any

from promptkd_edge.bench import doctor
from promptkd_edge.runtime.cpu import cpu_info
from promptkd_edge.utils import gpus
from promptkd_edge.utils.gpus import Gpu, cuda_selector, select
from promptkd_edge.utils.versions import VERSION_PACKAGES, package_version


def _torch_if_imported() -> Any | None:
    """The torch module when the caller already imported it, else None (never imports torch)."""
    mod = sys.modules.get("torch")
    return mod if mod is not None and hasattr(mod, "cuda") else None


def usable_cores() -> int:
    """CPU cores this process may run on (affinity mask), else os.cpu_count()."""
    return cpu_info()["cores"]


def threads_in_use(threads: int | None = None) -> int:
    """The thread count a run uses: `threads` when given, else torch's intra-op count if torch is imported."""
    if threads is not None:
        return int(threads)
    torch = _torch_if_imported()
    if torch is not None:
        try:
            return int(torch.get_num_threads())
        except Exception:  # noqa: BLE001 - a half-initialised torch
            pass
    return usable_cores()


# ------------------------------------------------------------------------------------------------------ GPU
def _gpu_record(gpu: Gpu) -> dict[str, Any]:
    """A GPU as the report's environment.gpu records it (docs/bench-report.md)."""
    return {"name": gpu.name, "driver": gpu.driver, "memory_gib": gpu.memory_gib,
            "compute_capability": gpu.compute_capability,
            "clocks_mhz": {"sm": gpu.clock_sm_mhz, "max_sm": gpu.clock_max_sm_mhz, "mem": gpu.clock_mem_mhz},
            "power_limit_w": gpu.power_limit_w}


def gpu_from_scan(device: str = "cuda") -> dict[str, Any] | None:
    """The facts NVML / nvidia-smi give about the GPU `device` means (None without one). Clocks: at call time."""
    gpu = select(gpus.scan().gpus, cuda_selector(device))
    return _gpu_record(gpu) if gpu is not None else None


def _torch_cuda_available(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def gpu_from_torch(device: str = "cuda") -> dict[str, Any] | None:
    """GPU facts from an already imported torch with CUDA (no driver version, no clocks), else None.

    Reading device properties initialises torch's CUDA state, so this is only done for a 'cuda' device or when torch
    has initialised CUDA already; a CPU benchmark's memory is left alone.
    """
    torch = _torch_if_imported()
    if torch is None or not _torch_cuda_available(torch):
        return None
    if not device.startswith("cuda") and not torch.cuda.is_initialized():
        return None
    m = re.match(r"cuda:(\d+)$", device.strip())
    props = torch.cuda.get_device_properties(int(m.group(1)) if m else 0)
    clock_khz = getattr(props, "clock_rate", None)  # gone from CUDA 13's cudaDeviceProp
    return {"name": props.name, "driver": None, "memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "clocks_mhz": {"sm": None, "max_sm": round(clock_khz / 1000) if clock_khz else None, "mem": None},
            "power_limit_w": None}


def describe_gpu(device: str = "cpu") -> dict[str, Any] | None:
    """The GPU in use (or visible): NVML / nvidia-smi facts, gaps filled from torch.cuda; None without one."""
    try:
        smi = gpu_from_scan(device if device.startswith("cuda") else "cuda")
    except Exception:  # noqa: BLE001
        smi = None
    if smi is not None and all(smi[k] is not None for k in ("name", "memory_gib", "compute_capability")):
        return smi
    try:
        tor = gpu_from_torch(device)
    except Exception:  # noqa: BLE001
        tor = None
    if smi is None:
        return tor
    for key in ("name", "memory_gib", "compute_capability"):  # Jetson's nvidia-smi leaves many fields [N/A]
        if smi[key] is None and tor is not None:
            smi[key] = tor[key]
    return smi


# --------------------------------------------------------------------------------------------------- Jetson
def describe_jetson() -> dict[str, Any] | None:
    """Model, L4T, JetPack (guessed from L4T), nvpmodel mode name, jetson_clocks 'on'/'off'; None off Jetson.

    power_mode and jetson_clocks are None when unknown (no nvpmodel; `jetson_clocks --show` needs root).
    """
    info = doctor.probe_jetson()
    if not info.get("is_jetson"):
        return None
    clocks = info.get("jetson_clocks")
    return {"model": info.get("model"), "l4t": info.get("l4t") or info.get("l4t_line"),
            "jetpack": info.get("jetpack"), "power_mode": info.get("power_mode"),
            "jetson_clocks": clocks if clocks in ("on", "off") else None}


# ------------------------------------------------------------------------------------------------- describe
def _cpu_model() -> str:
    try:
        return str(cpu_info()["model"])
    except Exception:  # noqa: BLE001
        return platform.processor() or platform.machine() or "unknown"


def describe(threads: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Where a benchmark runs; see the module docstring. `threads`: the count the run sets (else torch's / cores)."""
    def guarded(fn: Any, *args: Any, default: Any = None) -> Any:
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - describing the machine must never fail a benchmark
            return default

    return {
        "cpu": _cpu_model(),
        "cpu_flags": guarded(lambda: cpu_info()["speed_flags"], default=[]),
        "cores": guarded(usable_cores, default=os.cpu_count() or 1),
        "threads": guarded(threads_in_use, threads, default=threads or os.cpu_count() or 1),
        "gpu": guarded(describe_gpu, device),
        "jetson": guarded(describe_jetson),
        "versions": {m: guarded(package_version, m) for m in VERSION_PACKAGES},
        "python": platform.python_version(),
        "platform": guarded(platform.platform, default=sys.platform),
    }
