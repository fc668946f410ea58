"""A CPU's peak arithmetic rate per precision: cores x clock x (FLOP per cycle per core of its widest units).

Per cycle per core, from the CPU flags (vendor figures; the number of FMA units per core is an assumption, since no
flag says it: two, as on server Xeons and Zen 5, halve them for one):
- fp32: AVX-512 2 FMA units x 16 lanes x 2 = 64; AVX2 + FMA 2 x 8 x 2 = 32; else 8 (SSE).
- bf16: AMX 1024 (Intel: 1024 BF16 FLOP/cycle/core); AVX512_BF16 2 x 16 pairs x 2 x 2 = 128; else the fp32 rate.
- int8: AMX 2048 OP/cycle/core; AVX512_VNNI 2 x 64 x 2 = 256; AVX_VNNI 128; else twice the fp32 rate.
The clock is the highest the kernel reports (turbo: a ceiling, not what all cores hold); without cpufreq (VMs) it is
/proc/cpuinfo's nominal clock, which turbo exceeds, and the basis says so.
"""

from __future__ import annotations

from typing import Any

from promptkd_edge.runtime.cpu import cpu_info


def per_cycle(flags: set[str]) -> dict[str, tuple[int, str]]:
    """{precision: (FLOP per cycle per core, the unit it assumes)}."""
    if "avx512f" in flags:
        fp32 = (64, "AVX-512 FMA, 2 units x 16 lanes x 2")
    elif "avx2" in flags and "fma" in flags:
        fp32 = (32, "AVX2 FMA, 2 units x 8 lanes x 2")
    else:
        fp32 = (8, "SSE, 4 lanes x 2")
    if "amx_bf16" in flags:
        bf16 = (1024, "AMX BF16 tiles")
    elif "avx512_bf16" in flags:
        bf16 = (128, "AVX512_BF16 dot products, 2 units x 16 pairs x 2 x 2")
    else:
        bf16 = (fp32[0], "no native bf16: the fp32 rate")
    if "amx_int8" in flags:
        int8 = (2048, "AMX INT8 tiles")
    elif "avx512_vnni" in flags:
        int8 = (256, "AVX512_VNNI, 2 units x 64 x 2")
    elif "avx_vnni" in flags:
        int8 = (128, "AVX_VNNI, 2 units x 32 x 2")
    else:
        int8 = (2 * fp32[0], "no VNNI: twice the fp32 rate")
    return {"fp32": fp32, "bf16": bf16, "int8": int8}


def cpu_peaks(cores: int, info: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{precision: {"tflops", "basis"}} for `cores` cores of this CPU (empty when the clock is unknown)."""
    info = info or cpu_info()
    mhz = info.get("max_mhz")
    if not mhz:
        return {}
    clock = f"{mhz / 1000:.2f} GHz" + ("" if info.get("mhz_from", "cpufreq") == "cpufreq" else
                                        " (cpuinfo's clock, no cpufreq here: turbo may exceed it, and the share 100 %)")
    out = {}
    for precision, (flop, unit) in per_cycle(set(info["flags"])).items():
        tflops = cores * mhz * 1e6 * flop / 1e12
        out[precision] = {"tflops": round(tflops, 3),
                          "basis": f"{cores} cores x {clock} x {flop} {precision} FLOP/cycle ({unit})"}
    return out
