"""PromptKD stage I, `pkd teacher`: prompt-tune the CLIP teacher on K labeled shots per class (PromptSRC).

The recipe, top to bottom: classes and few-shot samples -> the frozen teacher with IVLP prompts in both towers
-> the frozen model's targets (template-ensembled text features) -> for each batch: prompted text features of
every training class (chunked, checkpointed), prompted image features, CE + self-consistency -> Gaussian
prompt aggregation over epochs -> teacher.safetensors and class vectors for all classes.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from promptkd_edge import __version__
from promptkd_edge.data.datasets import BadImages, PairedViews, collate_skipping_bad, write_bad_images
from promptkd_edge.data.listing import LabeledImages
from promptkd_edge.data.sampling import EpochSampler
from promptkd_edge.errors import PkdError
from promptkd_edge.eval.accuracy import base_novel_note
from promptkd_edge.models.class_vectors import compute_class_vectors
from promptkd_edge.models.openclip import load_clip
from promptkd_edge.models.teacher import TEACHER_FILE, Teacher, TeacherConfig, class_prompt, save_teacher
from promptkd_edge.runtime.names import read_class_names
from promptkd_edge.train.config import TeacherTuneConfig
from promptkd_edge.train.distributed import autocast_dtype, resolve_device, resolve_precision
from promptkd_edge.train.promptsrc import PromptAverage, consistency_losses, gpa_weights, text_target_templates
from promptkd_edge.train.run_dir import MetricsLog, RunDir, plot_loss
from promptkd_edge.train.schedule import advance, optimizer_and_schedule, scaled_lr
from promptkd_edge.utils.files import sha256_file, write_json
from promptkd_edge.utils.progress import NullProgress, Progress


@dataclass
class TeacherResult:
    run_dir: Path
    train_classes: int
    all_classes: int
    shots: int
    steps: int
    seconds: float
    final_loss: float
    train_top1: float  # on the few-shot images, last epoch, with the augmentation
    bad_images: int = 0
    bad_images_file: str | None = None  # bad_images.txt in the run directory: path TAB reason per line


def base_classes(n: int) -> int:
    """The base split of the base-to-novel protocol: the first ceil(N/2) classes by class id."""
    return math.ceil(n / 2)


def few_shot(labeled: LabeledImages, classes: list[int], shots: int, seed: int) -> list[tuple[Path, int]]:
    """`shots` images of each class in `classes` (seeded), relabelled 0..len(classes)-1."""
    by_class: dict[int, list[Path]] = {c: [] for c in classes}
    for path, label in labeled.samples:
        if label in by_class:
            by_class[label].append(path)
    rng = np.random.default_rng(seed)
    chosen = []
    for new_label, c in enumerate(classes):
        paths = by_class[c]
        if len(paths) < shots:
            raise PkdError(f"class '{labeled.classes[c]}' has {len(paths)} images in {labeled.root}, fewer than "
                           f"--shots {shots}")
        chosen += [(paths[i], new_label) for i in sorted(rng.choice(len(paths), shots, replace=False))]
    return chosen


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
    progress = progress or NullProgress()
    device = resolve_device(cfg.device)
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


def _tune(cfg: TeacherTuneConfig, run: RunDir, device: torch.device, amp: torch.dtype | None,
          progress: Progress) -> TeacherResult:
    # 1. Classes (their order is the class id) and K shots of each training class.
    labeled = LabeledImages.scan(cfg.data)
    names = read_class_names(cfg.class_names) if cfg.class_names else labeled.classes
    labeled = labeled.relabel(names)
    train_ids = list(range(base_classes(len(names)) if cfg.classes == "base" else len(names)))
    train_names = [names[i] for i in train_ids]
    if cfg.classes == "base" and not cfg.class_names:
        progress.note(base_novel_note(names))
    samples = few_shot(labeled, train_ids, cfg.shots, cfg.seed)
    run.path.mkdir(parents=True, exist_ok=True)

    # 2. The frozen teacher with prompts in both towers; the same weights without prompts give the targets.
    progress.note(f"loading teacher {cfg.teacher}")
    torch.manual_seed(cfg.seed)
    clip = load_clip(cfg.teacher, device=device, allow_pickle=cfg.allow_pickle)
    config = TeacherConfig(spec=cfg.teacher, vision_tokens=cfg.vision_tokens, vision_depth=cfg.vision_depth,
                           text_tokens=cfg.text_tokens, text_depth=cfg.text_depth, text_prefix=cfg.text_init,
                           init_seed=cfg.seed,
                           weights_sha256=sha256_file(clip.weights_file) if clip.weights_file else None)
    teacher = Teacher(clip, config, source=str(run.path.resolve())).to(device)
    zs_text = frozen_text_targets(teacher, train_names, text_target_templates(cfg.text_targets)) \
        if cfg.self_consistency else None
    checkpointing = 0 < cfg.text_chunk < len(train_names)

    # 3. Data: seeded augmented views of the few-shot images; labels follow the image actually read.
    paths = [p for p, _ in samples]
    labels = torch.tensor([label for _, label in samples])
    views = PairedViews(paths, {"image": clip.preprocess}, cfg.seed, (cfg.crop_scale_min, 1.0))
    steps_per_epoch = max(1, len(paths) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch

    # 4. SGD over the prompts only, warm-up then cosine, and the Gaussian prompt average over epochs.
    params = [teacher.vision.prompts, teacher.text.prompts]
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.optimizer, cfg.batch_size)
    optimizer, scheduler = optimizer_and_schedule(
        params, optimizer=cfg.optimizer, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        total_steps=total_steps, warmup_steps=cfg.warmup_epochs * steps_per_epoch, warmup_lr=cfg.warmup_lr,
        steps_per_epoch=steps_per_epoch, schedule=cfg.schedule)
    average = PromptAverage(gpa_weights(cfg.epochs, cfg.gpa_mean, cfg.gpa_std)) if cfg.gpa else None
    # fp16 gradients underflow without loss scaling (bf16 and fp32 need none)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    write_json(run.config, {"kind": "promptkd-edge/teacher-run", "config": cfg.to_dict(),
                            "resolved": {"lr": lr, "classes": names, "train_classes": train_names,
                                         "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                         "text_checkpointing": checkpointing, "teacher": config.__dict__},
                            "versions": {"promptkd_edge": __version__, "torch": torch.__version__}})

    # 5. The loop.
    metrics = MetricsLog(run.metrics)
    bad = BadImages(len(paths), 0.5)
    step, t0, loss_value, correct, seen = 0, time.perf_counter(), float("nan"), 0, 0
    for epoch in range(cfg.epochs):
        sampler = EpochSampler(len(paths), seed=cfg.seed, epoch=epoch)
        loader = DataLoader(views, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            collate_fn=collate_skipping_bad, pin_memory=device.type == "cuda",
                            drop_last=len(paths) >= cfg.batch_size)
        teacher.train()
        update = progress.task(f"teacher epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
        correct = seen = 0
        for i, batch in enumerate(loader):
            bad.add(batch["bad"])
            if not batch["size"]:
                continue
            x = batch["image"].to(device, non_blocking=True)
            y = labels[batch["index"]].to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                losses, logits = teacher_losses(teacher, x, y, train_names, zs_text, cfg.text_chunk, checkpointing,
                                                cfg.text_loss_weight, cfg.image_loss_weight)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            lr_now = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            advance(scheduler)
            step += 1
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            loss_value = loss.item()
            metrics.write({"step": step, "epoch": epoch, "lr": lr_now, "loss": loss_value,
                           **{k: v.item() for k, v in losses.items()}, "seconds": round(time.perf_counter() - t0, 3)})
            update(i + 1, loss=loss_value, acc=correct / max(seen, 1))
        if average is not None:
            average.add(epoch, {"vision": teacher.vision.prompts, "text": teacher.text.prompts})
        metrics.flush()
        plot_loss(run.metrics, run.plot, title=f"pkd teacher: {run.path.name}")
    metrics.close()

    # 6. Gaussian prompt aggregation, then the teacher file and class vectors for every class.
    if average is not None:
        with torch.no_grad():
            teacher.vision.prompts.copy_(average.value()["vision"])
            teacher.text.prompts.copy_(average.value()["text"])
    save_teacher(teacher, run.path / TEACHER_FILE)
    teacher.eval()
    compute_class_vectors(teacher, names).save(run.path)
    result = TeacherResult(run_dir=run.path, train_classes=len(train_names), all_classes=len(names), shots=cfg.shots,
                           steps=step, seconds=time.perf_counter() - t0, final_loss=loss_value,
                           train_top1=correct / max(seen, 1), bad_images=len(bad.found),
                           bad_images_file=write_bad_images(run.path / "bad_images.txt", bad))
    write_json(run.summary, {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()})
    progress.done()
    return result


def import_official_teacher(checkpoint: str | Path, base: str, names: list[str], out: str | Path, *,
                            text_prefix: str = "a photo of a", device: str = "cpu",
                            allow_pickle: bool = False) -> Path:
    """Convert an official PromptKD/PromptSRC teacher checkpoint into a teacher run directory (no training)."""
    from promptkd_edge.models.official import convert_official

    with _new_run(out) as run:
        dev = resolve_device(device)
        clip = load_clip(base, device=dev, allow_pickle=allow_pickle)
        config, prompts = convert_official(checkpoint, base, clip.model, text_prefix=text_prefix,
                                           allow_pickle=allow_pickle)
        config = TeacherConfig(**{**config.__dict__,
                                  "weights_sha256": sha256_file(clip.weights_file) if clip.weights_file else None})
        run.path.mkdir(parents=True, exist_ok=True)
        teacher = Teacher(clip, config, source=str(run.path.resolve())).to(dev)
        teacher.load_prompt_state(prompts, str(checkpoint))
        save_teacher(teacher, run.path / TEACHER_FILE)
        compute_class_vectors(teacher.eval(), names).save(run.path)
        write_json(run.config, {"kind": "promptkd-edge/teacher-run", "imported_from": str(Path(checkpoint).resolve()),
                                "checkpoint_sha256": sha256_file(checkpoint), "teacher": config.__dict__,
                                "versions": {"promptkd_edge": __version__, "torch": torch.__version__}})
        return run.path
