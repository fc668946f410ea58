"""Class vectors W [C, D_t]: the teacher's L2-normalised text features, computed once and stored.

On disk: `class_vectors.safetensors` (tensor `class_vectors`, fp32) and `classes.json` (names, teacher, template,
logit scale, the tensor file's sha256). Training, evaluation and export all read these two files.

Sigmoid-trained teachers (SigLIP, SigLIP2) score `exp(logit_scale) * cos + logit_bias`. Everything here feeds a
softmax (the KD's KL over softmax(logits / T), zero-shot top-1, the bundle's probabilities), where a bias equal for
every class cancels: the logits are `scale * cos` with the teacher's own scale, and the bias is not stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import CLASSES_FILE, VECTORS_FILE, ClassList, cut_note, validate_class_names
from promptkd_edge.models.teacher import (
    DEFAULT_TEMPLATE,
    Teacher,
    class_prompt,
    load_teacher,
    require_weights,
    teacher_run_file,
)
from promptkd_edge.utils.files import atomic_path, sha256_file, write_json


@dataclass
class ClassVectors:
    names: list[str]
    vectors: torch.Tensor  # [C, D] float32, rows of unit length
    teacher: str
    template: str
    logit_scale: float
    notes: list[str] = field(default_factory=list, compare=False)  # computing them noted (names cut); not stored

    def __post_init__(self) -> None:
        validate_class_names(self.names, "class list")
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.names):
            raise PkdError(f"class vectors of shape {list(self.vectors.shape)} do not match "
                           f"{len(self.names)} class names")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """scale * normalised features @ W^T (features must already be unit vectors)."""
        w = self.vectors.to(device=features.device, dtype=features.dtype)
        return self.logit_scale * features @ w.t()

    def to(self, device: str | torch.device) -> ClassVectors:
        return ClassVectors(self.names, self.vectors.to(device), self.teacher, self.template, self.logit_scale,
                            self.notes)

    def save(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_path(directory / VECTORS_FILE) as tmp:
            save_file({"class_vectors": self.vectors.detach().float().cpu().contiguous()}, str(tmp))
        write_json(directory / CLASSES_FILE, ClassList(
            self.names, self.logit_scale, self.teacher, self.template, VECTORS_FILE,
            sha256_file(directory / VECTORS_FILE), self.dim).to_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ClassVectors:
        """Load from a folder holding classes.json + class_vectors.safetensors (a run or a bundle)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if directory.is_file():
            directory = directory.parent
        meta = ClassList.read(directory)
        vectors_path = directory / meta.vectors_file
        if not vectors_path.is_file():
            raise PkdError(f"class vectors not found: {vectors_path}")
        if meta.vectors_sha256 and sha256_file(vectors_path) != meta.vectors_sha256:
            raise PkdError(f"{vectors_path} was modified after {directory / CLASSES_FILE} was written "
                           "(sha256 mismatch)")
        if meta.teacher is None or meta.template is None:
            raise PkdError(f"{directory / CLASSES_FILE} names no teacher and template: it ships class names for a "
                           "bundle, not the class vectors of a teacher")
        vectors = load_file(str(vectors_path))["class_vectors"].float()
        validate_class_names(meta.names, str(directory / CLASSES_FILE))  # an older run's list: say which file
        return cls(meta.names, vectors, meta.teacher, meta.template, meta.logit_scale)


def compute_class_vectors(teacher: Teacher, names: list[str], template: str = DEFAULT_TEMPLATE) -> ClassVectors:
    """W = normalised teacher text features: `template` filled with each class name (zero-shot teacher) or the
    learned context followed by the name (prompted teacher). Two names whose sentences the teacher's tokenizer
    reads as the same tokens (after its cleaning and the cut to its context) are refused; names cut are in
    `notes`."""
    validate_class_names(names, "class list")
    if not teacher.prompted and "{}" not in template:
        raise PkdError(f"template {template!r} has no '{{}}' where the class name goes")
    keys, cut, context = sentence_tokens(teacher, names, template)
    validate_class_names(names, "class list", keys=keys, cut=cut)
    vectors = teacher.class_text_features(names, template).float().cpu()
    return ClassVectors(names, vectors, teacher.spec, teacher.template if teacher.prompted else template,
                        teacher.logit_scale, [cut_note(names[i], context) for i in cut])


def sentence_tokens(teacher: Teacher, names: list[str], template: str) -> tuple[list[bytes], list[int], int]:
    """(the token ids of each name's sentence as the teacher's tokenizer makes them, cut to its context, one bytes
    key a name; the indices of the names that were cut; the context length)."""
    tokenizer = teacher.clip.tokenizer()
    sentences = teacher.text.sentences(names) if teacher.prompted else [class_prompt(template, n) for n in names]
    rows = tokenizer(sentences)
    context = int(rows.shape[1])
    # one position more: a sentence that reaches it did not fit; "" shows the padding value at that position
    longer = tokenizer([*sentences, ""], context_length=context + 1)
    cut = [i for i in range(len(names)) if longer[i, -1] != longer[-1, -1]]
    return [row.numpy().tobytes() for row in rows], cut, context


def class_vectors_for_run(run: str | os.PathLike, names: list[str], *, device: str | torch.device = "cpu",
                          allow_pickle: bool = False) -> ClassVectors:
    """W for `names` from the teacher of `run`: a `pkd teacher` run (its prompted text tower), or any folder with
    classes.json (a distillation run, a bundle: the zero-shot teacher named there, with its template, so the run's
    own class list gives back exactly its W). A teacher with random weights is refused."""
    run = Path(run)
    existing = ClassVectors.load(run) if (run / CLASSES_FILE).is_file() else None
    is_teacher_run = teacher_run_file(run, strict=False) is not None
    if existing is None and not is_teacher_run:
        raise PkdError(f"{run} is neither a teacher run nor a folder with {CLASSES_FILE}")
    source = str(run.resolve()) if is_teacher_run else existing.teacher
    teacher = load_teacher(source, device=device, allow_pickle=allow_pickle)
    require_weights(teacher, source, "its class vectors")
    template = existing.template if existing is not None and not teacher.prompted else DEFAULT_TEMPLATE
    return compute_class_vectors(teacher, names, template)
