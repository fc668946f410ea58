"""`pkd eval`: top-1 of the distilled student (and the teacher) on a labeled ImageFolder, their agreement, and
the base-to-novel protocol of the PromptKD paper: base = the first ceil(N/2) classes by class id, base images
scored against W[base], novel images against W[novel], and the harmonic mean of the two."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from promptkd_edge.data.datasets import LabeledViews, collate_skipping_bad
from promptkd_edge.data.listing import LabeledImages
from promptkd_edge.errors import PkdError
from promptkd_edge.models.class_vectors import ClassVectors
from promptkd_edge.models.openclip import Preprocess
from promptkd_edge.models.student import load_student
from promptkd_edge.models.teacher import TEACHER_FILE, load_teacher
from promptkd_edge.utils.progress import NullProgress, Progress

Scorer = Callable[[torch.Tensor], torch.Tensor]  # model-ready images -> logits [B, C]


def base_classes(n: int) -> int:
    """The base split of the base-to-novel protocol: the first ceil(N/2) classes by class id."""
    return math.ceil(n / 2)


@dataclass
class EvalResult:
    images: int
    classes: int
    top1: dict[str, float]  # model -> all-class top-1 in [0, 1]
    base: dict[str, float] = field(default_factory=dict)  # model -> top-1 of base images among base classes
    novel: dict[str, float] = field(default_factory=dict)
    hm: dict[str, float] = field(default_factory=dict)  # harmonic mean of base and novel
    agreement: dict[str, float] = field(default_factory=dict)  # "a vs b" -> fraction of equal all-class top-1
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (path, why it is unreadable)
    class_names: list[str] = field(default_factory=list)  # the run's class list: base = its first half
    skipped_links: int = 0  # symlink loops / duplicate links the folder scan skipped (each real image scored once)

    def to_dict(self) -> dict:
        return {"images": self.images, "classes": self.classes, "base_classes": base_classes(self.classes),
                "top1": self.top1, "base": self.base, "novel": self.novel, "hm": self.hm,
                "agreement": self.agreement, "bad_images": len(self.bad_images),
                "skipped_links": self.skipped_links,
                "base_class_names": self.class_names[:base_classes(self.classes)],
                "unreadable": [{"path": p, "reason": why} for p, why in self.bad_images]}


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


@torch.no_grad()
def predict(labeled: LabeledImages, models: dict[str, tuple[Preprocess, Scorer]], *, device: torch.device,
            batch_size: int = 64, workers: int = 2, progress: Progress | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[tuple[str, str]]]:
    """Labels and each model's logits [N, C] over `labeled` (unreadable images skipped and listed)."""
    progress = progress or NullProgress()
    names = list(models)
    dataset = LabeledViews(labeled.samples, [models[n][0] for n in names])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_bad)
    labels, logits, bad = [], {n: [] for n in names}, []
    update = progress.task("evaluating", len(dataset))
    done = 0
    for batch in loader:
        bad += batch["bad"]
        done += batch["size"] + len(batch["bad"])
        update(done)
        if not batch["size"]:
            continue
        labels.append(batch["label"])
        for name, views in zip(names, batch["views"], strict=True):
            logits[name].append(models[name][1](views.to(device)).float().cpu())
    if not labels:
        raise PkdError(f"none of the {len(dataset)} images of {labeled.root} could be read")
    return torch.cat(labels), {n: torch.cat(v) for n, v in logits.items()}, bad


def accuracy_report(labels: torch.Tensor, logits: dict[str, torch.Tensor], classes: int, bad: list,
                    pairs: list[tuple[str, str]] = ()) -> EvalResult:
    """All-class top-1, base/novel/HM (each half only where the data has images of it), agreement."""
    nb = base_classes(classes)
    is_base = labels < nb
    result = EvalResult(images=len(labels), classes=classes, top1={}, bad_images=bad)
    preds = {n: z.argmax(-1) for n, z in logits.items()}
    for name, z in logits.items():
        result.top1[name] = float((preds[name] == labels).float().mean())
        if is_base.any():
            result.base[name] = float((z[is_base, :nb].argmax(-1) == labels[is_base]).float().mean())
        if (~is_base).any() and classes > 1:
            result.novel[name] = float((z[~is_base, nb:].argmax(-1) + nb == labels[~is_base]).float().mean())
        if name in result.base and name in result.novel:
            result.hm[name] = harmonic_mean(result.base[name], result.novel[name])
    result.agreement = {f"{a} vs {b}": float((preds[a] == preds[b]).float().mean()) for a, b in pairs}
    return result


def evaluate_run(run_dir: str | Path, data: str | Path, *, with_teacher: bool = False, device: str = "cpu",
                 batch_size: int = 64, workers: int = 2, allow_pickle: bool = False,
                 progress: Progress | None = None) -> EvalResult:
    """Score a run on a labeled ImageFolder named like its classes: a distillation run's student (and, with
    `with_teacher`, its teacher), or a teacher run's teacher."""
    from promptkd_edge.formats.run import RunDir

    run = RunDir(run_dir)
    run.check_existing()
    dev = torch.device(device)
    vectors = ClassVectors.load(run.path).to(dev)
    labeled = LabeledImages.scan(data).relabel(vectors.names)
    models: dict[str, tuple[Preprocess, Scorer]] = {}
    if run.student.is_file():
        student = load_student(run.student, device=dev, allow_pickle=allow_pickle)
        models["student"] = (student.preprocess, lambda x: vectors.logits(student(x)))
    if with_teacher or (run.path / TEACHER_FILE).is_file():
        teacher = load_teacher(vectors.teacher, device=dev, allow_pickle=allow_pickle)
        models["teacher"] = (teacher.clip.preprocess, lambda x: vectors.logits(teacher.encode_image(x)))
    if not models:
        raise PkdError(f"{run.path} holds neither a student nor a teacher")
    labels, logits, bad = predict(labeled, models, device=dev, batch_size=batch_size, workers=workers,
                                  progress=progress)
    pairs = [("student", "teacher")] if len(models) == 2 else []
    result = accuracy_report(labels, logits, len(vectors.names), bad, pairs)
    result.class_names = list(vectors.names)
    result.skipped_links = labeled.skipped_links
    return result


def base_novel_note(names: list[str]) -> str:
    """Which classes are base (the first half of the class list, as the paper's protocol), and a warning when the
    list is in sorted folder-name order, which is not the label order of some benchmark splits."""
    nb = base_classes(len(names))
    shown = ", ".join(names[:min(nb, 3)]) + (", ..." if nb > 3 else "")
    note = f"base = the first {nb} classes of the class list ({shown}), novel = the other {len(names) - nb}"
    if names == sorted(names):
        note += ("; the list is in sorted folder-name order, and a benchmark split that orders its classes by label "
                 "id (CoOp's Oxford Flowers, for one) has other base classes: pass that order to `pkd teacher` "
                 "as --class-names FILE")
    return note
