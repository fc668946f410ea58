"""Images to model-ready batches on worker threads, ahead of the backend: a pipeline, not a loop.

While the caller runs the backend on batch k, a small thread pool decodes and resizes the images of batches k+1 and
k+2 (one `load_crop` per image, through `prepare`; Pillow releases the GIL while it decodes and resamples). Batches
come out in input order, each holding the images that could be used and, for the others, the one-line reason.

    for chunk in chunks(paths, spec, batch_size=16):   # close() it to stop early: the workers stop with it
        logits = backend.run(chunk.batch_or_raise())

Bounded: at most AHEAD batches beyond the one handed out are submitted, so memory holds about three batches of
crops whatever the input's length (an endless camera stream included). `workers=0` is the sequential loop (the
calling thread decodes each batch when it is asked for). The pool lives as long as the generator: an error, an
exhausted input or `close()` cancels what was not started and joins the threads before returning. Nothing is shared
between two generators, so several threads may each iterate their own at once (as `Classifier` does per call).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.runtime.cpu import cpu_info
from promptkd_edge.runtime.preprocess import FrameGroups, PreprocessSpec, frame_of, group_frames, prepare

MAX_DEFAULT_WORKERS = 4
AHEAD = 2  # batches submitted beyond the one the caller holds
THREAD_PREFIX = "pkd-preprocess"


def default_workers() -> int:
    """Decoding threads by default: min(4, the CPU cores this process may use)."""
    return max(1, min(MAX_DEFAULT_WORKERS, cpu_info()["cores"]))


def resolve_workers(workers: int | None) -> int:
    """`workers` as given (0: no threads, decode on the caller's), or `default_workers()` for None."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise PkdError(f"workers must be an integer >= 0 (0: decode on the calling thread), got {workers!r}")
    return workers


@dataclass
class Chunk:
    """One batch of the input: `size` items from position `start`; `batch` is the model-ready batch of those that
    could be used, in order (None when none could); `errors` maps a position in the chunk to why it could not."""

    start: int
    size: int
    batch: np.ndarray | FrameGroups | None  # FrameGroups for a frame graph: the frames grouped by size
    errors: dict[int, str] = field(default_factory=dict)

    def batch_or_raise(self, total: int | None = None) -> np.ndarray | FrameGroups:
        """The batch, or the first item's error as one line: "image i: ..." (i its position in the whole input)
        unless the input held that one image only (`total` == 1)."""
        if self.errors:
            i = min(self.errors)
            raise PkdError(self.errors[i] if total == 1 else f"image {self.start + i}: {self.errors[i]}")
        assert self.batch is not None
        return self.batch


def chunks(items: Iterable[Any], spec: PreprocessSpec, *, input_format: str = "normalized", batch_size: int = 16,
           workers: int | None = None, channel_order: str = "rgb") -> Iterator[Chunk]:
    """Model-ready batches of `items` (paths, PIL images, uint8 arrays in `channel_order`; any iterable, read
    lazily) in order, the next ones prepared on `workers` threads (None: `default_workers()`) while the caller uses
    the current one. A frame graph's batch (input_format "frame") is its whole frames grouped by size."""
    if batch_size < 1:
        raise PkdError(f"batch size must be >= 1, got {batch_size}")
    workers = resolve_workers(workers)
    groups = _groups(items, batch_size)
    load = partial(_load, spec=spec, input_format=input_format, channel_order=channel_order)
    frames = input_format == "frame"
    if workers == 0:
        for start, group in groups:
            yield _assemble(start, [load(item) for item in group], frames)
        return
    yield from _pipelined(groups, load, workers, frames)


def _pipelined(groups: Iterator[tuple[int, list]], load: Callable[[Any], np.ndarray | PkdError],
               workers: int, frames: bool) -> Iterator[Chunk]:
    pool = ThreadPoolExecutor(workers, thread_name_prefix=THREAD_PREFIX)
    pending: deque[tuple[int, list[Future]]] = deque()
    try:
        for start, group in groups:
            pending.append((start, [pool.submit(load, item) for item in group]))
            if len(pending) > AHEAD:
                yield _collect(*pending.popleft(), frames)
        while pending:
            yield _collect(*pending.popleft(), frames)
    finally:  # an error, close() or the end: nothing new starts, running decodes finish, the threads are joined
        for _, futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _groups(items: Iterable[Any], size: int) -> Iterator[tuple[int, list]]:
    it = iter(items)
    for start in itertools.count(0, size):
        group = list(itertools.islice(it, size))
        if not group:
            return
        yield start, group


def _load(item: Any, spec: PreprocessSpec, input_format: str, channel_order: str) -> np.ndarray | PkdError:
    """One item's model-ready input (prepare's per-image `load_crop`, then the input format; a frame graph's: the
    whole frame), or its error."""
    try:
        if input_format == "frame":
            return frame_of(item, channel_order)
        return prepare([item], spec, input_format=input_format, channel_order=channel_order)[0]
    except PkdError as e:
        return e


def _collect(start: int, futures: list[Future], frames: bool) -> Chunk:
    return _assemble(start, [f.result() for f in futures], frames)


def _assemble(start: int, loaded: list[np.ndarray | PkdError], frames: bool) -> Chunk:
    errors = {i: str(x) for i, x in enumerate(loaded) if isinstance(x, PkdError)}
    good = [x for x in loaded if not isinstance(x, PkdError)]
    if not good:
        return Chunk(start, len(loaded), None, errors)
    return Chunk(start, len(loaded), group_frames(good) if frames else np.stack(good), errors)
