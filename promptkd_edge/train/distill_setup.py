"""The set-up steps of `pkd distill` (train/distill.py): inputs, teacher, class vectors, student, data, optimizer,
and the run's config.json. Each is called once, in the recipe's order; the random-number order depends on it."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from promptkd_edge.data.datasets import PairedViews, collate_skipping_bad
from promptkd_edge.data.sampling import EpochSampler
from promptkd_edge.data.shards import ShardViews, is_shard_spec
from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import CLASSES_FILE, read_class_names
from promptkd_edge.formats.run import RunDir
from promptkd_edge.models.class_vectors import ClassVectors, compute_class_vectors
from promptkd_edge.models.openclip import Preprocess, load_clip, preprocess_for, weights_file_for
from promptkd_edge.models.student import Student, StudentConfig, build_student
from promptkd_edge.models.teacher import Teacher, base_spec, load_teacher, teacher_fingerprint
from promptkd_edge.train import teacher_cache
from promptkd_edge.train.config import DistillConfig
from promptkd_edge.train.distributed import Runtime, barrier
from promptkd_edge.train.schedule import Optimization
from promptkd_edge.utils.files import read_json, sha256_file, write_json
from promptkd_edge.utils.image_files import list_images
from promptkd_edge.utils.progress import Progress
from promptkd_edge.utils.versions import distribution_version, recorded_versions


@dataclass
class Inputs:
    """The training images (a listing, or WebDataset shards) and the class names, checked before any model loads."""

    shards: bool
    paths: list[Path]  # empty for shards
    names: list[str] | None  # None when the class vectors come from elsewhere


def check_inputs(cfg: DistillConfig) -> Inputs:
    """List the images and read the class names; a missing folder or weights file fails here, before any load."""
    shards = is_shard_spec(cfg.data)
    if shards and cfg.teacher_cache:
        raise PkdError("--teacher-cache needs a folder or file list of images, not WebDataset shards")
    if shards and not cfg.shard_epoch_size:
        raise PkdError("WebDataset shards have no length: pass --shard-epoch-size (images per epoch)")
    paths = [] if shards else list_images(cfg.data)
    names = read_class_names(cfg.classes) if cfg.classes and not cfg.class_vectors else None
    for spec in (cfg.student, base_spec(cfg.teacher)):
        weights_file_for(spec)
    return Inputs(shards, paths, names)


class LazyTeacher:
    """The teacher, loaded on first use: a run with cached features and stored class vectors never loads it."""

    def __init__(self, cfg: DistillConfig, device: torch.device, progress: Progress):
        self.cfg, self.device, self.progress = cfg, device, progress
        self._teacher: Teacher | None = None

    def get(self) -> Teacher:
        if self._teacher is None:
            self.progress.note(f"loading teacher {self.cfg.teacher}")
            torch.manual_seed(self.cfg.seed)  # weights without a file (random) are the same in every process and run
            self._teacher = load_teacher(self.cfg.teacher, device=self.device, allow_pickle=self.cfg.allow_pickle)
        return self._teacher

    def release(self) -> None:
        """Free the teacher's memory (training reads the cache)."""
        self._teacher = None


def run_class_vectors(cfg: DistillConfig, run: RunDir, rt: Runtime, names: list[str] | None,
                      teacher: LazyTeacher, progress: Progress) -> ClassVectors:
    """The class vectors of the run: computed (or copied) once into the run directory, then read from there."""
    if rt.is_main and not (run.path / CLASSES_FILE).is_file():
        _class_vectors(cfg, names, teacher, progress).save(run.path)
    barrier(rt)
    return ClassVectors.load(run.path).to(rt.device)


def _class_vectors(cfg: DistillConfig, names: list[str] | None, teacher: LazyTeacher,
                   progress: Progress) -> ClassVectors:
    if cfg.class_vectors or names is None:  # given, or those of the `pkd teacher` run given as --teacher
        source = cfg.class_vectors or cfg.teacher
        vectors = ClassVectors.load(source)
        if vectors.teacher != cfg.teacher:
            raise PkdError(f"the class vectors in {source} come from teacher {vectors.teacher}, "
                           f"not --teacher {cfg.teacher}")
        return vectors
    progress.note(f"computing class vectors for {len(names)} classes with {cfg.teacher}")
    return compute_class_vectors(teacher.get(), names, cfg.template)


def setup_student(cfg: DistillConfig, device: torch.device, teacher_dim: int, progress: Progress) -> Student:
    """The frozen open_clip tower with its family's adaptation (prompts for ViTs) and a projector to the teacher's
    dimension."""
    progress.note(f"loading student {cfg.student}")
    torch.manual_seed(cfg.seed)
    clip = load_clip(cfg.student, device=device, allow_pickle=cfg.allow_pickle)
    config = StudentConfig(
        spec=cfg.student, teacher_dim=teacher_dim, prompt_tokens=cfg.prompt_tokens,
        prompt_depth=cfg.prompt_depth, prompt_init_std=cfg.prompt_init_std, init_seed=cfg.seed,
        weights_sha256=sha256_file(clip.weights_file) if clip.weights_file else None)
    student = build_student(clip, config)
    used = student.config.prompt_depth
    if used != cfg.prompt_depth:
        progress.note(f"--prompt-depth {cfg.prompt_depth}: {cfg.student}'s image tower has {used} blocks, so all "
                      f"{used} get prompts")
    progress.note(f"student adaptation: {student.tower.adaptation}")
    return student


def teacher_feature_cache(cfg: DistillConfig, rt: Runtime, paths: list[Path], dim: int, teacher: LazyTeacher,
                          progress: Progress, amp: torch.dtype | None) -> teacher_cache.TeacherFeatureCache:
    """The teacher's features of `cfg.teacher_cache` views per image: reused when cached, else computed."""
    fingerprint = teacher_fingerprint(cfg.teacher)
    preprocess = preprocess_for(base_spec(cfg.teacher))
    crop_scale = (cfg.crop_scale_min, 1.0)
    key = teacher_cache.cache_key(listing=teacher_cache.listing_digest(paths), teacher=fingerprint,
                                  preprocess=preprocess, views=cfg.teacher_cache, seed=cfg.seed, crop_scale=crop_scale)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else teacher_cache.default_cache_dir()
    jobs = len(paths) * cfg.teacher_cache
    update = progress.task(f"teacher features ({cfg.teacher_cache} views)", -(-jobs // rt.world_size))
    cache, built = teacher_cache.build_or_open(
        rt, paths=paths, key=key, cache_dir=cache_dir, views=cfg.teacher_cache, dim=dim,
        preprocess=preprocess, seed=cfg.seed, crop_scale=crop_scale,
        encode=lambda: teacher.get().encode_image, batch_size=max(cfg.batch_size, 32), workers=cfg.workers,
        max_bad_fraction=cfg.max_bad_fraction, autocast=amp, on_progress=lambda done, total: update(done))
    progress.note(f"teacher features {'computed into' if built else 'reused from'} {cache.path}")
    return cache


@dataclass
class TrainData:
    """Seeded augmented views, one batch list per process and epoch: the same order after a resume."""

    cfg: DistillConfig
    rt: Runtime
    preprocess: dict[str, Preprocess]  # "student" and, unless the teacher's features are cached, "teacher"
    size: int  # images per epoch, all processes
    steps_per_epoch: int
    views: PairedViews | None = field(default=None, repr=False)  # of a folder or file list; None: WebDataset shards

    def batches(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        """The batches of `epoch` after the first `skip` (a mid-epoch checkpoint had used them)."""
        batches = iter(self._loader(epoch, skip))
        if self.views is None:  # shards, a stream: re-read the batches a mid-epoch checkpoint had used
            for _ in range(skip):
                next(batches, None)
        return batches

    def _loader(self, epoch: int, skip: int) -> DataLoader:
        cfg, rt = self.cfg, self.rt
        if self.views is None:
            stream = ShardViews(cfg.data, self.preprocess, cfg.seed, (cfg.crop_scale_min, 1.0),
                                batches=self.steps_per_epoch, batch_size=cfg.batch_size, epoch=epoch, rank=rt.rank)
            return DataLoader(stream, batch_size=cfg.batch_size, num_workers=min(cfg.workers, self.steps_per_epoch),
                              collate_fn=collate_skipping_bad, pin_memory=rt.device.type == "cuda")
        sampler = EpochSampler(self.size, seed=cfg.seed, epoch=epoch, rank=rt.rank, world_size=rt.world_size,
                               views=cfg.teacher_cache or None, skip=skip * cfg.batch_size)
        return DataLoader(self.views, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                          collate_fn=collate_skipping_bad, pin_memory=rt.device.type == "cuda", drop_last=True)


def setup_data(cfg: DistillConfig, rt: Runtime, inputs: Inputs, preprocess: dict[str, Preprocess]) -> TrainData:
    """The data of every epoch; refuses a data set too small for one full batch per process."""
    size = cfg.shard_epoch_size if inputs.shards else len(inputs.paths)
    per_process = -(-size // rt.world_size)
    steps_per_epoch = per_process // cfg.batch_size
    if steps_per_epoch == 0:
        raise PkdError(f"{size} images make no full batch of {cfg.batch_size} per process; "
                       "lower --batch-size or add images")
    views = None if inputs.shards else PairedViews(inputs.paths, preprocess, cfg.seed, (cfg.crop_scale_min, 1.0))
    return TrainData(cfg, rt, preprocess, size, steps_per_epoch, views)


def setup_optimization(cfg: DistillConfig, rt: Runtime, student: Student, steps_per_epoch: int,
                       precision: str) -> Optimization:
    """SGD (or AdamW) over the trainable parameters, warm-up then cosine, lr scaled with the global batch."""
    return Optimization.create(student.trainable_parameters(), cfg, steps_per_epoch=steps_per_epoch,
                               global_batch=cfg.batch_size * rt.world_size,
                               scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"))


def stored_config(run: RunDir) -> DistillConfig:
    """The config `run` was started with, as its config.json records it (from any earlier version)."""
    run.check_existing()
    return DistillConfig.from_stored(read_json(run.config, "run config")["config"])


def resumed_config(run: str | os.PathLike | RunDir, overrides: dict[str, Any] | None = None) -> DistillConfig:
    """The config to continue `run` with: the one it was started with, `overrides` on top (`pkd distill --resume`
    passes the options given on its command line). `distill(..., resume=True)` then refuses any override that would
    change the run's numbers."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    return DistillConfig.from_dict({**stored_config(run).to_dict(), **(overrides or {})})


def check_resumable(cfg: DistillConfig, run: RunDir) -> None:
    """Refuse to resume `run` with a config that would change its numbers."""
    stored = stored_config(run)
    diffs = cfg.differences(stored)
    if diffs:
        shown = ", ".join(f"{k}={getattr(cfg, k)!r} (run has {getattr(stored, k)!r})" for k in diffs[:3])
        raise PkdError(f"cannot resume {run.path} with a different config: {shown}")


def image_list_digest(paths: list[Path]) -> str:
    """The sha256 of the image paths in order: a resume needs the same list (an image's views are a function of
    the seed and its index), while an image fixed in place keeps it."""
    return hashlib.sha256(b"\n".join(os.fsencode(p) for p in paths)).hexdigest()


def write_config(run: RunDir, cfg: DistillConfig, resolved: dict[str, Any], resume: bool) -> None:
    """config.json: the config, what it resolved to and the versions; a resume must resolve to the same data."""
    if resume and run.config.is_file():
        previous = read_json(run.config, "run config").get("resolved", {})
        changed_images = ("images were added or removed since the run started: put the image list back as it was, "
                          "or start a new run with --out")
        for key in ("global_batch", "images", "image_list_sha256", "steps_per_epoch"):
            if key in previous and previous[key] != resolved[key]:
                if key == "image_list_sha256":
                    raise PkdError(f"cannot resume {run.path}: its images were renamed, moved or replaced by others "
                                   "since the run started (same count, other paths); put them back as they were, "
                                   "or start a new run with --out")
                hint = changed_images if key == "images" else "a resumed run needs the same number of processes"
                raise PkdError(f"cannot resume {run.path}: {key} was {previous[key]}, now {resolved[key]}; {hint}")
    write_json(run.config, {
        "kind": "promptkd-edge/distill-run", "config": cfg.to_dict(), "resolved": resolved,
        "versions": {**recorded_versions("torch"), "python": platform.python_version(),
                     "open_clip": distribution_version("open_clip_torch")}})
