"""Power drawn during a timed section: tegrastats on Jetson (board input rail), NVML for other NVIDIA GPUs.

On Jetson, `PowerSampler` streams `tegrastats --interval MS` from a child process in a background thread and always
stops it when the `with` block ends, also on exceptions. Elsewhere it reads the GPU's NVML energy counter at both
ends of the block (exact joules; Volta and newer), else samples NVML's power reading every interval in a thread.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from promptkd_edge.utils import gpus, system

# Rails that carry the whole module's input power (Orin Nano/NX and Xavier NX: VDD_IN; Nano/TX: POM_5V_IN). Boards
# without one (AGX Orin: VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO; AGX Xavier: GPU, CPU, SOC, CV, VDDRQ,
# SYS5V) report the sum of their rails, as jetson-stats does. VIN_SYS_5V0 alone would leave out the GPU and CPU.
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
# "NAME 5230mW/5230mW" (JetPack 5+) or "NAME 3450/3450" (JetPack 4, mW): current/average. RAM 2345/7772MB etc. do
# not match because a unit other than mW follows the number.
_RAIL = re.compile(r"(?<![\w@\[/])([A-Za-z][A-Za-z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?(?=\s|$)")
STOP_TIMEOUT_S = 2.0


def parse_tegrastats(line: str) -> tuple[float | None, str | None]:
    """(watts, rail) of one tegrastats line: the input rail's current reading, else the sum of all rails; else None.

    For a sum the rail is named 'A+B+C'. Unconnected channels ('NC') are skipped.
    """
    rails = [(name, float(cur)) for name, cur, _avg in _RAIL.findall(line) if name != "NC"]
    if not rails:
        return None, None
    by_name = dict(rails)
    for name in TOTAL_RAILS:
        if name in by_name:
            return by_name[name] / 1000, name
    return sum(mw for _, mw in rails) / 1000, "+".join(name for name, _ in rails)


def images_per_joule(images_per_s: float, watts: float | None) -> float | None:
    """Images per joule = (images/s) / (J/s); None without a (positive) power reading."""
    if watts is None or watts <= 0:
        return None
    return images_per_s / watts


def _popen(cmd: list[str]) -> subprocess.Popen:
    """Seam for tests: start a sampler process with line-buffered text stdout (stderr merged into it)."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)


class _Tegrastats:
    """`tegrastats --interval MS` in a child process, its lines read by a thread."""

    def __init__(self, exe: str, interval_ms: int, popen: Callable[[list[str]], subprocess.Popen],
                 stop_timeout_s: float) -> None:
        self.cmd = [exe, "--interval", str(interval_ms)]
        self.readings: list[float] = []
        self.rail: str | None = None
        self.other: str | None = None  # the last line without a reading
        self._popen, self._stop_timeout_s = popen, stop_timeout_s
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._proc = self._popen(self.cmd)
        try:
            self._thread = threading.Thread(target=self._read, args=(self._proc,), name="pkd-power", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()
            raise

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                watts, rail = parse_tegrastats(line)
                if watts is None:
                    self.other = line.strip() or self.other
                else:
                    self.rail = rail
                    self.readings.append(watts)
        except (OSError, ValueError):  # the pipe closed under us
            pass

    def stop(self) -> int | None:
        """Terminate (then kill) the process, join the reader; the exit code if it had ended on its own."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        ended = proc.poll()
        if ended is None:
            proc.terminate()
            try:
                proc.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=self._stop_timeout_s)
            self._thread = None
        if proc.stdout is not None:
            proc.stdout.close()
        return ended


class _NvmlPower:
    """A GPU's energy counter read at start and stop, else its power reading sampled by a thread."""

    def __init__(self, pynvml: Any, handle: Any, interval_ms: int) -> None:
        self._pynvml, self._handle, self._interval_s = pynvml, handle, interval_ms / 1000
        self.readings: list[float] = []
        self.counter = gpus.energy_mj(pynvml, handle) is not None
        self._start_mj: int | None = None
        self._t0 = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()
        if self.counter:
            self._start_mj = gpus.energy_mj(self._pynvml, self._handle)
            return
        self._thread = threading.Thread(target=self._sample, name="pkd-power", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while True:
            watts = gpus.power_w(self._pynvml, self._handle)
            if watts is not None:
                self.readings.append(watts)
            if self._done.wait(self._interval_s):
                return

    def stop(self) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            self._thread = None
        if self.counter and self._start_mj is not None:
            end_mj, seconds = gpus.energy_mj(self._pynvml, self._handle), time.perf_counter() - self._t0
            if end_mj is not None and seconds > 0:
                self.readings = [(end_mj - self._start_mj) / 1000 / seconds]
            self._start_mj = None


class PowerSampler:
    """Context manager: the mean power drawn while the block runs.

    `device`: None takes any source; 'cuda...' uses that GPU's NVML reading; any other device (e.g. 'cpu') uses only
    tegrastats, because NVML measures the GPU board alone.
    After exit: `watts` (mean power, or None), `samples` (readings; 1 for an energy counter), `readings` (W),
    `seconds`, `source` ('tegrastats VDD_IN', 'nvml energy counter', 'nvml power samples', or None) and `reason`
    (why `watts` is None).
    """

    def __init__(self, interval_ms: int = 100, device: str | None = None, *,
                 which: Callable[[str], str | None] | None = None,
                 popen: Callable[[list[str]], subprocess.Popen] | None = None,
                 stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.interval_ms = max(1, int(interval_ms))
        self.device = device
        self.stop_timeout_s = stop_timeout_s
        self._which = which
        self._popen = popen
        self._source: _Tegrastats | _NvmlPower | None = None
        self._stack = contextlib.ExitStack()
        self._t0 = 0.0
        self.readings: list[float] = []
        self.watts: float | None = None
        self.samples = 0
        self.seconds = 0.0
        self.source: str | None = None
        self.reason: str | None = None

    def _open_source(self) -> _Tegrastats | _NvmlPower | None:
        """The best source here, or None with self.reason set."""
        exe = (self._which or system.which)("tegrastats")
        if exe:
            return _Tegrastats(exe, self.interval_ms, self._popen or _popen, self.stop_timeout_s)
        if self.device is not None and not self.device.startswith("cuda"):
            self.reason = f"no tegrastats on PATH (NVML's power is the GPU's alone, not for device {self.device})"
            return None
        pynvml, why = self._stack.enter_context(gpus.nvml())
        if pynvml is None:
            self.reason = f"no tegrastats on PATH, and {why}"
            return None
        try:
            handle = gpus.nvml_handle(pynvml, gpus.cuda_selector(self.device or "cuda"))
        except (pynvml.NVMLError, ValueError) as e:
            self.reason = f"NVML has no GPU {self.device or 'cuda'}: {system.one_line(e)}"
            return None
        return _NvmlPower(pynvml, handle, self.interval_ms)

    def __enter__(self) -> PowerSampler:
        self.readings, self.watts, self.samples, self.source, self.reason = [], None, 0, None, None
        self._source = self._open_source()
        self._t0 = time.perf_counter()
        if self._source is None:
            self._stack.close()
            return self
        self.readings = self._source.readings  # live while the block runs (sampled sources append to it)
        try:
            self._source.start()
        except OSError as e:
            self.reason = f"cannot start {self._source.cmd[0]}: {system.one_line(e)}"  # only tegrastats raises it
            self._source = None
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self._t0
        source, self._source = self._source, None
        try:
            ended = source.stop() if source is not None else None
        finally:
            self._stack.close()
        if source is None:
            return
        self.readings = list(source.readings)
        self.samples = len(self.readings)
        if self.readings:
            self.watts = sum(self.readings) / len(self.readings)
            self.source = (f"tegrastats {source.rail}" if isinstance(source, _Tegrastats) else
                           "nvml energy counter" if source.counter else "nvml power samples")
        elif isinstance(source, _NvmlPower):
            self.reason = f"no NVML power reading in {self.seconds:.2f} s"
        else:
            detail = f": {source.other[:160]}" if source.other else ""  # e.g. a tegrastats line without rails
            self.reason = (f"tegrastats exited with code {ended} before a reading{detail}" if ended is not None else
                           f"no tegrastats power reading in {self.seconds:.2f} s (interval {self.interval_ms} ms)"
                           f"{detail}")

    def to_dict(self) -> dict[str, Any]:
        """For reports: {'watts', 'samples', 'interval_ms', 'source', 'reason'}."""
        return {"watts": None if self.watts is None else round(self.watts, 3), "samples": self.samples,
                "interval_ms": self.interval_ms, "source": self.source, "reason": self.reason}
