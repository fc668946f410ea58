"""PromptKD stage I, `pkd teacher`: prompt-tune the CLIP teacher on K labeled shots per class (PromptSRC).

The recipe, top to bottom: classes and few-shot samples -> the frozen teacher with IVLP prompts in both towers
-> the frozen model's targets (template-ensembled text features) -> for each batch: prompted text features of
every training class (chunked, checkpointed), prompted image features, CE + self-consistency -> Gaussian
prompt aggregation over epochs -> teacher.safetensors and class vectors for all classes.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from promptkd_edge.data.datasets import BadImages, PairedViews, collate_skipping_bad, write_bad_images
from promptkd_edge.data.decode import read_rgb
from promptkd_edge.data.listing import LabeledImages
from promptkd_edge.data.sampling import EpochSampler
from promptkd_edge.errors import PkdError
from promptkd_edge.eval.accuracy import base_classes, base_novel_note
from promptkd_edge.formats.classes import read_class_names
from promptkd_edge.formats.run import RunDir
from promptkd_edge.models.class_vectors import compute_class_vectors
from promptkd_edge.models.clip_tokenizer import tokenizer_digest
from promptkd_edge.models.openclip import load_clip
from promptkd_edge.models.teacher import (
    TEACHER_FILE,
    Teacher,
    TeacherConfig,
    check_prompt_tunable,
    class_prompt,
    save_teacher,
)
from promptkd_edge.train.config import TeacherTuneConfig
from promptkd_edge.train.distributed import autocast_dtype, resolve_precision, torch_device
from promptkd_edge.train.metrics_log import MetricsLog, plot_loss
from promptkd_edge.train.promptsrc import PromptAverage, consistency_losses, gpa_weights, text_target_templates
from promptkd_edge.train.schedule import Optimization
from promptkd_edge.train.step_log import StepLog
from promptkd_edge.utils.files import fields_as_json, sha256_file, write_json
from promptkd_edge.utils.progress import NullProgress, Progress, Update
from promptkd_edge.utils.versions import recorded_versions


@dataclass
class TeacherResult:
    run_dir: Path
    train_classes: int
    all_classes: int
    shots: int  # asked per class (--shots)
    steps: int
    seconds: float
    final_loss: float
    train_top1: float  # on the few-shot images, last epoch, with the augmentation
    bad_images: int = 0
    bad_images_file: str | None = None  # bad_images.txt in the run directory: path TAB reason per line
    shots_min: int = 0  # readable shots the classes trained on: fewest and most
    shots_max: int = 0
    short_classes: dict[str, int] = field(default_factory=dict)  # classes with fewer readable images than --shots


@dataclass
class Shots:
    """The few-shot images, relabelled 0..len(classes)-1, and the unreadable images met while drawing them."""

    samples: list[tuple[Path, int]]
    per_class: list[int]  # readable shots of each training class, in label order
    bad: BadImages  # over the images read for the draw


def few_shot(labeled: LabeledImages, classes: list[int], shots: int, seed: int, max_bad_fraction: float) -> Shots:
    """`shots` readable images of each class in `classes` (seeded), relabelled 0..len(classes)-1.

    An unreadable image is never trained on: it is replaced by another image of the same class (drawn with a
    per-class seed, so the other classes' draws stay the same), and a class with fewer readable images keeps what
    it has. Past `max_bad_fraction` of the images read, the draw stops (TooManyBadImages)."""
    by_class: dict[int, list[Path]] = {c: [] for c in classes}
    for path, label in labeled.samples:
        if label in by_class:
            by_class[label].append(path)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[Path, int]] = []
    per_class: list[int] = []
    bad: list[tuple[str, str]] = []
    read = 0
    for new_label, c in enumerate(classes):
        paths = by_class[c]
        if len(paths) < shots:
            raise PkdError(f"class '{labeled.classes[c]}' has {len(paths)} images in {labeled.root}, fewer than "
                           f"--shots {shots}")
        first = sorted(rng.choice(len(paths), shots, replace=False).tolist())
        spare = np.random.default_rng([seed, c]).permutation(sorted(set(range(len(paths))) - set(first))).tolist()
        picked: list[int] = []
        for i in first + spare:
            if len(picked) == shots:
                break
            read += 1
            why = read_rgb(paths[i])[1]
            if why is None:
                picked.append(i)
            else:
                bad.append((str(paths[i]), why))
        if not picked:
            raise PkdError(f"class '{labeled.classes[c]}' has no readable image in {labeled.root} (e.g. "
                           f"{bad[-1][0]}: {bad[-1][1]}); fix its images")
        chosen += [(paths[i], new_label) for i in sorted(picked)]
        per_class.append(len(picked))
    found = BadImages(read, max_bad_fraction, known=bad)
    found.check()
    return Shots(chosen, per_class, found)


@torch.no_grad()
def frozen_text_targets(teacher: Teacher, names: list[str], templates: list[str]) -> torch.Tensor:
    """Normalised mean over templates of the frozen model's (unnormalised) text features, per class."""
    tokenizer = teacher.clip.tokenizer()
    device = next(teacher.model.parameters()).device
    total = None
    for template in templates:
        tokens = tokenizer([class_prompt(template, n) for n in names]).to(device)
        feats = torch.cat([teacher.model.encode_text(tokens[i:i + 256]).float() for i in range(0, len(names), 256)])
        total = feats if total is None else total + feats
    return F.normalize(total / len(templates), dim=-1)


def teacher_losses(teacher: Teacher, images: torch.Tensor, labels: torch.Tensor, names: list[str],
                   zs_text: torch.Tensor | None, text_chunk: int = 0, checkpointing: bool = False,
                   text_weight: float = 25.0, image_weight: float = 10.0
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One step's losses: CE of the prompted logits over every class in `names`, plus PromptSRC's consistency
    with the frozen model when its text targets `zs_text` are given. Returns (losses, logits)."""
    scale = teacher.logit_scale
    text = teacher.text_features(names, chunk=text_chunk, checkpointing=checkpointing)
    image = teacher.image_features(images).float()
    logits = scale * image @ text.t()
    losses = {"ce": F.cross_entropy(logits, labels)}
    if zs_text is not None:
        with torch.no_grad():
            zs_image = F.normalize(teacher.model.encode_image(images).float(), dim=-1)
        losses |= consistency_losses(image, zs_image, text, zs_text, logits, scale * zs_image @ zs_text.t(),
                                     text_weight, image_weight)
    return losses, logits


def tune_teacher(cfg: TeacherTuneConfig, out: str | Path, *, progress: Progress | None = None) -> TeacherResult:
    """Prompt-tune `cfg.teacher` on few-shot labeled images and write a teacher run directory `out`."""
    cfg = cfg.validate()
    check_prompt_tunable(cfg.teacher)  # before any weights load or the run folder is made
    progress = progress or NullProgress()
    device = torch_device(cfg.device)
    amp = autocast_dtype(resolve_precision(cfg.precision, device))
    with _new_run(out) as run:
        return _tune(cfg, run, device, amp, progress)


@contextlib.contextmanager
def _new_run(out: str | Path) -> Iterator[RunDir]:
    """A new run directory; when a user error stops the work before the teacher is written, nothing stays."""
    run = RunDir(out)
    run.check_new(resumable=False)
    existed = run.path.exists()
    try:
        yield run
    except PkdError:
        if not existed and not (run.path / TEACHER_FILE).exists():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


# Steps whose metrics are read off the device together (`pkd distill` has --log-every; stage I is short).
LOG_EVERY = 10


@dataclass
class FewShotData:
    """Seeded augmented views of the K shots per class; an image unreadable since the draw is skipped (never
    replaced by another class's image)."""

    views: PairedViews
    labels: torch.Tensor
    batch_size: int
    seed: int
    workers: int
    pin_memory: bool

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.labels) // self.batch_size)

    def loader(self, epoch: int) -> DataLoader:
        """The batches of `epoch`, in the seeded order of that epoch."""
        sampler = EpochSampler(len(self.labels), seed=self.seed, epoch=epoch)
        return DataLoader(self.views, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
                          collate_fn=collate_skipping_bad, pin_memory=self.pin_memory,
                          drop_last=len(self.labels) >= self.batch_size)


@dataclass
class TuneState:
    """Where the loop is: steps done, the metrics not yet written and this epoch's accuracy counts."""

    log: StepLog
    bad: BadImages
    started: float = field(default_factory=time.perf_counter)
    step: int = 0
    last_loss: float = float("nan")
    correct: torch.Tensor | int = 0  # right answers this epoch, on the device until read with the losses
    seen: int = 0

    def accuracy(self) -> float:
        return int(self.correct) / max(self.seen, 1)

    def report(self, update: Update, position: int) -> None:
        """Write the buffered steps' metrics (one device sync) and show the last loss and the accuracy."""
        self.last_loss = self.log.flush(time.perf_counter() - self.started)["loss"]
        update(position, loss=self.last_loss, acc=self.accuracy())


def _tune(cfg: TeacherTuneConfig, run: RunDir, device: torch.device, amp: torch.dtype | None,
          progress: Progress) -> TeacherResult:
    """The recipe of the module docstring, step by step."""
    # 1. Classes (their order is the class id) and K shots of each training class.
    names, train_names, shots = _classes_and_shots(cfg, progress)
    samples = shots.samples
    run.path.mkdir(parents=True, exist_ok=True)

    # 2. The frozen teacher with prompts in both towers; the same weights without prompts give the targets.
    teacher = _prompted_teacher(cfg, run, device, progress)
    zs_text = frozen_text_targets(teacher, train_names, text_target_templates(cfg.text_targets)) \
        if cfg.self_consistency else None
    checkpointing = 0 < cfg.text_chunk < len(train_names)
    step_losses = functools.partial(teacher_losses, teacher, names=train_names, zs_text=zs_text,
                                    text_chunk=cfg.text_chunk, checkpointing=checkpointing,
                                    text_weight=cfg.text_loss_weight, image_weight=cfg.image_loss_weight)

    # 3. Data: seeded augmented views of the few-shot images (an image unreadable since the draw is skipped).
    views = PairedViews([p for p, _ in samples], {"image": teacher.clip.preprocess}, cfg.seed,
                        (cfg.crop_scale_min, 1.0), fallback=False)
    data = FewShotData(views, torch.tensor([label for _, label in samples]), cfg.batch_size, cfg.seed, cfg.workers,
                       device.type == "cuda")

    # 4. SGD over the prompts only, warm-up then cosine, and the Gaussian prompt average over epochs.
    optim = _optimization(cfg, teacher, data.steps_per_epoch, amp, device)
    average = PromptAverage(gpa_weights(cfg.epochs, cfg.gpa_mean, cfg.gpa_std)) if cfg.gpa else None
    write_json(run.config, {"kind": "promptkd-edge/teacher-run", "config": cfg.to_dict(),
                            "resolved": {"lr": optim.lr, "classes": names, "train_classes": train_names,
                                         "shots_per_class": shots.per_class,
                                         "steps_per_epoch": data.steps_per_epoch,
                                         "total_steps": cfg.epochs * data.steps_per_epoch,
                                         "text_checkpointing": checkpointing, "teacher": teacher.config.__dict__},
                            "versions": recorded_versions("torch")})

    # 5. The loop.
    with MetricsLog(run.metrics) as metrics:
        state = TuneState(StepLog(metrics), shots.bad)
        for epoch in range(cfg.epochs):
            _train_one_epoch(cfg, epoch, teacher, step_losses, data, optim, state, progress, device, amp)
            if average is not None:
                average.add(epoch, {"vision": teacher.vision.prompts, "text": teacher.text.prompts})
            metrics.flush()
            plot_loss(run.metrics, run.plot, title=f"pkd teacher: {run.path.name}")

    # 6. Gaussian prompt aggregation, then the teacher file and class vectors for every class.
    return _finish(run, teacher, average, names, train_names, cfg.shots, shots.per_class, state, progress)


def _train_one_epoch(cfg: TeacherTuneConfig, epoch: int, teacher: Teacher,
                     step_losses: Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]], data: FewShotData,
                     optim: Optimization, state: TuneState, progress: Progress, device: torch.device,
                     amp: torch.dtype | None) -> None:
    """One epoch over the few-shot views: CE (+ self-consistency) per batch, a step, metrics every LOG_EVERY."""
    loader = data.loader(epoch)
    teacher.train()
    update = progress.task(f"teacher epoch {epoch + 1}/{cfg.epochs}", data.steps_per_epoch)
    state.correct = state.seen = 0
    position = 0
    for i, batch in enumerate(loader):
        state.bad.add(batch["bad"])
        if not batch["size"]:
            continue
        x = batch["image"].to(device, non_blocking=True)
        y = data.labels[batch["index"]].to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            losses, logits = step_losses(x, y)
        loss = sum(losses.values())
        lr = optim.step(loss)
        state.step += 1
        state.correct = state.correct + (logits.argmax(1) == y).sum()
        state.seen += len(y)
        state.log.add({"step": state.step, "epoch": epoch, "lr": lr}, {"loss": loss, **losses})
        position = i + 1
        if len(state.log) >= LOG_EVERY:
            state.report(update, position)
    if len(state.log):
        state.report(update, position)


def _finish(run: RunDir, teacher: Teacher, average: PromptAverage | None, names: list[str], train_names: list[str],
            shots: int, per_class: list[int], state: TuneState, progress: Progress) -> TeacherResult:
    """The aggregated prompts into teacher.safetensors, class vectors for all classes, summary.json."""
    if average is not None:
        with torch.no_grad():
            teacher.vision.prompts.copy_(average.value()["vision"])
            teacher.text.prompts.copy_(average.value()["text"])
    save_teacher(teacher, run.path / TEACHER_FILE)
    teacher.eval()
    compute_class_vectors(teacher, names).save(run.path)
    result = TeacherResult(run_dir=run.path, train_classes=len(train_names), all_classes=len(names), shots=shots,
                           steps=state.step, seconds=time.perf_counter() - state.started, final_loss=state.last_loss,
                           train_top1=state.accuracy(), bad_images=len(state.bad.found),
                           bad_images_file=write_bad_images(run.path / "bad_images.txt", state.bad),
                           shots_min=min(per_class), shots_max=max(per_class),
                           short_classes={n: k for n, k in zip(train_names, per_class, strict=True) if k < shots})
    write_json(run.summary, fields_as_json(result))
    progress.done()
    return result


def _classes_and_shots(cfg: TeacherTuneConfig, progress: Progress) -> tuple[list[str], list[str], Shots]:
    """All class names (their order is the class id), the training classes' names and K readable shots of each
    (fewer where a class has fewer readable images; they are named)."""
    labeled = LabeledImages.scan(cfg.data)
    names = read_class_names(cfg.class_names) if cfg.class_names else labeled.classes
    labeled = labeled.relabel(names)
    train_ids = list(range(base_classes(len(names)) if cfg.classes == "base" else len(names)))
    if cfg.classes == "base" and not cfg.class_names:
        progress.note(base_novel_note(names))
    train_names = [names[i] for i in train_ids]
    shots = few_shot(labeled, train_ids, cfg.shots, cfg.seed, cfg.max_bad_fraction)
    if shots.bad.found:
        progress.note(f"{len(shots.bad.found)} unreadable images not used as shots (e.g. {min(shots.bad.found)})")
    short = [(n, k) for n, k in zip(train_names, shots.per_class, strict=True) if k < cfg.shots]
    if short:
        progress.note(f"{len(short)} classes have fewer than {cfg.shots} readable images and train on fewer shots: "
                      + ", ".join(f"'{n}' {k}" for n, k in short[:5]) + (", ..." if len(short) > 5 else ""))
    return names, train_names, shots


def _prompted_teacher(cfg: TeacherTuneConfig, run: RunDir, device: torch.device, progress: Progress) -> Teacher:
    """The frozen CLIP with fresh IVLP prompts in both towers."""
    progress.note(f"loading teacher {cfg.teacher}")
    torch.manual_seed(cfg.seed)
    clip = load_clip(cfg.teacher, device=device, allow_pickle=cfg.allow_pickle)
    config = TeacherConfig(spec=cfg.teacher, vision_tokens=cfg.vision_tokens, vision_depth=cfg.vision_depth,
                           text_tokens=cfg.text_tokens, text_depth=cfg.text_depth, text_prefix=cfg.text_init,
                           init_seed=cfg.seed,
                           weights_sha256=sha256_file(clip.weights_file) if clip.weights_file else None,
                           tokenizer_sha256=tokenizer_digest(clip.tokenizer()))
    return Teacher(clip, config, source=str(run.path.resolve())).to(device)


def _optimization(cfg: TeacherTuneConfig, teacher: Teacher, steps_per_epoch: int, amp: torch.dtype | None,
                  device: torch.device) -> Optimization:
    """SGD (or AdamW) over the two prompt tensors, warm-up then cosine; loss scaling under fp16."""
    # fp16 gradients underflow without loss scaling (bf16 and fp32 need none)
    return Optimization.create([teacher.vision.prompts, teacher.text.prompts], cfg, steps_per_epoch=steps_per_epoch,
                               global_batch=cfg.batch_size,
                               scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16))


def import_official_teacher(checkpoint: str | Path, base: str, names: list[str], out: str | Path, *,
                            text_prefix: str = "a photo of a", device: str = "cpu",
                            allow_pickle: bool = False) -> Path:
    """Convert an official PromptKD/PromptSRC teacher checkpoint into a teacher run directory (no training)."""
    from promptkd_edge.models.official import convert_official

    with _new_run(out) as run:
        dev = torch_device(device)
        clip = load_clip(base, device=dev, allow_pickle=allow_pickle)
        config, prompts = convert_official(checkpoint, base, clip.model, text_prefix=text_prefix,
                                           allow_pickle=allow_pickle)
        config = TeacherConfig(**{**config.__dict__,
                                  "weights_sha256": sha256_file(clip.weights_file) if clip.weights_file else None,
                                  "tokenizer_sha256": tokenizer_digest(clip.tokenizer())})
        run.path.mkdir(parents=True, exist_ok=True)
        teacher = Teacher(clip, config, source=str(run.path.resolve())).to(dev)
        teacher.load_prompt_state(prompts, str(checkpoint))
        save_teacher(teacher, run.path / TEACHER_FILE)
        compute_class_vectors(teacher.eval(), names).save(run.path)
        write_json(run.config, {"kind": "promptkd-edge/teacher-run", "imported_from": str(Path(checkpoint).resolve()),
                                "checkpoint_sha256": sha256_file(checkpoint), "teacher": config.__dict__,
                                "versions": recorded_versions("torch")})
        return run.path
