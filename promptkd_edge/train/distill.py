"""PromptKD stage II, `pkd distill`: align a prompted student with the teacher on unlabeled images.

The recipe, top to bottom: teacher and class vectors -> student -> data (and the teacher-feature cache) ->
optimizer and schedule -> (resume) -> for each batch: the same augmented view to both models, teacher
logits, student logits, KL * T^2, step -> checkpoint each epoch -> student.safetensors.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from promptkd_edge import __version__
from promptkd_edge.data.datasets import BadImages, PairedViews, collate_skipping_bad, write_bad_images
from promptkd_edge.data.listing import list_images
from promptkd_edge.data.sampling import EpochSampler
from promptkd_edge.data.shards import ShardViews, is_shard_spec
from promptkd_edge.errors import PkdError
from promptkd_edge.models.class_vectors import CLASSES_FILE, ClassVectors, compute_class_vectors
from promptkd_edge.models.openclip import load_clip, preprocess_for, weights_file_for
from promptkd_edge.models.student import StudentConfig, build_student, save_student
from promptkd_edge.models.teacher import Teacher, base_spec, load_teacher, teacher_fingerprint
from promptkd_edge.runtime.names import read_class_names
from promptkd_edge.train import teacher_cache
from promptkd_edge.train.checkpoint import TrainingState, load_latest, save_checkpoint
from promptkd_edge.train.config import DistillConfig
from promptkd_edge.train.distributed import (
    Runtime,
    autocast_dtype,
    barrier,
    gather_objects,
    init_runtime,
    resolve_precision,
    shutdown,
)
from promptkd_edge.train.losses import kd_loss
from promptkd_edge.train.run_dir import MetricsLog, RunDir, plot_loss
from promptkd_edge.train.schedule import advance, optimizer_and_schedule, scaled_lr
from promptkd_edge.utils.files import read_json, sha256_file, write_json
from promptkd_edge.utils.progress import NullProgress, Progress
from promptkd_edge.utils.versions import distribution_version


@dataclass
class DistillResult:
    run_dir: Path
    epochs: int
    steps: int
    images_seen: int
    seconds: float
    images_per_second: float
    final_loss: float
    bad_images: int
    teacher_cache: str | None
    bad_images_file: str | None = None  # bad_images.txt in the run directory: path TAB reason per line


def distill(cfg: DistillConfig, out: str | Path, *, resume: bool = False, progress: Progress | None = None,
            on_checkpoint: Callable[[TrainingState], None] | None = None) -> DistillResult:
    """Run (or, with `resume`, continue) a distillation into the run directory `out`."""
    cfg = cfg.validate().with_absolute_paths()
    rt = init_runtime(cfg.device)
    run = RunDir(out)
    fresh = not resume and not run.path.exists()
    try:
        return _distill(cfg, run, resume, rt, progress or NullProgress(), on_checkpoint)
    except PkdError:
        if fresh and rt.is_main and not run.checkpoints.exists():  # failed before training: leave nothing behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    finally:
        shutdown(rt)


def _distill(cfg: DistillConfig, run: RunDir, resume: bool, rt: Runtime, progress: Progress,
             on_checkpoint: Callable[[TrainingState], None] | None) -> DistillResult:
    precision = resolve_precision(cfg.precision, rt.device)
    amp = autocast_dtype(precision)
    if resume:
        run.check_existing()
        _check_resumable(cfg, run)
    elif rt.is_main:
        run.check_new()
    barrier(rt)
    run.path.mkdir(parents=True, exist_ok=True)

    # 0. Inputs first: a missing folder or weights file fails before any model is loaded.
    shards = is_shard_spec(cfg.data)
    if shards and cfg.teacher_cache:
        raise PkdError("--teacher-cache needs a folder or file list of images, not WebDataset shards")
    if shards and not cfg.shard_epoch_size:
        raise PkdError("WebDataset shards have no length: pass --shard-epoch-size (images per epoch)")
    paths = [] if shards else list_images(cfg.data)
    names = read_class_names(cfg.classes) if cfg.classes and not cfg.class_vectors else None
    for spec in (cfg.student, base_spec(cfg.teacher)):
        weights_file_for(spec)

    # 1. Teacher (loaded only when needed) and its class vectors, computed once and stored in the run.
    teacher: Teacher | None = None

    def get_teacher() -> Teacher:
        nonlocal teacher
        if teacher is None:
            progress.note(f"loading teacher {cfg.teacher}")
            torch.manual_seed(cfg.seed)  # weights without a file (random) are the same in every process and run
            teacher = load_teacher(cfg.teacher, device=rt.device, allow_pickle=cfg.allow_pickle)
        return teacher

    if rt.is_main and not (run.path / CLASSES_FILE).is_file():
        class_vectors = _class_vectors(cfg, names, get_teacher, progress)
        class_vectors.save(run.path)
    barrier(rt)
    class_vectors = ClassVectors.load(run.path).to(rt.device)

    # 2. Student: frozen open_clip tower + prompts + projector to the teacher's dimension.
    progress.note(f"loading student {cfg.student}")
    torch.manual_seed(cfg.seed)
    student_clip = load_clip(cfg.student, device=rt.device, allow_pickle=cfg.allow_pickle)
    student_config = StudentConfig(
        spec=cfg.student, teacher_dim=class_vectors.dim, prompt_tokens=cfg.prompt_tokens,
        prompt_depth=cfg.prompt_depth, prompt_init_std=cfg.prompt_init_std, init_seed=cfg.seed,
        weights_sha256=sha256_file(student_clip.weights_file) if student_clip.weights_file else None)
    student = build_student(student_clip, student_config)

    # 3. Data, and the teacher's features when they are cached.
    cache = None
    if cfg.teacher_cache:
        cache = _teacher_cache(cfg, rt, paths, class_vectors.dim, get_teacher, progress, amp)
    models = {"student": student_clip.preprocess}
    if cache is None:
        models["teacher"] = get_teacher().clip.preprocess
    else:
        teacher = None  # training reads the cache; free the teacher's memory
    dataset_size = cfg.shard_epoch_size if shards else len(paths)
    per_rank = -(-dataset_size // rt.world_size)
    steps_per_epoch = per_rank // cfg.batch_size
    if steps_per_epoch == 0:
        raise PkdError(f"{dataset_size} images make no full batch of {cfg.batch_size} per process; "
                       "lower --batch-size or add images")
    total_steps = cfg.epochs * steps_per_epoch
    crop_scale = (cfg.crop_scale_min, 1.0)
    folder_views = None if shards else PairedViews(paths, models, cfg.seed, crop_scale)

    def loader_for(epoch: int, skip_batches: int) -> DataLoader:
        if shards:
            stream = ShardViews(cfg.data, models, cfg.seed, crop_scale, batches=steps_per_epoch,
                                batch_size=cfg.batch_size, epoch=epoch, rank=rt.rank)
            return DataLoader(stream, batch_size=cfg.batch_size, num_workers=min(cfg.workers, steps_per_epoch),
                              collate_fn=collate_skipping_bad, pin_memory=rt.device.type == "cuda")
        sampler = EpochSampler(dataset_size, seed=cfg.seed, epoch=epoch, rank=rt.rank, world_size=rt.world_size,
                               views=cfg.teacher_cache or None, skip=skip_batches * cfg.batch_size)
        return DataLoader(folder_views, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                          collate_fn=collate_skipping_bad, pin_memory=rt.device.type == "cuda", drop_last=True)

    # 4. Optimizer over prompts + projector only, warm-up then cosine.
    global_batch = cfg.batch_size * rt.world_size
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.optimizer, global_batch)
    params = student.trainable_parameters()
    optimizer, scheduler = optimizer_and_schedule(
        params, optimizer=cfg.optimizer, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        total_steps=total_steps, warmup_steps=cfg.warmup_epochs * steps_per_epoch, warmup_lr=cfg.warmup_lr,
        steps_per_epoch=steps_per_epoch, schedule=cfg.schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    resolved = {"lr": lr, "global_batch": global_batch, "world_size": rt.world_size, "precision": precision,
                "device": rt.device.type, "images": dataset_size, "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps, "student": student_config.__dict__,
                "trainable_parameters": sum(p.numel() for p in params),
                "class_count": len(class_vectors.names), "logit_scale": class_vectors.logit_scale}
    if rt.is_main:
        _write_config(run, cfg, resolved, resume)

    # 5. Resume: every tensor of the training state, then the same data order from the same step.
    start_epoch, start_in_epoch, step, elapsed, seen = 0, 0, 0, 0.0, 0
    bad = BadImages(dataset_size, cfg.max_bad_fraction)
    state = load_latest(run.checkpoints) if resume else None
    if state is not None:
        student.load_trained_state({k: v.to(rt.device) for k, v in state.student.items()}, "checkpoint")
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if state.scaler:
            scaler.load_state_dict(state.scaler)
        start_epoch, start_in_epoch, step = state.epoch, state.step_in_epoch, state.step
        elapsed, seen = state.extra.get("seconds", 0.0), state.extra.get("images_seen", 0)
        bad = BadImages(dataset_size, cfg.max_bad_fraction, state.extra.get("bad_images", []))
        if start_epoch >= cfg.epochs:
            progress.note(f"{run.path} has already finished its {cfg.epochs} epochs")
        else:
            progress.note(f"resuming {run.path} at epoch {start_epoch + 1}, step {step}")

    model: torch.nn.Module = student
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.compile else model
    encode_teacher = None
    if cache is None:
        encode_teacher = get_teacher().encode_image
        if cfg.compile:
            encode_teacher = torch.compile(encode_teacher)
    metrics = MetricsLog(run.metrics, resume_step=step if resume else None) if rt.is_main else None

    def checkpoint(epoch: int, in_epoch: int) -> None:
        nonlocal last_loss
        if pending:
            last_loss = _log(pending, metrics, elapsed + time.perf_counter() - t0)
        extra = {"seconds": elapsed + time.perf_counter() - t0, "images_seen": seen, "loss": last_loss,
                 "bad_images": [list(r) for r in bad.records()]}
        state = TrainingState(epoch=epoch, step=step, step_in_epoch=in_epoch, student=student.trained_state(),
                              optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                              scaler=scaler.state_dict() if scaler.is_enabled() else None, extra=extra)
        if rt.is_main:
            metrics.flush()
            save_checkpoint(run.checkpoints, state, keep=cfg.keep_checkpoints)
            save_student(student, run.student)
            plot_loss(run.metrics, run.plot, title=f"pkd distill: {run.path.name}")
        barrier(rt)
        if on_checkpoint:
            on_checkpoint(state)

    # 6. The loop.
    pending: list[tuple[dict[str, Any], torch.Tensor]] = []
    t0 = time.perf_counter()
    last_loss = state.extra.get("loss", float("nan")) if state else float("nan")
    for epoch in range(start_epoch, cfg.epochs):
        in_epoch = start_in_epoch if epoch == start_epoch else 0
        batches = iter(loader_for(epoch, in_epoch))
        if shards:  # a stream cannot seek: re-read the batches a mid-epoch checkpoint had already used
            for _ in range(in_epoch):
                next(batches, None)
        student.train()
        update = progress.task(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
        update(in_epoch)
        for batch in batches:
            bad.add(batch["bad"])
            if batch["size"] < 2:
                continue
            if in_epoch == steps_per_epoch:
                break
            images = batch["student"].to(rt.device, non_blocking=True)
            with torch.autocast(rt.device.type, dtype=amp, enabled=amp is not None):
                if cache is not None:
                    teacher_features = cache.lookup(batch["index"], batch["view"]).to(rt.device)
                else:
                    teacher_features = encode_teacher(batch["teacher"].to(rt.device, non_blocking=True))
                student_features = forward(images)
            teacher_logits = class_vectors.logits(teacher_features.float())
            student_logits = class_vectors.logits(student_features.float())
            loss = cfg.kd_weight * kd_loss(student_logits, teacher_logits, cfg.temperature, cfg.kd_norm)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr_now = optimizer.param_groups[0]["lr"]
            advance(scheduler)
            step += 1
            in_epoch += 1
            seen += batch["size"] * rt.world_size

            pending.append(({"step": step, "epoch": epoch, "lr": lr_now, "images_seen": seen}, loss.detach()))
            if len(pending) >= cfg.log_every or in_epoch == steps_per_epoch:
                last_loss = _log(pending, metrics, elapsed + time.perf_counter() - t0)
                update(in_epoch, loss=last_loss, lr=lr_now)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and in_epoch < steps_per_epoch:
                checkpoint(epoch, in_epoch)
        checkpoint(epoch + 1, 0)

    # 7. The result.
    seconds = elapsed + time.perf_counter() - t0
    result = DistillResult(run_dir=run.path, epochs=cfg.epochs, steps=step, images_seen=seen, seconds=seconds,
                           images_per_second=seen / max(seconds, 1e-9), final_loss=last_loss,
                           bad_images=len(bad.found), teacher_cache=str(cache.path) if cache else None)
    if rt.distributed:  # every rank skipped its own share of the unreadable images
        for records in gather_objects(rt, bad.records()):
            bad.add(records, check=False)
        result.bad_images = len(bad.found)
    if rt.is_main:
        result.bad_images_file = write_bad_images(run.path / "bad_images.txt", bad)
        metrics.close()
        write_json(run.summary, {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()})
    progress.done()
    return result


def _log(pending: list[tuple[dict[str, Any], torch.Tensor]], metrics: MetricsLog | None, seconds: float) -> float:
    """Write the buffered steps (one device sync for all of them); return the last loss."""
    losses = torch.stack([loss for _, loss in pending]).float().cpu().tolist()
    if metrics is not None:
        for (record, _), value in zip(pending, losses, strict=True):
            metrics.write(record | {"loss": value, "seconds": round(seconds, 3)})
    pending.clear()
    return losses[-1]


def _class_vectors(cfg: DistillConfig, names: list[str] | None, get_teacher: Callable[[], Teacher],
                   progress: Progress) -> ClassVectors:
    if cfg.class_vectors or names is None:  # given, or those of the `pkd teacher` run given as --teacher
        source = cfg.class_vectors or cfg.teacher
        vectors = ClassVectors.load(source)
        if vectors.teacher != cfg.teacher:
            raise PkdError(f"the class vectors in {source} come from teacher {vectors.teacher}, "
                           f"not --teacher {cfg.teacher}")
        return vectors
    progress.note(f"computing class vectors for {len(names)} classes with {cfg.teacher}")
    return compute_class_vectors(get_teacher(), names, cfg.template)


def _teacher_cache(cfg: DistillConfig, rt: Runtime, paths: list[Path], dim: int,
                   get_teacher: Callable[[], Teacher], progress: Progress, amp: torch.dtype | None):
    fingerprint = teacher_fingerprint(cfg.teacher)
    preprocess = preprocess_for(base_spec(cfg.teacher))
    key = teacher_cache.cache_key(listing=teacher_cache.listing_digest(paths), teacher=fingerprint,
                                  preprocess=preprocess, views=cfg.teacher_cache, seed=cfg.seed,
                                  crop_scale=(cfg.crop_scale_min, 1.0))
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else teacher_cache.default_cache_dir()
    jobs = len(paths) * cfg.teacher_cache
    update = progress.task(f"teacher features ({cfg.teacher_cache} views)", -(-jobs // rt.world_size))
    cache, built = teacher_cache.build_or_open(
        rt, paths=paths, key=key, cache_dir=cache_dir, views=cfg.teacher_cache, dim=dim,
        preprocess=preprocess, seed=cfg.seed, crop_scale=(cfg.crop_scale_min, 1.0),
        encode=lambda: get_teacher().encode_image, batch_size=max(cfg.batch_size, 32), workers=cfg.workers,
        max_bad_fraction=cfg.max_bad_fraction, autocast=amp, on_progress=lambda done, total: update(done))
    progress.note(f"teacher features {'computed into' if built else 'reused from'} {cache.path}")
    return cache


def _check_resumable(cfg: DistillConfig, run: RunDir) -> None:
    stored = DistillConfig.from_dict(read_json(run.config, "run config")["config"])
    diffs = cfg.differences(stored)
    if diffs:
        shown = ", ".join(f"{k}={getattr(cfg, k)!r} (run has {getattr(stored, k)!r})" for k in diffs[:3])
        raise PkdError(f"cannot resume {run.path} with a different config: {shown}")


def _write_config(run: RunDir, cfg: DistillConfig, resolved: dict[str, Any], resume: bool) -> None:
    if resume and run.config.is_file():
        previous = read_json(run.config, "run config").get("resolved", {})
        for key in ("global_batch", "images", "steps_per_epoch"):
            if key in previous and previous[key] != resolved[key]:
                raise PkdError(f"cannot resume {run.path}: {key} was {previous[key]}, now {resolved[key]} "
                               "(same data and number of processes needed)")
    write_json(run.config, {
        "kind": "promptkd-edge/distill-run", "config": cfg.to_dict(), "resolved": resolved,
        "versions": {"promptkd_edge": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "open_clip": distribution_version("open_clip_torch")}})
