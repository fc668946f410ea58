"""PromptKD stage II, `pkd distill`: align a prompted student with the teacher on unlabeled images.

The recipe, top to bottom: teacher and class vectors -> student -> data (and the teacher-feature cache) ->
optimizer and schedule -> (resume) -> for each batch: the same augmented view to both models, teacher
logits, student logits, KL * T^2, step -> checkpoint each epoch -> student.safetensors.
The set-up steps are in train/distill_setup.py.
"""

from __future__ import annotations

import contextlib
import functools
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from promptkd_edge.data.datasets import BadImages, TooManyBadImages, write_bad_images
from promptkd_edge.errors import PkdError
from promptkd_edge.formats.run import RunDir, has_checkpoint, matches_checkpoint
from promptkd_edge.models.class_vectors import ClassVectors
from promptkd_edge.models.student import Student, save_student
from promptkd_edge.train.checkpoint import TrainingState, load_latest, save_checkpoint
from promptkd_edge.train.config import DistillConfig
from promptkd_edge.train.distill_setup import (
    LazyTeacher,
    TrainData,
    check_inputs,
    check_resumable,
    image_list_digest,
    run_class_vectors,
    setup_data,
    setup_optimization,
    setup_student,
    teacher_feature_cache,
    write_config,
)
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
from promptkd_edge.train.metrics_log import MetricsLog, plot_loss
from promptkd_edge.train.schedule import Optimization
from promptkd_edge.train.step_log import StepLog
from promptkd_edge.train.teacher_cache import TeacherFeatureCache
from promptkd_edge.utils.files import fields_as_json, write_json
from promptkd_edge.utils.progress import NullProgress, Progress


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


@dataclass
class TrainState:
    """Where the loop is, carried from step to step; a checkpoint stores it (`extra`) with the tensors."""

    bad: BadImages
    log: StepLog  # the steps whose losses are not yet read off the device
    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # batches of `epoch` done
    step: int = 0  # optimizer steps done in total
    seen: int = 0  # images, all processes
    elapsed: float = 0.0  # training seconds of the sessions before this one
    last_loss: float = float("nan")
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def begin(cls, checkpoint: TrainingState | None, bad: BadImages, log: StepLog) -> TrainState:
        """At the start, or where `checkpoint` left off."""
        if checkpoint is None:
            return cls(bad, log)
        extra = checkpoint.extra
        bad.add(extra.get("bad_images", []), check=False)
        return cls(bad, log, epoch=checkpoint.epoch, step_in_epoch=checkpoint.step_in_epoch, step=checkpoint.step,
                   seen=extra.get("images_seen", 0), elapsed=extra.get("seconds", 0.0),
                   last_loss=extra.get("loss", float("nan")))

    def seconds(self) -> float:
        """Training time of the run so far, over all its sessions."""
        return self.elapsed + time.perf_counter() - self.started

    def write_log(self) -> None:
        """Write the buffered steps to metrics.jsonl (one device sync) and keep the last loss."""
        if len(self.log):
            self.last_loss = self.log.flush(self.seconds())["loss"]

    def extra(self) -> dict[str, Any]:
        """What a checkpoint stores besides the tensors and the position."""
        return {"seconds": self.seconds(), "images_seen": self.seen, "loss": self.last_loss,
                "bad_images": [list(r) for r in self.bad.records()]}


@dataclass
class Models:
    """The two sides of a step: the student as trained and the teacher's features (the cache or the teacher)."""

    student: Student
    forward: Callable[[torch.Tensor], torch.Tensor]  # the student, under DDP and torch.compile when asked
    class_vectors: ClassVectors
    cache: TeacherFeatureCache | None
    encode_teacher: Callable[[torch.Tensor], torch.Tensor] | None  # None with the cache
    amp: torch.dtype | None  # the autocast dtype; None in fp32


def distill(cfg: DistillConfig, out: str | Path, *, resume: bool = False, from_checkpoint: str | None = None,
            progress: Progress | None = None,
            on_checkpoint: Callable[[TrainingState], None] | None = None) -> DistillResult:
    """Run (or, with `resume`, continue) a distillation into the run directory `out`; `from_checkpoint` names the
    checkpoint to continue from when not the latest (one before a damaged latest). To continue a run with the config
    it was started with (a few options changed, as `pkd distill --resume` does), pass
    `train.distill_setup.resumed_config(out, overrides)` as `cfg`."""
    cfg = cfg.validate().with_absolute_paths()
    if from_checkpoint and not resume:
        raise PkdError("--from-checkpoint continues an existing run: pass it with --resume RUN")
    rt = init_runtime(cfg.device)
    run = RunDir(out)
    existed = run.path.is_dir()
    fresh = not resume and (not run.path.exists() or (existed and not any(run.path.iterdir())))
    try:
        return _distill(cfg, run, resume, from_checkpoint, rt, progress or NullProgress(), on_checkpoint)
    except PkdError as e:
        if isinstance(e, TooManyBadImages) and has_checkpoint(run.checkpoints):
            raise PkdError(_bad_images_advice(run, rt, e)) from None
        if fresh and rt.is_main and not run.checkpoints.exists():  # failed before training: leave nothing behind
            _remove_new_run(run, existed)
        raise
    finally:
        shutdown(rt)


def _remove_new_run(run: RunDir, existed: bool) -> None:
    """Remove what a new run wrote: the folder, or its contents when the folder was there (empty) before."""
    if not existed:
        shutil.rmtree(run.path, ignore_errors=True)
        return
    for child in run.path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _bad_images_advice(run: RunDir, rt: Runtime, e: TooManyBadImages) -> str:
    """The abort of a run that has a checkpoint, with what a resume accepts: the same image list (views are a
    function of the seed and the image's index), fixed images, a higher --max-bad-fraction. Lists the unreadable
    images found so far in RUN/bad_images.txt."""
    listed = run.path / "bad_images.txt"
    if rt.is_main:
        write_bad_images(listed, e.bad)
    found = len(e.bad.found) / max(e.bad.total, 1)
    limit = next((f for f in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9) if f > found), 0.99)
    launcher = "torchrun <the same options> -m promptkd_edge distill" if rt.distributed else "pkd distill"
    command = f"{launcher} --resume {shlex.quote(str(run.path))}"
    return (f"{e.finding}; all found so far are listed in {listed}. Fix them (same paths) and run `{command}`, "
            f"or resume past them with a higher limit: `{command} --max-bad-fraction {limit}`; removing them "
            "changes the image list, which only a new run (--out) accepts")


def _distill(cfg: DistillConfig, run: RunDir, resume: bool, from_checkpoint: str | None, rt: Runtime,
             progress: Progress, on_checkpoint: Callable[[TrainingState], None] | None) -> DistillResult:
    """The recipe of the module docstring, step by step."""
    precision = resolve_precision(cfg.precision, rt.device)
    amp = autocast_dtype(precision)
    _open_run_dir(cfg, run, resume, rt)

    # 0. Inputs first: a missing folder or weights file fails before any model is loaded.
    inputs = check_inputs(cfg)

    # 1. Teacher (loaded only when needed) and its class vectors, computed once and stored in the run.
    teacher = LazyTeacher(cfg, rt.device, progress)
    class_vectors = run_class_vectors(cfg, run, rt, inputs.names, teacher, progress)

    # 2. Student: frozen open_clip tower + prompts + projector to the teacher's dimension.
    student = setup_student(cfg, rt.device, class_vectors.dim, progress)

    # 3. Data, and the teacher's features when they are cached.
    cache = None
    if cfg.teacher_cache:
        cache = teacher_feature_cache(cfg, rt, inputs.paths, class_vectors.dim, teacher, progress, amp)
    preprocess = {"student": student.preprocess}
    if cache is None:
        preprocess["teacher"] = teacher.get().clip.preprocess
    else:
        teacher.release()  # training reads the cache
    data = setup_data(cfg, rt, inputs, preprocess)

    # 4. Optimizer over prompts + projector only, warm-up then cosine.
    optim = setup_optimization(cfg, rt, student, data.steps_per_epoch, precision)
    if rt.is_main:
        write_config(run, cfg, _resolved(cfg, rt, precision, data, optim, student, class_vectors), resume)

    # 5. Resume: every tensor of the training state, then the same data order from the same step.
    checkpoint = _resume(cfg, run, rt, student, optim, progress, from_checkpoint) if resume else None
    models = _models(cfg, rt, student, class_vectors, teacher, cache, amp)

    # 6. The loop: an epoch, then a checkpoint.
    resume_step = (checkpoint.step if checkpoint else 0) if resume else None  # metrics past it are dropped
    with (MetricsLog(run.metrics, resume_step) if rt.is_main else contextlib.nullcontext()) as metrics:
        state = TrainState.begin(checkpoint, BadImages(data.size, cfg.max_bad_fraction), StepLog(metrics))
        save = functools.partial(_save, cfg, run, rt, student, optim, metrics, on_checkpoint)
        while state.epoch < cfg.epochs:
            train_one_epoch(cfg, models, optim, data, state, progress, save)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
            save(state)
        return _finish(run, rt, cfg.epochs, state, cache, progress)


def train_one_epoch(cfg: DistillConfig, models: Models, optim: Optimization, data: TrainData, state: TrainState,
                    progress: Progress, save: Callable[[TrainState], None]) -> None:
    """The epoch `state.epoch` from batch `state.step_in_epoch` on: a KD step per batch, its metrics every
    `cfg.log_every` steps, a checkpoint every `cfg.checkpoint_every` steps."""
    batches = data.batches(state.epoch, state.step_in_epoch)
    models.student.train()
    update = progress.task(f"epoch {state.epoch + 1}/{cfg.epochs}", data.steps_per_epoch)
    update(state.step_in_epoch)
    for batch in batches:
        state.bad.add(batch["bad"])
        if batch["size"] < 2:
            continue
        if state.step_in_epoch == data.steps_per_epoch:
            break
        loss = kd_step_loss(cfg, models, batch, data.rt.device)
        lr = optim.step(loss)
        state.step += 1
        state.step_in_epoch += 1
        state.seen += batch["size"] * data.rt.world_size

        state.log.add({"step": state.step, "epoch": state.epoch, "lr": lr, "images_seen": state.seen},
                      {"loss": loss})
        epoch_done = state.step_in_epoch == data.steps_per_epoch
        if len(state.log) >= cfg.log_every or epoch_done:
            state.write_log()
            update(state.step_in_epoch, loss=state.last_loss, lr=lr)
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and not epoch_done:
            save(state)


def kd_step_loss(cfg: DistillConfig, models: Models, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The same augmented view to both models, logits against the class vectors, weighted KL * T^2."""
    images = batch["student"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=models.amp, enabled=models.amp is not None):
        if models.cache is not None:
            teacher_features = models.cache.lookup(batch["index"], batch["view"]).to(device)
        else:
            teacher_features = models.encode_teacher(batch["teacher"].to(device, non_blocking=True))
        student_features = models.forward(images)
    teacher_logits = models.class_vectors.logits(teacher_features.float())
    student_logits = models.class_vectors.logits(student_features.float())
    return cfg.kd_weight * kd_loss(student_logits, teacher_logits, cfg.temperature, cfg.kd_norm)


def _save(cfg: DistillConfig, run: RunDir, rt: Runtime, student: Student, optim: Optimization,
          metrics: MetricsLog | None, on_checkpoint: Callable[[TrainingState], None] | None,
          state: TrainState) -> None:
    """student.safetensors and a checkpoint of `state` that records its sha256 (the pending metrics written
    first), then loss.png."""
    state.write_log()
    checkpoint = TrainingState(
        epoch=state.epoch, step=state.step, step_in_epoch=state.step_in_epoch, student=student.trained_state(),
        optimizer=optim.optimizer.state_dict(), scheduler=optim.scheduler.state_dict(),
        scaler=optim.scaler.state_dict() if optim.scaler.is_enabled() else None, extra=state.extra())
    if metrics is not None:  # the main process
        metrics.flush()
        save_student(student, run.student)
        save_checkpoint(run.checkpoints, checkpoint, keep=cfg.keep_checkpoints, files={run.student.name: run.student})
        plot_loss(run.metrics, run.plot, title=f"pkd distill: {run.path.name}")
    barrier(rt)
    if on_checkpoint:
        on_checkpoint(checkpoint)


def _finish(run: RunDir, rt: Runtime, epochs: int, state: TrainState, cache: TeacherFeatureCache | None,
            progress: Progress) -> DistillResult:
    """The result, with the unreadable images of every process; summary.json and bad_images.txt."""
    seconds = state.seconds()
    result = DistillResult(run_dir=run.path, epochs=epochs, steps=state.step, images_seen=state.seen,
                           seconds=seconds, images_per_second=state.seen / max(seconds, 1e-9),
                           final_loss=state.last_loss, bad_images=len(state.bad.found),
                           teacher_cache=str(cache.path) if cache else None)
    if rt.distributed:  # every rank skipped its own share of the unreadable images
        for records in gather_objects(rt, state.bad.records()):
            state.bad.add(records, check=False)
        result.bad_images = len(state.bad.found)
    if rt.is_main:
        result.bad_images_file = write_bad_images(run.path / "bad_images.txt", state.bad)
        write_json(run.summary, fields_as_json(result))
    progress.done()
    return result


def _open_run_dir(cfg: DistillConfig, run: RunDir, resume: bool, rt: Runtime) -> None:
    """A new run needs an empty folder; a resumed one, a run with the same config."""
    if resume:
        run.check_existing()
        if not has_checkpoint(run.checkpoints):
            raise PkdError(f"{run.path} has no checkpoint to resume from (it was stopped before its first "
                           "checkpoint); start it again with --out: another folder, or this one after deleting it")
        check_resumable(cfg, run)
    elif rt.is_main:
        run.check_new()
    barrier(rt)
    run.path.mkdir(parents=True, exist_ok=True)


def _resolved(cfg: DistillConfig, rt: Runtime, precision: str, data: TrainData, optim: Optimization,
              student: Student, class_vectors: ClassVectors) -> dict[str, Any]:
    """What the config resolved to on this machine, for config.json."""
    return {"lr": optim.lr, "global_batch": cfg.batch_size * rt.world_size, "world_size": rt.world_size,
            "precision": precision, "device": rt.device.type, "images": data.size,
            "image_list_sha256": image_list_digest(data.views.paths) if data.views else None,
            "steps_per_epoch": data.steps_per_epoch, "total_steps": cfg.epochs * data.steps_per_epoch,
            "student": student.config.__dict__,
            "trainable_parameters": sum(p.numel() for p in student.trainable_parameters()),
            "class_count": len(class_vectors.names), "logit_scale": class_vectors.logit_scale}


def _resume(cfg: DistillConfig, run: RunDir, rt: Runtime, student: Student, optim: Optimization,
            progress: Progress, name: str | None) -> TrainingState:
    """Load the latest checkpoint's (or checkpoint `name`'s) tensors, checked against their sha256, into the
    student, optimizer, schedule and scaler."""
    checkpoint = load_latest(run.checkpoints, name)
    if checkpoint is None:  # _open_run_dir refused a run without one
        raise PkdError(f"{run.path} has no checkpoint to resume from")
    if not checkpoint.verified:
        progress.note(f"checkpoint {checkpoint.name} has no checksums (written by an earlier promptkd-edge): "
                      "resuming from it unverified")
    student.load_trained_state({k: v.to(rt.device) for k, v in checkpoint.student.items()}, "checkpoint")
    optim.optimizer.load_state_dict(checkpoint.optimizer)
    optim.scheduler.load_state_dict(checkpoint.scheduler)
    if checkpoint.scaler:
        optim.scaler.load_state_dict(checkpoint.scaler)
    if rt.is_main and matches_checkpoint(run.checkpoints, checkpoint.name, run.student) is False:
        progress.note(f"{run.student} is not the one of {checkpoint.name} (changed, or written after it): "
                      "rewritten from the checkpoint")
        save_student(student, run.student)
    if checkpoint.epoch >= cfg.epochs:
        progress.note(f"{run.path} has already finished its {cfg.epochs} epochs")
    else:
        progress.note(f"resuming {run.path} at epoch {checkpoint.epoch + 1}, step {checkpoint.step} "
                      f"({checkpoint.name})")
    return checkpoint


def _models(cfg: DistillConfig, rt: Runtime, student: Student, class_vectors: ClassVectors, teacher: LazyTeacher,
            cache: TeacherFeatureCache | None, amp: torch.dtype | None) -> Models:
    """The student wrapped for training (DDP under torchrun, then torch.compile with --compile) and the teacher's
    image encoder (compiled too) unless its features are cached."""
    model: torch.nn.Module = student
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(student, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.compile else model
    encode_teacher = None
    if cache is None:
        encode_teacher = teacher.get().encode_image
        if cfg.compile:
            encode_teacher = torch.compile(encode_teacher)
    return Models(student, forward, class_vectors, cache, encode_teacher, amp)
