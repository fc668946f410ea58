"""`backend="auto"` on a CPU: the fastest gated way to run a bundle on this machine, measured once and remembered.

The options are ONNX Runtime on the bundle's graph, OpenVINO on the same graph in f32 (FP32 or INT8 QDQ graphs),
and OpenVINO in bf16 where the bundle records a passing bf16 parity gate and the CPU computes bf16 natively. At the
first load each option is loaded and timed on a few batches of 1 and 8; the one with the lowest time per image
(batch 1 plus batch 8) wins. The choice is cached in the user cache (`backend-choice.json`), keyed by the graph's
sha256, the CPU (model and flags), the library versions and the thread count, so later loads build only the
winner. Every choice says what it picked and why.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import TensorInfo
from promptkd_edge.runtime.cpu import cpu_fingerprint, cpu_info
from promptkd_edge.utils.files import read_json, user_cache_dir, write_json

CACHE_FILE = "backend-choice.json"
PROBE_BATCHES = (1, 8)
PROBE_CALLS = {1: 3, 8: 2}  # timed calls per batch size, after one untimed call each


@dataclass
class Option:
    """One way to run the bundle here: a name (`onnxruntime`, `openvino-fp32`, `openvino-bf16`) and its loader."""

    name: str
    load: Callable[[], Any]
    gate: str  # which parity entry vouches for it


@dataclass
class Choice:
    """What `auto` picked and why; `timings` are ms per image at each probed batch size."""

    picked: str
    reason: str
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    cached: bool = False
    skipped: dict[str, str] = field(default_factory=dict)  # option -> why it could not load

    def to_dict(self) -> dict[str, Any]:
        return {"picked": self.picked, "reason": self.reason, "timings_ms_per_image": self.timings,
                "cached": self.cached, "skipped": self.skipped}


def probe_input(spec: TensorInfo, batch: int) -> np.ndarray:
    """A model-ready batch for the graph input `spec` (values do not change the speed)."""
    shape = [batch, *spec.shape[1:]]
    rng = np.random.default_rng(0)
    if spec.dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(spec.dtype)


def measure(backend: Any, spec: TensorInfo) -> dict[str, float]:
    """ms per image at each PROBE_BATCHES size: the median of a few calls after an untimed one."""
    out = {}
    for batch in PROBE_BATCHES:
        x = probe_input(spec, batch)
        backend.run(x)
        times = []
        for _ in range(PROBE_CALLS[batch]):
            t = time.perf_counter()
            backend.run(x)
            times.append(time.perf_counter() - t)
        out[str(batch)] = 1000 * statistics.median(times) / batch
    return out


def score(timings: dict[str, float]) -> float:
    return sum(timings.values())


def cache_key(model_sha256: str, options: list[Option], threads: int | None, versions: dict[str, str | None]
              ) -> str:
    what = {"model": model_sha256, "cpu": cpu_fingerprint(), "options": [o.name for o in options],
            "threads": threads, "versions": versions}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def _read_cache() -> dict[str, Any]:
    try:
        return read_json(user_cache_dir() / CACHE_FILE)
    except (PkdError, OSError):
        return {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    """Remember a choice; a cache that cannot be written (read-only home on a device) only costs a new probe."""
    try:
        cache = _read_cache()
        cache[key] = entry
        write_json(user_cache_dir() / CACHE_FILE, cache)
    except (PkdError, OSError):
        pass


def choose(options: list[Option], spec: TensorInfo, *, model_sha256: str, threads: int | None,
           versions: dict[str, str | None],
           measure_fn: Callable[[Any, dict[str, Any]], dict[str, float]] | None = None,
           use_cache: bool = True) -> tuple[Any, Choice]:
    """(the loaded backend, the Choice) among `options` (at least one). `measure_fn` (default `measure`) is
    injectable for tests."""
    measure_fn = measure_fn or measure
    if not options:
        raise PkdError("no backend can run this bundle here")
    if len(options) == 1:
        return options[0].load(), Choice(options[0].name, "the only gated option on this CPU")
    key = cache_key(model_sha256, options, threads, versions)
    by_name = {o.name: o for o in options}
    if use_cache:
        entry = _read_cache().get(key)
        if entry and entry.get("picked") in by_name:
            try:
                backend = by_name[entry["picked"]].load()
            except PkdError:
                pass  # it loaded when measured; measure again
            else:
                return backend, Choice(entry["picked"], entry["reason"], entry.get("timings", {}), True,
                                       entry.get("skipped", {}))
    best, picked, timings, skipped = None, "", {}, {}
    for option in options:  # one option loaded at a time besides the fastest so far: peak memory of two
        try:
            backend = option.load()
        except PkdError as e:
            skipped[option.name] = str(e)
            continue
        timings[option.name] = {k: round(v, 3) for k, v in measure_fn(backend, spec).items()}
        if best is None or score(timings[option.name]) < score(timings[picked]):
            if best is not None:
                best.close()
            best, picked = backend, option.name
        else:
            backend.close()
    if best is None:
        raise PkdError("no backend could load this bundle: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    reason = (f"fastest of {len(timings)} gated options on {cpu_info()['model']} ({threads or 'all'} threads), "
              "ms/image at batch " + "/".join(str(b) for b in PROBE_BATCHES) + ": "
              + ", ".join(f"{n} {'/'.join(f'{v:.3g}' for v in t.values())}"
                          for n, t in sorted(timings.items(), key=lambda kv: score(kv[1]))))
    choice = Choice(picked, reason, timings, False, skipped)
    if use_cache:
        _write_cache(key, {"picked": picked, "reason": reason, "timings": timings, "skipped": skipped,
                           "cpu": cpu_info()["model"], "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    return best, choice
