"""`Classifier`: what an app embeds. A bundle in, top-k labels and probabilities out.

    from promptkd_edge.runtime import Classifier
    clf = Classifier.from_bundle("bundle/")   # a TensorRT plan built for this GPU, else the fastest gated CPU option
    for p in clf.predict(["a.jpg", pil_image, uint8_array], top_k=3):
        print(p.label, p.probability)

Imports no torch (unless backend="torch"). Safe to call from several threads at once.

backend="auto": a TensorRT plan of the bundle built for this TensorRT and GPU; else ONNX Runtime on a GPU provider
when one loads; else the fastest CPU option the bundle's gates vouch for (ONNX Runtime, OpenVINO f32, OpenVINO bf16),
measured once per machine and cached (runtime/auto.py). `description` and `choice` say what runs and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.runtime.backends import Backend, LoadOptions, check_options, load_backend
from promptkd_edge.runtime.bundle import Bundle, open_bundle
from promptkd_edge.runtime.pipeline import Chunk, chunks
from promptkd_edge.runtime.preprocess import (
    FrameGroups,
    check_channel_order,
    decode_for,
    frame_groups,
    prepare,
)


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image, most probable first."""

    labels: list[str]
    probabilities: list[float]
    indices: list[int]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict[str, Any]:
        return {"labels": self.labels, "probabilities": self.probabilities, "indices": self.indices}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def best_k(logits: np.ndarray, names: Sequence[str], k: int) -> list[Prediction]:
    """Predictions from logits [N, C] (softmax over all classes, then the k best)."""
    probs = softmax(logits.astype(np.float64))
    k = max(1, min(k, probs.shape[1]))
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [Prediction([names[i] for i in row], [float(p[i]) for i in row], [int(i) for i in row])
            for row, p in zip(best, probs, strict=True)]


class Classifier:
    """A bundle with a backend: `predict` (top-k labels), `logits`, `embed` (unit features)."""

    def __init__(self, bundle: Bundle, backend: Backend, notes: list[str] | None = None, choice: Any = None,
                 channel_order: str = "rgb", *, exact_preprocess: bool = False):
        self.bundle, self.backend = bundle, backend
        self.channel_order = check_channel_order(channel_order)  # of the HxWx3 arrays given: rgb or bgr
        self.notes = list(notes or [])
        decode, decode_notes = decode_for(bundle.manifest.passed_gates(), exact=exact_preprocess,
                                          gpu=backend.device == "cuda")
        self.preprocess = replace(bundle.preprocess, decode=decode)
        self.notes += decode_notes
        self.class_names = list(bundle.class_names)
        self._vectors = bundle.class_vectors
        self._scale = bundle.logit_scale
        self.choice = choice  # runtime.auto.Choice when backend="auto" measured the CPU options
        self._text = None  # runtime.text.TextEncoder, loaded by the first with_class_names
        self._own_classes = True  # False after with_classes: the graph's own logits no longer apply
        self.workers: int | None = None  # decoding threads per call (None: min(4, usable CPUs); 0: the caller's)
        if backend.fell_back_to_cpu:
            self.notes.append("ONNX Runtime fell back to CPU: the GPU provider did not load "
                              "(check CUDA/cuDNN libraries with `pkd doctor`)")

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, backend: str = "auto", *, providers: str | list[str] = "auto",
                    threads: int | None = None, device_id: int = 0, allow_invalid: bool = False,
                    precision: str | None = None, probe: bool = True, hint: str = "latency",
                    exact_preprocess: bool = False, channel_order: str = "rgb") -> Classifier:
        """Open and verify a bundle (sha256 of every file) and load it on `backend`: "auto" (see the module
        docstring), "onnxruntime", "openvino", "tensorrt" or "torch". `precision` forces OpenVINO's inference
        precision ("fp32" or "bf16"; by default bf16 only where the bundle's bf16 gate passed). `probe=False`
        makes "auto" on a CPU take ONNX Runtime without measuring. `hint` is OpenVINO's: "latency" (one call
        uses every thread) or "throughput" (parallel streams, for many threads calling at once).
        `exact_preprocess` decodes JPEG files in full as open_clip does, not by the faster decode the bundle's gate
        passed (runtime/preprocess.py `decode_for`; `preprocess.decode` says which runs). `channel_order`: of the
        uint8 HxWx3 arrays given, "rgb" or "bgr" (OpenCV's and GStreamer's frames)."""
        check_channel_order(channel_order)
        backend = check_options(backend, precision, hint)
        bundle = open_bundle(path, allow_invalid=allow_invalid)
        opts = LoadOptions(providers, threads, device_id, precision, hint, probe)
        loaded, choice = load_backend(backend, bundle, opts)
        return cls(bundle, loaded, opts.notes, choice, channel_order, exact_preprocess=exact_preprocess)

    @property
    def description(self) -> str:
        return self.backend.description + (" (auto)" if self.choice is not None else "")

    @property
    def input_format(self) -> str:
        return self.bundle.model.input_format

    def inputs(self, images: Sequence[Any]) -> np.ndarray | FrameGroups:
        """Model-ready batch for `images` (paths, PIL images, uint8 HxWx3 arrays in `channel_order`); for a frame
        bundle the whole frames, grouped by size (FrameGroups, which `run` takes)."""
        if self.input_format == "frame":
            return frame_groups(images, self.channel_order)
        return prepare(images, self.preprocess, input_format=self.input_format, channel_order=self.channel_order)

    def run(self, batch: np.ndarray | FrameGroups) -> dict[str, np.ndarray]:
        """The backend on a model-ready batch, after checking its shape and dtype against the manifest; FrameGroups
        run a batch per frame size, outputs back in input order."""
        if isinstance(batch, FrameGroups):
            return self._run_groups(batch)
        spec = self.bundle.model.inputs[0]
        expected = list(spec.shape[1:])
        fixed = [d if isinstance(d, int) else s for d, s in zip(expected, batch.shape[1:], strict=False)]
        if batch.ndim != len(spec.shape) or list(batch.shape[1:]) != fixed or len(batch) == 0 or 0 in batch.shape:
            raise PkdError(f"input of shape {list(batch.shape)}; this model takes [batch, "
                           f"{', '.join(str(d) for d in expected)}] {spec.dtype} ({spec.layout or ''})")
        if batch.dtype != np.dtype(spec.dtype):
            raise PkdError(f"input of dtype {batch.dtype}; this model takes {spec.dtype}")
        return self.backend.run(batch)

    def _run_groups(self, frames: FrameGroups) -> dict[str, np.ndarray]:
        outs: dict[str, np.ndarray] = {}
        for positions, batch in frames.groups:
            self._check_frame_profile(positions[0], batch.shape[1:3])
            for name, value in self.run(batch).items():
                if name not in outs:
                    outs[name] = np.empty((frames.count, *value.shape[1:]), dtype=value.dtype)
                outs[name][positions] = value
        return outs

    def _check_frame_profile(self, index: int, size: tuple[int, ...]) -> None:
        """A TensorRT plan takes the frame sizes its profiles were built for (the engine record's frame_sizes)."""
        limits = self.backend.frame_sizes
        if limits and not all(lo <= s <= hi for lo, s, hi in zip(limits[0], size, limits[2], strict=True)):
            (h0, w0), _, (h1, w1) = limits
            raise PkdError(f"image {index}: a {size[1]}x{size[0]} frame is outside the TensorRT plan's frame "
                           f"profile ({w0}x{h0} to {w1}x{h1}); rebuild the plan with --trt-frame-sizes")

    def _batch(self, batch_size: int) -> int:
        """`batch_size`, capped by what the backend takes (a TensorRT plan's largest profile)."""
        return max(1, min(batch_size, self.backend.max_batch or batch_size))

    def prepared(self, images: Iterable[Any], batch_size: int = 16, *, workers: int | None = None
                 ) -> Iterator[Chunk]:
        """Model-ready batches of `images` in order (runtime/pipeline.py): the next ones decoded and resized on
        `workers` threads (None: `self.workers`, else min(4, usable CPUs); 0: on the calling thread) while the
        caller runs the current one. Close the generator when stopping early (its threads stop with it)."""
        return chunks([images] if _one_image(images) else images, self.preprocess, input_format=self.input_format,
                      batch_size=self._batch(batch_size), workers=self.workers if workers is None else workers,
                      channel_order=self.channel_order)

    def logits_of(self, batch: np.ndarray) -> np.ndarray:
        """Logits [N, C] of a model-ready batch, at the teacher's logit scale."""
        res = self.run(batch)
        if "logits" in res and self._own_classes:
            return res["logits"]
        return self._scale * res["embeddings"] @ self._require_vectors().T

    def logits(self, images: Sequence[Any], batch_size: int = 16, *, workers: int | None = None) -> np.ndarray:
        """Logits [N, C] at the teacher's logit scale. `workers`: see `prepared`."""
        return np.concatenate(list(self._per_batch(images, batch_size, workers, self.logits_of))).astype(np.float32)

    def embed(self, images: Sequence[Any], batch_size: int = 16, *, workers: int | None = None) -> np.ndarray:
        """Unit-length image features [N, D] in the teacher's space (bundles exported with --head embeddings
        or both). `workers`: see `prepared`."""
        if "embeddings" not in self.bundle.model.output_names:
            raise PkdError("this bundle outputs logits only; export it with --head embeddings or --head both "
                           "to get embeddings")
        return np.concatenate(list(self._per_batch(images, batch_size, workers,
                                                   lambda b: self.run(b)["embeddings"])))

    def predict(self, images: Sequence[Any], top_k: int = 5, batch_size: int = 16, *, workers: int | None = None
                ) -> list[Prediction]:
        """Top-k labels and probabilities per image, in input order. `workers`: see `prepared`."""
        return best_k(self.logits(images, batch_size, workers=workers), self.class_names, top_k)

    def _per_batch(self, images: Sequence[Any], batch_size: int, workers: int | None,
                   fn: Callable[[np.ndarray], np.ndarray]) -> Iterator[np.ndarray]:
        """`fn` of each model-ready batch of `images`, in order; an image that cannot be used raises its one-line
        error ("image i: ...") and stops the workers."""
        items = _items(images)
        with closing(self.prepared(items, batch_size, workers=workers)) as batches:
            for chunk in batches:
                yield fn(chunk.batch_or_raise(len(items)))

    def with_classes(self, names: Sequence[str], vectors: np.ndarray, logit_scale: float | None = None
                     ) -> Classifier:
        """The same model with another class list (bundles with --head embeddings or both): W [C, D], unit rows."""
        from promptkd_edge.formats.classes import name_list, validate_class_names

        names = name_list(names, "class names")
        validate_class_names(names, "class names")
        if "embeddings" not in self.bundle.model.output_names:
            raise PkdError("the class vectors of this bundle are inside its graph; export with --head embeddings "
                           "(or both) to swap class lists at run time")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(names) or vectors.shape[1] != self.bundle.model.embedding_dim:
            raise PkdError(f"class vectors of shape {list(vectors.shape)} do not fit {len(names)} names and "
                           f"dimension {self.bundle.model.embedding_dim}")
        other = Classifier(self.bundle, self.backend, self.notes, self.choice, self.channel_order)
        other.preprocess, other.notes = self.preprocess, list(self.notes)
        other.class_names, other._vectors, other._own_classes = names, vectors, False
        other.workers = self.workers
        other._scale = self._scale if logit_scale is None else float(logit_scale)
        return other

    def with_class_names(self, names: Sequence[str]) -> Classifier:
        """The same model classifying into `names`, their class vectors computed here by the bundle's text encoder
        (`pkd export --text-encoder`) in the sentence the run's vectors came from. Names cut to fit the text
        context are listed in `notes`. `names` is a list (a string is refused, not read one class a character);
        names the text encoder cannot tell apart are refused."""
        from promptkd_edge.formats.classes import name_list, validate_class_names

        names = name_list(names, "class names")
        validate_class_names(names, "class names")
        if self._text is None:
            import onnxruntime

            from promptkd_edge.runtime.text import TextEncoder

            # on a GPU box the text tower runs on ONNX Runtime's CUDA provider where this build has it (TensorRT
            # is not built for it), else on the CPU: once per class list
            cuda = self.backend.device == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
            kind = "openvino" if self.backend.name == "openvino" else "onnxruntime"
            self._text = TextEncoder(self.bundle, kind, providers="cuda" if cuda else "cpu")
        vectors, notes = self._text.encode(names)
        other = self.with_classes(names, vectors)
        other._text = self._text
        other.notes += notes
        return other

    def _require_vectors(self) -> np.ndarray:
        if self._vectors is None:
            raise PkdError("this bundle ships no class vectors")
        return self._vectors

    def close(self) -> None:
        self.backend.close()
        if self._text is not None:
            self._text.close()


def _one_image(images: Any) -> bool:
    """A path, a PIL image or one HxW(x3) array rather than a collection of them."""
    return isinstance(images, str | os.PathLike) or (isinstance(images, np.ndarray) and images.ndim <= 3) \
        or hasattr(images, "convert")


def _items(images: Sequence[Any]) -> Sequence[Any]:
    """`images` as a sequence (one path, PIL image or array: a batch of one); none is an error."""
    if _one_image(images):
        images = [images]
    if len(images) == 0:
        raise PkdError("no images given")
    return images
