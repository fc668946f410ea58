"""Peak memory of a section: host peak RSS (VmHWM, resettable on Linux), torch's CUDA allocator peak, and the GPU
memory NVML counts for this process.

The host number covers everything in the process (PyTorch, ONNX Runtime, TensorRT, Python objects). torch's number
is its caching allocator only: memory that ONNX Runtime or TensorRT allocate on the GPU is not in it. NVML's number
is all of this process's GPU memory (the CUDA context, every library's allocations) when it was sampled.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from promptkd_edge.utils import gpus

CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) by writing '5' to /proc/self/clear_refs; False where not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
    except OSError:  # no such file (old kernel, gVisor), permissions
        return False
    return True


def _vm_hwm_mib() -> float | None:
    try:
        text = PROC_STATUS.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            parts = line.split()
            try:
                return int(parts[1]) / 1024 if parts[2:3] == ["kB"] else None
            except (IndexError, ValueError):
                return None
    return None


def peak_rss() -> tuple[float | None, bool]:
    """(peak RSS of this process in MiB, whether reset_peak_rss() can reset it); (None, False) when unknown.

    VmHWM from /proc/self/status when there is one; else getrusage's ru_maxrss, the peak since the process started.
    """
    hwm = _vm_hwm_mib()
    if hwm is not None:
        return hwm, True
    try:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None, False
    if maxrss <= 0:
        return None, False
    return (maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024), False  # bytes on macOS, KiB elsewhere


def peak_rss_mib() -> float | None:
    """Peak RSS of this process in MiB (since the last reset_peak_rss(), where that works), or None."""
    return peak_rss()[0]


def _torch_cuda() -> Any | None:
    """torch.cuda when torch is already imported and has initialised CUDA; None otherwise (nothing gets imported).

    An uninitialised CUDA is left alone: initialising it here would create a context and skew what is measured.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_initialized() else None
    except Exception:  # noqa: BLE001
        return None


class PeakMemory:
    """Context manager: host peak RSS and CUDA allocator peak of the `with` block, in MiB.

    After exit: `host_mib` (peak RSS, None when unknown), `host_reset` (True when the peak was reset on entry, so it
    is the block's peak; False means it is the process peak since start), `host_start_mib` (RSS on entry when reset,
    i.e. what was already resident), `gpu_mib` (torch.cuda.max_memory_allocated of the block; None when torch
    has not initialised CUDA) and, with `nvml=True`, `gpu_process_mib`: the most GPU memory NVML counted for this
    process at a `sample()` (None without NVML or where it lists no process, e.g. in a container's PID namespace).
    """

    def __init__(self, nvml: bool = False) -> None:
        self.nvml = nvml
        self.host_mib: float | None = None
        self.host_start_mib: float | None = None
        self.host_reset = False
        self.gpu_mib: float | None = None
        self.gpu_process_mib: float | None = None
        self._stack = contextlib.ExitStack()
        self._pynvml: Any | None = None

    def sample(self) -> None:
        """Read this process's GPU memory on every GPU now (NVML) and keep the largest total seen; call it while
        the backend still holds its memory."""
        if self._pynvml is None:
            return
        pynvml, total = self._pynvml, None
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                used = gpus.process_gpu_mib(pynvml, pynvml.nvmlDeviceGetHandleByIndex(i))
                total = used if total is None else total + (used or 0.0)
        except pynvml.NVMLError:
            return
        if total is not None and (self.gpu_process_mib is None or total > self.gpu_process_mib):
            self.gpu_process_mib = total

    def __enter__(self) -> PeakMemory:
        self.host_mib = self.gpu_mib = self.host_start_mib = self.gpu_process_mib = None
        if self.nvml:
            self._pynvml = self._stack.enter_context(gpus.nvml())[0]
        cuda = _torch_cuda()
        if cuda is not None:
            try:
                cuda.synchronize()
                cuda.reset_peak_memory_stats()
            except Exception:  # noqa: BLE001
                pass
        self.host_reset = reset_peak_rss()
        start, resettable = peak_rss()
        self.host_reset = self.host_reset and resettable
        self.host_start_mib = start if self.host_reset else None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.sample()
        self._pynvml = None
        self._stack.close()
        self.host_mib = peak_rss_mib()
        cuda = _torch_cuda()
        if cuda is not None:
            try:
                cuda.synchronize()
                # CUDA initialised inside the block starts from zero stats, so its peak is the block's too
                self.gpu_mib = cuda.max_memory_allocated() / 2**20
            except Exception:  # noqa: BLE001
                self.gpu_mib = None

    def to_dict(self) -> dict[str, Any]:
        """For reports: host_peak_mib, host_peak_scope ('section' or 'process'), host_start_mib, gpu_peak_mib
        (torch's allocator)."""
        return {"host_peak_mib": None if self.host_mib is None else round(self.host_mib, 1),
                "host_peak_scope": "section" if self.host_reset else "process",
                "host_start_mib": None if self.host_start_mib is None else round(self.host_start_mib, 1),
                "gpu_peak_mib": None if self.gpu_mib is None else round(self.gpu_mib, 1)}
