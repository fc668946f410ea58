"""The batches a TensorRT plan's parity gate runs: sizes its optimization profiles take, every profile run.

A plan takes a batch only inside one of its profiles' [min, max]: outside the active profile `set_input_shape`
fails (NvInferRuntime.h, IExecutionContext::setInputShape). Servers pick among all of a plan's profiles:
TensorRTBackend the first that holds a batch, Triton's tensorrt_backend the listed profile whose opt shape is
nearest (instance_state.cc, GetMostOptimizedProfile), so any profile may serve requests and each must pass the
gate. The plan of batches here therefore:

- gives every profile, in order, one chunk of parity images (its preferred size, clamped to the profile's range,
  fewer where later profiles would be left without an image) run in that very profile, so a plan whose second
  profile is broken cannot pass;
- puts the images left over in chunks of the preferred size into the profile that takes it (else the one with
  the largest max);
- pads a chunk smaller than its profile's min by repeating its own images; the padded outputs are dropped;
- with fewer parity images than profiles, runs the later profiles on images from the start again: those rows are
  compared against the reference too (they are counted as gated rows), so no profile goes ungated.

It depends only on the profile ranges and the image count, so it is made and checked before the build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from promptkd_edge.errors import PkdError


@dataclass(frozen=True)
class Chunk:
    """One run of the plan: `rows` (parity image indices whose outputs count) padded to `batch`, in `profile`."""

    profile: int
    rows: tuple[int, ...]
    batch: int


def _ranges(profiles: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(min, max) batch of each (min, opt, max) profile."""
    ranges = [(int(p[0]), int(p[-1])) for p in profiles]
    if not ranges or any(not 1 <= lo <= hi for lo, hi in ranges):
        raise PkdError(f"the plan's profiles {list(map(list, profiles))} are not (min, opt, max) batches with "
                       "1 <= min <= max")
    return ranges


def plan_batches(count: int, profiles: Sequence[Sequence[int]], preferred: int) -> list[Chunk]:
    """The gate's chunks for `count` parity images (module docstring)."""
    if count < 1:
        raise PkdError("the TensorRT parity gate needs at least one image")
    ranges = _ranges(profiles)
    preferred = max(1, int(preferred))

    def size(profile: int) -> int:
        lo, hi = ranges[profile]
        return min(max(preferred, lo), hi)

    chunks: list[Chunk] = []
    cursor = 0
    for i, (lo, _hi) in enumerate(ranges):
        if cursor < count:  # leaving an image for each later profile where there are enough
            later = len(ranges) - i - 1
            rows = tuple(range(cursor, cursor + max(1, min(size(i), count - cursor - later))))
            cursor += len(rows)
        else:  # every image is taken: run this profile on images from the start again
            rows = tuple(range(min(size(i), count)))
        chunks.append(Chunk(i, rows, max(len(rows), lo)))
    holding = [i for i, (lo, hi) in enumerate(ranges) if lo <= preferred <= hi]
    main = holding[0] if holding else max(range(len(ranges)), key=lambda i: (ranges[i][1], -i))
    while cursor < count:
        rows = tuple(range(cursor, min(cursor + size(main), count)))
        cursor += len(rows)
        chunks.append(Chunk(main, rows, max(len(rows), ranges[main][0])))
    return chunks


def run_batches(run: Callable[[np.ndarray, int], dict[str, np.ndarray]], arrays: np.ndarray,
                chunks: Sequence[Chunk], on_chunk: Callable[[int], None] | None = None
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(outputs, rows): `run(batch, profile)` on each chunk, padded outputs dropped; `rows[k]` is the parity image
    whose outputs are row k (index the reference with it). `on_chunk(done)` hears the images run so far."""
    outs: dict[str, list[np.ndarray]] = {}
    done = 0
    for chunk in chunks:
        rows = np.asarray(chunk.rows, dtype=np.int64)
        batch = arrays[np.resize(rows, chunk.batch)]  # np.resize repeats the rows: padding by repeating images
        for name, value in run(batch, chunk.profile).items():
            value = np.asarray(value, dtype=np.float32)
            if len(value) != chunk.batch:
                raise PkdError(f"the plan returned {len(value)} rows of {name} for a batch of {chunk.batch}")
            outs.setdefault(name, []).append(value[:len(rows)])
        done += len(rows)
        if on_chunk is not None:
            on_chunk(done)
    order = np.concatenate([np.asarray(c.rows, dtype=np.int64) for c in chunks])
    return {k: np.concatenate(v) for k, v in outs.items()}, order


def describe(chunks: Sequence[Chunk]) -> list[dict[str, int]]:
    """Per profile: how many batches the gate ran in it, the images that count, the largest batch (for the
    manifest's parity entry)."""
    per: dict[int, dict[str, int]] = {}
    for c in chunks:
        d = per.setdefault(c.profile, {"profile": c.profile, "batches": 0, "images": 0, "max_batch": 0})
        d["batches"] += 1
        d["images"] += len(c.rows)
        d["max_batch"] = max(d["max_batch"], c.batch)
    return [per[p] for p in sorted(per)]
