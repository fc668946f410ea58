"""Where a benchmark ran: CPU, threads, GPU clocks and power limit, Jetson power mode, library versions.

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
from promptkd_edge.utils.versions import VERSION_PACKAGES, package_version

NVIDIA_SMI_GPU_FIELDS = ("index", "uuid", "name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm",
                         "clocks.mem", "power.limit", "compute_cap")
NVIDIA_SMI_TIMEOUT_S = 2.0
_MISSING = ("", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]", "unknown error")


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
def _smi_value(cell: str) -> str | None:
    cell = cell.strip()
    return None if cell.lower() in _MISSING else cell


def _smi_int(cell: str | None) -> int | None:
    try:
        return round(float(cell)) if cell is not None else None
    except ValueError:
        return None


def _smi_float(cell: str | None) -> float | None:
    try:
        return float(cell) if cell is not None else None
    except ValueError:
        return None


def cuda_selector(device: str) -> str:
    """What nvidia-smi calls the GPU that `device` ('cuda', 'cuda:1') means: an index or UUID (CUDA_VISIBLE_DEVICES)."""
    m = re.match(r"cuda:(\d+)$", device.strip())
    ordinal = int(m.group(1)) if m else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[ordinal] if ordinal < len(visible) else str(ordinal)


def _parse_nvidia_smi(out: str, fields: tuple[str, ...], selector: str) -> dict[str, Any] | None:
    rows: list[dict[str, str | None]] = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < len(fields) or not cells[0].isdigit():
            continue
        extra = len(cells) - len(fields)  # a GPU name with commas in it
        cells = cells[:2] + [", ".join(cells[2:3 + extra])] + cells[3 + extra:]
        rows.append({f: _smi_value(c) for f, c in zip(fields, cells, strict=True)})
    if not rows:
        return None
    row = next((r for r in rows if selector in (r["index"], r["uuid"])
                or (selector.startswith("GPU-") and (r["uuid"] or "").startswith(selector))), rows[0])
    mib = _smi_float(row.get("memory.total"))
    return {"name": row["name"], "driver": row["driver_version"],
            "memory_gib": round(mib / 1024, 1) if mib is not None else None,
            "compute_capability": row.get("compute_cap"),
            "clocks_mhz": {"sm": _smi_int(row["clocks.sm"]), "max_sm": _smi_int(row["clocks.max.sm"]),
                           "mem": _smi_int(row["clocks.mem"])},
            "power_limit_w": _smi_float(row["power.limit"])}


def gpu_from_nvidia_smi(device: str = "cuda") -> dict[str, Any] | None:
    """GPU facts from nvidia-smi (None without it, or when it lists no GPU). Clocks are the ones at call time."""
    exe = doctor._which("nvidia-smi")
    if not exe:
        return None
    fields = NVIDIA_SMI_GPU_FIELDS
    rc, out = doctor._run_command([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                  timeout=NVIDIA_SMI_TIMEOUT_S)
    if rc != 0 and "compute_cap" in out:  # drivers before ~510 do not know the field
        fields = tuple(f for f in fields if f != "compute_cap")
        rc, out = doctor._run_command([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                      timeout=NVIDIA_SMI_TIMEOUT_S)
    return _parse_nvidia_smi(out, fields, cuda_selector(device)) if rc == 0 else None


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
    """The GPU in use (or visible to nvidia-smi): nvidia-smi facts, gaps filled from torch.cuda; None without one."""
    try:
        smi = gpu_from_nvidia_smi(device if device.startswith("cuda") else "cuda")
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
