"""Which NVIDIA GPUs are here and what they are: NVML (nvidia-ml-py's `pynvml`), else nvidia-smi. Never raises.

The one owner of these facts: `pkd doctor`, the bench environment and power/memory measurement ask here. It imports
no torch and no CUDA runtime (the TensorRT backend's CUDA-runtime view is `runtime.tensorrt_backend.cuda_runtime`).
Jetson has no NVML, and its nvidia-smi leaves most fields [N/A]; tegrastats measures power there (bench/power.py).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from promptkd_edge.utils import system

NVIDIA_SMI_FIELDS = ("index", "uuid", "name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm",
                     "clocks.mem", "power.limit", "compute_cap")
NVIDIA_SMI_TIMEOUT_S = 2.0
NVML_HINT = "pip install nvidia-ml-py (in the [gpu] and [trt] extras)"
_MISSING = ("", "n/a", "[n/a]", "[not supported]", "not supported", "[unknown error]", "unknown error")


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML or nvidia-smi sees it; None where the source does not say (Jetson: most fields)."""

    index: int
    uuid: str | None = None
    name: str | None = None
    driver: str | None = None
    memory_gib: float | None = None
    compute_capability: str | None = None
    clock_sm_mhz: int | None = None
    clock_max_sm_mhz: int | None = None
    clock_mem_mhz: int | None = None
    power_limit_w: float | None = None


@dataclass
class GpuScan:
    """What a scan found: `source` ('nvml', 'nvidia-smi' or None when neither answered), the GPUs, and `error`
    (why there is no list: no tool, or the tool's first line of complaint)."""

    source: str | None
    gpus: list[Gpu] = field(default_factory=list)
    error: str | None = None


def cuda_selector(device: str) -> str:
    """Which GPU `device` ('cuda', 'cuda:1') means to NVML / nvidia-smi: an index or UUID (CUDA_VISIBLE_DEVICES)."""
    m = re.match(r"cuda:(\d+)$", device.strip())
    ordinal = int(m.group(1)) if m else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[ordinal] if ordinal < len(visible) else str(ordinal)


def select(gpus: list[Gpu], selector: str) -> Gpu | None:
    """The GPU an index or (a prefix of) a UUID names; the first one when none matches; None for no GPUs."""
    for gpu in gpus:
        if selector == str(gpu.index) or selector == gpu.uuid or (
                selector.startswith("GPU-") and (gpu.uuid or "").startswith(selector)):
            return gpu
    return gpus[0] if gpus else None


# ----------------------------------------------------------------------------------------------------- NVML
@contextlib.contextmanager
def nvml() -> Iterator[tuple[Any | None, str | None]]:
    """(pynvml initialised, None), or (None, why not): not installed, no driver library, no GPU. Shuts NVML down."""
    try:
        import pynvml
    except ImportError:
        yield None, f"NVML is not installed ({NVML_HINT})"
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:  # NVMLError_LibraryNotFound without a driver, DriverNotLoaded, ...
        yield None, f"NVML: {e}"
        return
    try:
        yield pynvml, None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def nvml_handle(pynvml: Any, selector: str) -> Any:
    """NVML's handle for an index or (a prefix of) a UUID; raises pynvml.NVMLError when there is no such GPU."""
    if not selector.startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByIndex(int(selector))
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        if _text(pynvml.nvmlDeviceGetUUID(handle)).startswith(selector):
            return handle
    return pynvml.nvmlDeviceGetHandleByUUID(selector)  # raises NVMLError_NotFound


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _maybe(pynvml: Any, fn: Any, *args: Any) -> Any:
    """fn(*args), or None where NVML does not support it on this GPU."""
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _nvml_gpu(pynvml: Any, index: int, driver: str | None) -> Gpu:
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = _maybe(pynvml, pynvml.nvmlDeviceGetMemoryInfo, h)
    cc = _maybe(pynvml, pynvml.nvmlDeviceGetCudaComputeCapability, h)
    limit_mw = _maybe(pynvml, pynvml.nvmlDeviceGetPowerManagementLimit, h)
    uuid = _maybe(pynvml, pynvml.nvmlDeviceGetUUID, h)
    return Gpu(index=index, uuid=_text(uuid) if uuid is not None else None,
               name=_text(pynvml.nvmlDeviceGetName(h)), driver=driver,
               memory_gib=round(memory.total / 2**30, 1) if memory is not None else None,
               compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else None,
               clock_sm_mhz=_maybe(pynvml, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
               clock_max_sm_mhz=_maybe(pynvml, pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
               clock_mem_mhz=_maybe(pynvml, pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
               power_limit_w=limit_mw / 1000 if limit_mw is not None else None)


def _scan_nvml() -> GpuScan | None:
    """The GPUs NVML lists, or None when NVML cannot answer (then nvidia-smi is asked)."""
    with nvml() as (pynvml, _why):
        if pynvml is None:
            return None
        try:
            driver = _maybe(pynvml, pynvml.nvmlSystemGetDriverVersion)
            driver = _text(driver) if driver is not None else None
            return GpuScan("nvml", [_nvml_gpu(pynvml, i, driver) for i in range(pynvml.nvmlDeviceGetCount())])
        except pynvml.NVMLError:
            return None


# ---------------------------------------------------------------------------------------------- nvidia-smi
def _smi_value(cell: str) -> str | None:
    cell = cell.strip()
    return None if cell.lower() in _MISSING else cell


def _number(cell: str | None) -> float | None:
    try:
        return float(cell) if cell is not None else None
    except ValueError:
        return None


def _whole(cell: str | None) -> int | None:
    value = _number(cell)
    return round(value) if value is not None else None


def parse_nvidia_smi(out: str, fields: tuple[str, ...] = NVIDIA_SMI_FIELDS) -> list[Gpu]:
    """GPUs from `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits` (fields start index, uuid, name)."""
    gpus = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < len(fields) or not cells[0].isdigit():
            continue
        extra = len(cells) - len(fields)  # a GPU name with commas in it
        cells = cells[:2] + [", ".join(cells[2:3 + extra])] + cells[3 + extra:]
        row = {f: _smi_value(c) for f, c in zip(fields, cells, strict=True)}
        mib = _number(row["memory.total"])
        gpus.append(Gpu(index=int(cells[0]), uuid=row["uuid"], name=row["name"], driver=row["driver_version"],
                        memory_gib=round(mib / 1024, 1) if mib is not None else None,
                        compute_capability=row.get("compute_cap"), clock_sm_mhz=_whole(row["clocks.sm"]),
                        clock_max_sm_mhz=_whole(row["clocks.max.sm"]), clock_mem_mhz=_whole(row["clocks.mem"]),
                        power_limit_w=_number(row["power.limit"])))
    return gpus


def _scan_nvidia_smi(timeout: float) -> GpuScan:
    exe = system.which("nvidia-smi")
    if not exe:
        return GpuScan(None, error="nvidia-smi not on PATH")
    fields = NVIDIA_SMI_FIELDS
    rc, out = system.run_command([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                 timeout=timeout)
    if rc != 0 and "compute_cap" in out:  # drivers before ~510 do not know the field
        fields = tuple(f for f in fields if f != "compute_cap")
        rc, out = system.run_command([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                                     timeout=timeout)
    if rc != 0:
        return GpuScan("nvidia-smi", error=system.one_line(out))
    return GpuScan("nvidia-smi", parse_nvidia_smi(out, fields))


def scan(timeout: float = NVIDIA_SMI_TIMEOUT_S) -> GpuScan:
    """This machine's NVIDIA GPUs: from NVML when it loads, else from nvidia-smi (given `timeout` seconds)."""
    return _scan_nvml() or _scan_nvidia_smi(timeout)


# --------------------------------------------------------------------------------------- energy, memory
def process_gpu_mib(pynvml: Any, handle: Any, pid: int | None = None) -> float | None:
    """GPU memory (MiB) process `pid` (default: this one) holds on a GPU, per NVML; None when NVML cannot say
    (no such process listed, or no per-process accounting, e.g. under some containers and on Windows WDDM)."""
    pid = os.getpid() if pid is None else pid
    try:
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return None
    used = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory is not None]
    return sum(used) / 2**20 if used else None


def energy_mj(pynvml: Any, handle: Any) -> int | None:
    """The GPU's energy counter in millijoules since the driver loaded (Volta and newer), else None."""
    try:
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except pynvml.NVMLError:
        return None


def power_w(pynvml: Any, handle: Any) -> float | None:
    """The GPU's power draw now, in watts, else None."""
    try:
        return pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
    except pynvml.NVMLError:
        return None
