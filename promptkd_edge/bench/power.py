"""Power drawn during a timed section: tegrastats on Jetson (board input rail), nvidia-smi power.draw elsewhere.

`PowerSampler` streams readings from one child process (`tegrastats --interval MS`, or `nvidia-smi ... -lms MS`) in a
background thread and always stops that process when the `with` block ends, also on exceptions.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from promptkd_edge.bench import doctor
from promptkd_edge.bench.environment import cuda_selector

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


def parse_power_draw(line: str) -> float | None:
    """Watts from one `nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits` line ('[N/A]' -> None)."""
    try:
        return float(line.strip().split(",")[0])
    except ValueError:
        return None


def images_per_joule(images_per_s: float, watts: float | None) -> float | None:
    """Images per joule = (images/s) / (J/s); None without a (positive) power reading."""
    if watts is None or watts <= 0:
        return None
    return images_per_s / watts


def _which(name: str) -> str | None:
    """Seam for tests: where a command is, or None."""
    return doctor._which(name)


def _popen(cmd: list[str]) -> subprocess.Popen:
    """Seam for tests: start a sampler process with line-buffered text stdout (stderr merged into it)."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1)


class PowerSampler:
    """Context manager that samples power every `interval_ms` while the block runs.

    `device`: None takes any source; 'cuda...' uses that GPU's nvidia-smi reading; any other device (e.g. 'cpu')
    uses only tegrastats, because nvidia-smi's power.draw measures the GPU board alone.
    After exit: `watts` (mean of the readings, or None), `samples`, `readings` (W), `seconds`, `source`
    ('tegrastats VDD_IN', 'nvidia-smi power.draw', or None) and `reason` (why `watts` is None).
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
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._kind: str | None = None
        self._rail: str | None = None
        self._other: str | None = None
        self._t0 = 0.0
        self.readings: list[float] = []
        self.watts: float | None = None
        self.samples = 0
        self.seconds = 0.0
        self.source: str | None = None
        self.reason: str | None = None

    def _command(self) -> tuple[list[str] | None, str | None]:
        """(command, kind) of the best source, or (None, None) with self.reason set."""
        which = self._which or _which
        exe = which("tegrastats")
        if exe:
            return [exe, "--interval", str(self.interval_ms)], "tegrastats"
        if self.device is not None and not self.device.startswith("cuda"):
            self.reason = f"no tegrastats on PATH (nvidia-smi power.draw is GPU-only, not for device {self.device})"
            return None, None
        exe = which("nvidia-smi")
        if exe:
            return [exe, "--query-gpu=power.draw", "--format=csv,noheader,nounits", "-i",
                    cuda_selector(self.device or "cuda"), "-lms", str(self.interval_ms)], "nvidia-smi"
        self.reason = "no tegrastats or nvidia-smi on PATH"
        return None, None

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if self._kind == "tegrastats":
                    watts, rail = parse_tegrastats(line)
                    if rail is not None:
                        self._rail = rail
                else:
                    watts = parse_power_draw(line)
                if watts is None:
                    self._other = line.strip() or self._other
                else:
                    self.readings.append(watts)
        except (OSError, ValueError):  # the pipe closed under us
            pass

    def __enter__(self) -> PowerSampler:
        self.readings, self.watts, self.samples, self.source, self.reason = [], None, 0, None, None
        self._rail = self._other = None
        cmd, self._kind = self._command()
        self._t0 = time.perf_counter()
        if cmd is None:
            return self
        try:
            self._proc = (self._popen or _popen)(cmd)
        except OSError as e:
            self.reason = f"cannot start {cmd[0]}: {doctor._first_line(e)}"
            return self
        try:
            self._thread = threading.Thread(target=self._read, args=(self._proc,), name="pkd-power", daemon=True)
            self._thread.start()
        except BaseException:
            self._stop()
            raise
        return self

    def _stop(self) -> int | None:
        """Terminate (then kill) the process, join the reader; the exit code if it had ended on its own."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        ended = proc.poll()
        if ended is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_timeout_s)
            self._thread = None
        if proc.stdout is not None:
            proc.stdout.close()
        return ended

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.seconds = time.perf_counter() - self._t0
        had_process = self._proc is not None
        ended = self._stop()
        if not had_process:
            return
        readings = list(self.readings)
        self.samples = len(readings)
        if readings:
            self.watts = sum(readings) / len(readings)
            self.source = f"tegrastats {self._rail}" if self._kind == "tegrastats" else "nvidia-smi power.draw"
            return
        name = self._kind or "sampler"
        detail = f": {self._other[:160]}" if self._other else ""  # e.g. a tegrastats line without rails
        if ended is not None:
            self.reason = f"{name} exited with code {ended} before a reading{detail}"
        else:
            self.reason = f"no {name} power reading in {self.seconds:.2f} s (interval {self.interval_ms} ms){detail}"

    def to_dict(self) -> dict[str, Any]:
        """For reports: {'watts', 'samples', 'interval_ms', 'source', 'reason'}."""
        return {"watts": None if self.watts is None else round(self.watts, 3), "samples": self.samples,
                "interval_ms": self.interval_ms, "source": self.source, "reason": self.reason}
