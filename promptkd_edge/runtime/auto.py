"""`backend="auto"` on a CPU: the fastest gated way to run a bundle on this machine, measured once and remembered.

The options are ONNX Runtime on the bundle's graph, OpenVINO on the same graph in f32 (FP32 or INT8 QDQ graphs),
and OpenVINO in bf16 where the bundle records a passing bf16 parity gate and the CPU computes bf16 natively. At the
first load each option is loaded and timed on a few batches of 1 and 8; the one with the lowest time per image
(batch 1 plus batch 8) wins. The choice is cached in the user cache (`backend-choice.json`), keyed by the graph's
sha256, the CPU (model and flags), the library versions and the thread count, so later loads build only the
winner. Every choice says what it picked and why.

The cache is only a hint: an entry of any other shape (hand-edited, written by another version) counts as missing
and is measured and written again. Measuring holds an exclusive lock (`backend-choice.json.lock`), so two first
runs on one machine never time their options under each other's load: the second waits, then finds the first's
entry. One that waits longer than LOCK_TIMEOUT_S measures anyway and does not record what it measured.
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
from promptkd_edge.utils.files import exclusive_lock, read_json, user_cache_dir, write_json

CACHE_FILE = "backend-choice.json"
LOCK_TIMEOUT_S = 300.0  # how long a first run waits for another process's measurement before measuring alone
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _usable(entry: Any, names: dict[str, Option]) -> bool:
    """Whether a cache entry has the shape `_record` writes and names one of these options."""
    if not isinstance(entry, dict) or not isinstance(entry.get("reason"), str):
        return False
    timings, skipped = entry.get("timings", {}), entry.get("skipped", {})
    return (isinstance(entry.get("picked"), str) and entry["picked"] in names
            and isinstance(timings, dict) and all(isinstance(t, dict) and all(map(_is_number, t.values()))
                                                  for t in timings.values())
            and isinstance(skipped, dict) and all(isinstance(v, str) for v in skipped.values()))


def _cached(key: str, names: dict[str, Option]) -> tuple[Any, Choice] | None:
    """The remembered choice for `key`, loaded; None when there is none, it is unusable, or it no longer loads."""
    entry = _read_cache().get(key)
    if not _usable(entry, names):
        return None
    try:
        backend = names[entry["picked"]].load()
    except PkdError:
        return None  # it loaded when measured; measure again
    return backend, Choice(entry["picked"], entry["reason"], entry.get("timings", {}), True, entry.get("skipped", {}))


def _record(key: str, choice: Choice) -> None:
    """Remember a choice (the whole cache rewritten atomically); a cache that cannot be written (read-only home on a
    device) only costs a new probe."""
    try:
        cache = _read_cache()
        cache[key] = {"picked": choice.picked, "reason": choice.reason, "timings": choice.timings,
                      "skipped": choice.skipped, "cpu": cpu_info()["model"],
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
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
    if not use_cache:
        return _measure(options, spec, threads, measure_fn)
    key = cache_key(model_sha256, options, threads, versions)
    by_name = {o.name: o for o in options}
    hit = _cached(key, by_name)
    if hit is not None:
        return hit
    lock = user_cache_dir() / (CACHE_FILE + ".lock")
    with exclusive_lock(lock, LOCK_TIMEOUT_S) as locked:
        hit = _cached(key, by_name) if locked else None  # another process may have measured while we waited
        if hit is not None:
            return hit
        best, choice = _measure(options, spec, threads, measure_fn)
        if locked:
            _record(key, choice)
        else:
            choice.reason += f" (not remembered: {lock} stayed locked by another measurement or cannot be made)"
    return best, choice


def _measure(options: list[Option], spec: TensorInfo, threads: int | None,
             measure_fn: Callable[[Any, dict[str, Any]], dict[str, float]]) -> tuple[Any, Choice]:
    """Load and time each option; keep the fastest loaded, release the others."""
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
    return best, Choice(picked, reason, timings, False, skipped)
