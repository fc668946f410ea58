"""A fake `pynvml` (nvidia-ml-py) for the NVML paths, checked against the real installed module by
tests/test_bench_env.py::test_fake_pynvml_matches_the_real_module: every function and constant it has exists in the
real one, with the same parameters."""

from __future__ import annotations

import types
from typing import Any

import pynvml as real

# the functions promptkd_edge calls (utils/gpus.py, bench/power.py, bench/memory.py)
FUNCTIONS = ("nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount",
             "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByUUID", "nvmlDeviceGetUUID", "nvmlDeviceGetName",
             "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetCudaComputeCapability", "nvmlDeviceGetClockInfo",
             "nvmlDeviceGetMaxClockInfo", "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetTotalEnergyConsumption",
             "nvmlDeviceGetPowerUsage", "nvmlDeviceGetComputeRunningProcesses")
CONSTANTS = ("NVML_CLOCK_SM", "NVML_CLOCK_MEM")


def make_fake_pynvml(gpus: int = 1, *, energy: bool = True, power_mw: int = 250_000, watts_for_energy: float = 300.0,
                     processes: dict[int, int] | None = None, init_error: bool = False,
                     clock: Any = None) -> types.ModuleType:
    """A module with the real pynvml's names: `gpus` H200s, an energy counter that rises `watts_for_energy` per
    second of `clock()` (or none: NotSupported), power readings of `power_mw`, `processes` {pid: bytes}."""
    import time

    clock = clock or time.perf_counter
    fake = types.ModuleType("pynvml")
    fake.NVMLError = real.NVMLError
    fake.NVMLError_NotSupported = real.NVMLError_NotSupported
    for name in CONSTANTS:
        setattr(fake, name, getattr(real, name))
    state = {"inits": 0, "shutdowns": 0}
    fake.state = state

    def not_supported() -> Exception:
        return real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit():  # noqa: N802 - the real names
        if init_error:
            raise real.NVMLError(real.NVML_ERROR_LIBRARY_NOT_FOUND)
        state["inits"] += 1

    def nvmlShutdown():  # noqa: N802
        state["shutdowns"] += 1

    def nvmlSystemGetDriverVersion():  # noqa: N802
        return "570.124.06"

    def nvmlDeviceGetCount():  # noqa: N802
        return gpus

    def nvmlDeviceGetHandleByIndex(index):  # noqa: N802
        if not 0 <= index < gpus:
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        return ("handle", index)

    def nvmlDeviceGetUUID(handle):  # noqa: N802
        return f"GPU-{handle[1]:08d}-d72c-4106-c12f-20bd9faed9f6"

    def nvmlDeviceGetHandleByUUID(uuid):  # noqa: N802
        raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetName(handle):  # noqa: N802
        return "NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(handle, version=None):  # noqa: N802
        return types.SimpleNamespace(total=150_754_820_096, free=0, used=0)

    def nvmlDeviceGetCudaComputeCapability(handle):  # noqa: N802
        return 9, 0

    def nvmlDeviceGetClockInfo(handle, type):  # noqa: N802, A002
        return {real.NVML_CLOCK_SM: 345, real.NVML_CLOCK_MEM: 2619}[type]

    def nvmlDeviceGetMaxClockInfo(handle, type):  # noqa: N802, A002
        if type != real.NVML_CLOCK_SM:
            raise not_supported()
        return 1980

    def nvmlDeviceGetPowerManagementLimit(handle):  # noqa: N802
        return 700_000

    def nvmlDeviceGetTotalEnergyConsumption(handle):  # noqa: N802
        if not energy:
            raise not_supported()
        return int(clock() * watts_for_energy * 1000)

    def nvmlDeviceGetPowerUsage(handle):  # noqa: N802
        return power_mw

    def nvmlDeviceGetComputeRunningProcesses(handle):  # noqa: N802
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in (processes or {}).items()]

    for fn in (nvmlInit, nvmlShutdown, nvmlSystemGetDriverVersion, nvmlDeviceGetCount, nvmlDeviceGetHandleByIndex,
               nvmlDeviceGetUUID, nvmlDeviceGetHandleByUUID, nvmlDeviceGetName, nvmlDeviceGetMemoryInfo,
               nvmlDeviceGetCudaComputeCapability, nvmlDeviceGetClockInfo, nvmlDeviceGetMaxClockInfo,
               nvmlDeviceGetPowerManagementLimit, nvmlDeviceGetTotalEnergyConsumption, nvmlDeviceGetPowerUsage,
               nvmlDeviceGetComputeRunningProcesses):
        setattr(fake, fn.__name__, fn)
    return fake
