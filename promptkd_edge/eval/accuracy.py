"""`pkd eval`: top-1 of the distilled student (and the teacher) on a labeled ImageFolder, and their agreement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from promptkd_edge.data.datasets import LabeledViews, collate_skipping_bad
from promptkd_edge.data.listing import LabeledImages
from promptkd_edge.errors import PkdError
from promptkd_edge.models.class_vectors import ClassVectors
from promptkd_edge.models.openclip import Preprocess, load_clip
from promptkd_edge.models.student import load_student
from promptkd_edge.models.teacher import Teacher
from promptkd_edge.utils.progress import NullProgress, Progress

Scorer = Callable[[torch.Tensor], torch.Tensor]  # model-ready images -> logits [B, C]


@dataclass
class EvalResult:
    images: int
    classes: int
    top1: dict[str, float]  # model name -> top-1 accuracy in [0, 1]
    agreement: dict[str, float] = field(default_factory=dict)  # "a vs b" -> fraction of equal top-1
    bad_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"images": self.images, "classes": self.classes, "top1": self.top1, "agreement": self.agreement,
                "bad_images": len(self.bad_images)}


@torch.no_grad()
def predict(labeled: LabeledImages, models: dict[str, tuple[Preprocess, Scorer]], *, device: torch.device,
            batch_size: int = 64, workers: int = 2, progress: Progress | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """Labels and each model's top-1 predictions over `labeled` (unreadable images skipped and listed)."""
    progress = progress or NullProgress()
    names = list(models)
    dataset = LabeledViews(labeled.samples, [models[n][0] for n in names])
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_bad)
    labels, preds, bad = [], {n: [] for n in names}, []
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
            preds[name].append(models[name][1](views.to(device)).argmax(-1).cpu())
    if not labels:
        raise PkdError(f"none of the {len(dataset)} images of {labeled.root} could be read")
    return torch.cat(labels), {n: torch.cat(p) for n, p in preds.items()}, bad


def accuracy_report(labels: torch.Tensor, preds: dict[str, torch.Tensor], classes: int, bad: list[str],
                    pairs: list[tuple[str, str]] = ()) -> EvalResult:
    top1 = {n: float((p == labels).float().mean()) for n, p in preds.items()}
    agreement = {f"{a} vs {b}": float((preds[a] == preds[b]).float().mean()) for a, b in pairs}
    return EvalResult(images=len(labels), classes=classes, top1=top1, agreement=agreement, bad_images=bad)


def evaluate_run(run_dir: str | Path, data: str | Path, *, with_teacher: bool = False, device: str = "cpu",
                 batch_size: int = 64, workers: int = 2, allow_pickle: bool = False,
                 progress: Progress | None = None) -> EvalResult:
    """Score a distillation run's student (and its teacher) on a labeled ImageFolder named like its classes."""
    from promptkd_edge.train.run_dir import RunDir

    run = RunDir(run_dir)
    run.check_existing()
    dev = torch.device(device)
    vectors = ClassVectors.load(run.path).to(dev)
    labeled = LabeledImages.scan(data).relabel(vectors.names)
    student = load_student(run.student, device=dev, allow_pickle=allow_pickle)
    models: dict[str, tuple[Preprocess, Scorer]] = {
        "student": (student.preprocess, lambda x: vectors.logits(student(x)))}
    if with_teacher:
        teacher = Teacher(load_clip(vectors.teacher, device=dev, allow_pickle=allow_pickle))
        models["teacher"] = (teacher.clip.preprocess, lambda x: vectors.logits(teacher.encode_image(x)))
    labels, preds, bad = predict(labeled, models, device=dev, batch_size=batch_size, workers=workers,
                                 progress=progress)
    pairs = [("student", "teacher")] if with_teacher else []
    return accuracy_report(labels, preds, len(vectors.names), bad, pairs)

