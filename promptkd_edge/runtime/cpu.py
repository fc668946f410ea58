"""This machine's CPU as far as speed is concerned: model name, core count, clock, and the SIMD/matrix flags that
decide which kernels run (AVX2, AVX-512, VNNI, BF16, AMX). Linux /proc/cpuinfo; elsewhere what `platform` says."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
# the flags that change which kernels ONNX Runtime / OpenVINO pick, in the order they are usually listed
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "i8mm", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """{"model", "cores" (usable by this process), "flags" (all), "speed_flags" (those of SPEED_FLAGS present),
    "max_mhz" (None when unknown), "mhz_from" (cpufreq, or cpuinfo's current clock)}."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    model = None
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            model = m.group(1).strip()
            break
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    flags = sorted(set(m.group(1).split())) if m else []
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return {"model": model or platform.processor() or platform.machine() or "unknown", "cores": cores,
            "flags": flags, "speed_flags": [f for f in SPEED_FLAGS if f in flags], "max_mhz": _max_mhz(text),
            "mhz_from": "cpufreq" if CPUFREQ_MAX.is_file() else "cpuinfo"}


def _max_mhz(cpuinfo: str) -> float | None:
    """The highest clock the kernel reports (cpufreq's maximum, else the fastest `cpu MHz` line: in a VM without
    cpufreq that is the nominal clock, which turbo exceeds)."""
    try:
        return int(CPUFREQ_MAX.read_text()) / 1000
    except (OSError, ValueError):
        pass
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)$", cpuinfo, re.MULTILINE)]
    return max(mhz) if mhz else None


def cpu_fingerprint() -> str:
    """Model name and every flag, hashed: what a cached speed measurement on this CPU is keyed by."""
    info = cpu_info()
    return hashlib.sha256(f"{info['model']}|{' '.join(info['flags'])}".encode()).hexdigest()[:16]
