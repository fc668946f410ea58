"""Timing that can be trusted: warm-up, then timed calls; percentiles by linear interpolation (numpy's default)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Latencies in milliseconds of calls that each process `batch` images; statistics computed once."""

    batch: int
    samples_ms: list[float]
    p50: float = field(init=False)
    p90: float = field(init=False)
    p99: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.samples_ms:
            raise ValueError("a Timing needs at least one sample")
        p50, p90, p99 = np.percentile(self.samples_ms, [50, 90, 99])
        object.__setattr__(self, "p50", float(p50))
        object.__setattr__(self, "p90", float(p90))
        object.__setattr__(self, "p99", float(p99))

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def images_per_s(self) -> float:
        """Throughput at the median latency."""
        return 1000.0 * self.batch / self.p50

    def to_dict(self) -> dict:
        return {"batch": self.batch, "iterations": len(self.samples_ms), "p50_ms": self.p50, "p90_ms": self.p90,
                "p99_ms": self.p99, "mean_ms": self.mean, "min_ms": min(self.samples_ms),
                "images_per_s": self.images_per_s}


def time_calls(fn: Callable[[], object], batch: int, *, warmup: int = 3, iterations: int = 20,
               min_seconds: float = 0.0, max_seconds: float = float("inf"),
               clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None,
               timer: Callable[[Callable[[], object]], float] | None = None) -> Timing:
    """Call `fn` `warmup` times untimed, then at least `iterations` times (and for at least `min_seconds`, at
    most `max_seconds` once 3 samples exist), timing each call; `sync` (e.g. torch.cuda.synchronize) runs
    before each clock read so asynchronous work is counted. `timer(fn) -> ms` times a call on the device
    instead (CUDA events)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples: list[float] = []
    started = clock()
    while True:
        if timer is not None:
            samples.append(float(timer(fn)))
        else:
            t0 = clock()
            fn()
            if sync:
                sync()
            samples.append((clock() - t0) * 1000.0)
        elapsed = clock() - started
        if len(samples) >= 3 and elapsed >= max_seconds:
            break
        if len(samples) >= iterations and elapsed >= min_seconds:
            break
    return Timing(batch, samples)
