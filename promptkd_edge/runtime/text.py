"""Class vectors on the device: a bundle's text encoder (export --text-encoder) turns class names into W, torch-free.

    clf = Classifier.from_bundle("bundle/").with_class_names(["red fox", "polar bear"])

Each name goes into the sentence the run's class vectors came from (the template, or the prompted teacher's learned
context), is tokenized with the bundle's tokenizer and encoded by `text/encoder.onnx` on ONNX Runtime or OpenVINO
(FP16 on a GPU provider where its gate passed). A name longer than the context is cut, with a note; two names
that give the same tokens are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import check_labels, cut_note, name_list, validate_class_names
from promptkd_edge.runtime.bundle import Bundle
from promptkd_edge.runtime.tokenizer import cut_after_longest, load_bundle_tokenizer

BATCH = 64


class TextEncoder:
    """Names -> unit class vectors [N, D] with the bundle's text encoder."""

    def __init__(self, bundle: Bundle, backend: str = "onnxruntime", *, providers: str | list[str] = "cpu",
                 threads: int | None = None):
        entry = bundle.manifest.text_encoder
        if entry is None:
            raise PkdError(f"bundle {bundle.path} has no text encoder: export it with --head embeddings (or both) "
                           "--text-encoder to name classes on the device")
        spec = entry.tokenizer
        self.tokenizer = load_bundle_tokenizer(bundle.path, spec)
        self.sentence = entry.sentence
        self.cut_after_longest_end = bool(spec.get("cut_after_longest_end", False))
        passed = entry.passed()
        if "fp32" not in passed:
            raise PkdError(f"the text encoder of {bundle.path} failed its parity gate at export")
        self.output = entry.output
        file = entry.files["fp32"]
        if backend == "openvino":
            from promptkd_edge.runtime.openvino_backend import OpenVinoBackend

            self.backend: Any = OpenVinoBackend(bundle.path / file, threads=threads)
        else:
            from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

            self.backend = OnnxRuntimeBackend(bundle.path / file, providers=providers, threads=threads)
            if self.backend.device == "cuda" and "fp16" in passed:  # FP16 on a GPU, where its gate passed
                self.backend.close()
                file = entry.files["fp16"]
                self.backend = OnnxRuntimeBackend(bundle.path / file, providers=providers, threads=threads,
                                                  precision="fp16")
        self.description = f"{self.backend.description}, {file}"

    def sentences(self, names: Sequence[str]) -> list[str]:
        return [self.sentence.format(name.replace("_", " ")) for name in names]

    def encode(self, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(W [len(names), D] float32 with unit rows, notes: the names cut to fit the context)."""
        names = name_list(names, "class names")
        check_labels(names, "class names")
        tokens, cut = self.tokenizer.tokenize(self.sentences(names))
        # two names the encoder reads as the same tokens (after cleaning and the cut) would get the same vector
        validate_class_names(names, "class names", keys=[row.tobytes() for row in tokens], cut=cut)
        notes = [cut_note(names[i], self.tokenizer.context_length) for i in cut]
        parts = [self.backend.run(self._cut(tokens[i:i + BATCH]))[self.output] for i in range(0, len(tokens), BATCH)]
        vectors = np.concatenate(parts).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), notes

    def _cut(self, tokens: np.ndarray) -> np.ndarray:
        """Where the encoder allows it (a causal tower pooling at the end token), the batch cut after its longest
        text: what follows the end token changes nothing, and a class name is ~10 of 77 tokens."""
        return cut_after_longest(tokens, self.tokenizer.end_id) if self.cut_after_longest_end else tokens

    def close(self) -> None:
        self.backend.close()
