"""The distillation config: every knob of `pkd distill`, written resolved into the run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from promptkd_edge.errors import PkdError
from promptkd_edge.models.templates import DEFAULT_TEMPLATE

# What may change when a run is resumed: nothing that changes the numbers. max_bad_fraction only decides whether
# a run stops (an unreadable image is replaced by the same readable neighbour whatever the limit), so a run that
# stopped at the limit can be resumed past it.
RESUMABLE_CHANGES = frozenset({"workers", "log_every", "cache_dir", "compile", "device", "random_init",
                               "max_bad_fraction", "keep_checkpoints"})
# Fields added to DistillConfig after runs were written without them, with the value those runs used
STORED_BEFORE: dict[str, Any] = {
    "schedule": "step",  # runs written before the per-epoch cosine (the official one) stepped their cosine per step
}
MAX_BAD_FRACTION = 0.01  # the default limit of unreadable images, both stages'
BAD_FRACTION_CHECK = "--max-bad-fraction must be in [0, 1)"


def _warmup_check(warmup_epochs: int, epochs: int) -> tuple[bool, str]:
    return (0 <= warmup_epochs < epochs,
            f"--warmup-epochs {warmup_epochs} leaves no epoch of the {epochs} for the cosine schedule; "
            "pass --warmup-epochs 0 or more --epochs")


def _weights_check(flags: dict[str, tuple[str, str]], random_init: bool) -> None:
    """An architecture with no tag and no file trains from random weights: refuse that unless asked for, since a
    forgotten `:openai` would otherwise distill from a random teacher for hours. `flags` maps each flag to (the value
    given, the open_clip spec under it: the same, or the base of a `pkd teacher` run)."""
    from promptkd_edge.models.spec import SCHEMAS, ModelSpec

    if random_init:
        return
    for flag, (given, spec) in flags.items():
        parsed = ModelSpec.parse(spec)
        if spec == given and ("/" in parsed.arch or "\\" in parsed.arch or Path(given).expanduser().exists()):
            continue  # a path (a run that is not there is reported where it is read), not an architecture
        if parsed.pretrained is None and not parsed.arch.startswith(SCHEMAS):
            what = f"{flag} {given}" if spec == given else f"{flag} {given} (a teacher run on {spec})"
            raise PkdError(f"{what} is an architecture without weights, so it would train from random "
                           f"weights: add a tag or a file ({parsed.arch}:openai, {parsed.arch}:/path/to/weights."
                           "safetensors; `pkd models` lists tags), or pass --random-init if that is what you want")


def _first_failure(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed (ok, message) check as a PkdError."""
    for ok, message in checks:
        if not ok:
            raise PkdError(message)


@dataclass
class DistillConfig:
    # teacher and classes
    teacher: str = "ViT-L-14:openai"
    classes: str | None = None  # a class-names file or an ImageFolder; or reuse `class_vectors`
    class_vectors: str | None = None  # a folder with classes.json + class_vectors.safetensors
    template: str = DEFAULT_TEMPLATE
    # student
    student: str = "ViT-B-16:openai"
    prompt_tokens: int = 4
    prompt_depth: int = 9
    prompt_init_std: float = 0.02
    allow_pickle: bool = False
    random_init: bool = False  # allow architectures without weights (tests, speed checks)
    # data
    data: str = ""
    epochs: int = 20
    batch_size: int = 8  # per process
    workers: int = 4
    crop_scale_min: float = 0.08
    max_bad_fraction: float = MAX_BAD_FRACTION
    shard_epoch_size: int = 0  # images per epoch for WebDataset shards (their count is unknown up front)
    # loss
    temperature: float = 1.0
    kd_norm: str = "paper"
    kd_weight: float = 1000.0
    # optimisation
    optimizer: str = "sgd"
    lr: float | None = None  # None: scaled from the reference batch 8 (SGD 0.005)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    schedule: str = "epoch"  # the official per-epoch cosine, or "step"
    # performance
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    teacher_cache: int = 0  # K cached teacher views per image; 0 runs the teacher every step
    cache_dir: str | None = None
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0 = at the end of every epoch only
    keep_checkpoints: int = 2

    def validate(self) -> DistillConfig:
        from promptkd_edge.train.losses import KD_NORMS
        from promptkd_edge.train.schedule import SCHEDULES

        if not self.data:
            raise PkdError("no training data: pass --data FOLDER|FILE_LIST|SHARDS")
        from promptkd_edge.models.teacher import teacher_run_file

        if not self.classes and not self.class_vectors and teacher_run_file(self.teacher) is None:
            raise PkdError("no classes: pass --classes FILE|IMAGEFOLDER or --class-vectors DIR (a `pkd teacher` run "
                           "as --teacher brings its own)")
        from promptkd_edge.models.teacher import base_spec

        _weights_check({"--teacher": (self.teacher, base_spec(self.teacher)),
                        "--student": (self.student, self.student)}, self.random_init)
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 2, "--batch-size must be >= 2 (the projector has BatchNorm)"),
            (self.workers >= 0, "--workers must be >= 0"),
            (0 < self.crop_scale_min <= 1, "--crop-scale-min must be in (0, 1]"),
            (0 <= self.max_bad_fraction < 1, BAD_FRACTION_CHECK),
            (self.temperature > 0, "--temperature must be > 0"),
            (self.kd_norm in KD_NORMS, f"--kd-norm must be one of {', '.join(KD_NORMS)}"),
            (self.kd_weight > 0, "--kd-weight must be > 0"),
            (self.optimizer in ("sgd", "adamw"), "--optimizer must be sgd or adamw"),
            (self.lr is None or self.lr > 0, "--lr must be > 0"),
            _warmup_check(self.warmup_epochs, self.epochs),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.teacher_cache >= 0, "--teacher-cache must be >= 0"),
            (self.prompt_tokens >= 0 and self.prompt_depth >= 0, "prompt tokens and depth must be >= 0"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
            (self.keep_checkpoints >= 1, "--keep-checkpoints must be >= 1"),
            (self.log_every >= 1, "--log-every must be >= 1"),
        ]
        _first_failure(checks)
        return self

    def with_absolute_paths(self) -> DistillConfig:
        """The same config with every local path absolute, so a run can be resumed or evaluated from anywhere."""
        from promptkd_edge.data.shards import is_shard_spec
        from promptkd_edge.models.openclip import ModelSpec

        def spec(text: str) -> str:
            if Path(text).expanduser().exists():  # a `pkd teacher` run (or its teacher.safetensors)
                return str(Path(text).expanduser().resolve())
            parsed = ModelSpec.parse(text)
            if parsed.pretrained and parsed.is_file:
                return f"{parsed.arch}:{Path(parsed.pretrained).expanduser().resolve()}"
            return text

        def path(text: str | None) -> str | None:
            return str(Path(text).expanduser().resolve()) if text else text

        data = self.data if is_shard_spec(self.data) or "://" in self.data else path(self.data)
        return replace(self, teacher=spec(self.teacher), student=spec(self.student), data=data,
                       classes=path(self.classes), class_vectors=path(self.class_vectors),
                       cache_dir=path(self.cache_dir))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PkdError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> DistillConfig:
        """The config a run's config.json stores, written by any earlier version: a field added since takes the
        value that reproduces what that version did (`STORED_BEFORE`), not today's default."""
        return cls.from_dict({**STORED_BEFORE, **d})

    def differences(self, other: DistillConfig) -> list[str]:
        """Fields that differ and would change the result of a resumed run."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]


@dataclass
class TeacherTuneConfig:
    """Stage I, `pkd teacher`: PromptSRC-style prompt tuning of the teacher on K labeled shots per class."""

    teacher: str = "ViT-L-14:openai"
    data: str = ""  # labeled ImageFolder
    class_names: str | None = None  # a names file fixing the class order (default: sorted sub-folders)
    shots: int = 16
    max_bad_fraction: float = MAX_BAD_FRACTION  # of the images read for the shots
    classes: str = "base"  # train on the base half (first ceil(N/2) classes) or on all
    vision_tokens: int = 4
    vision_depth: int = 9
    text_tokens: int = 4
    text_depth: int = 9
    text_init: str = "a photo of a"
    self_consistency: bool = True
    text_targets: str = "promptsrc"  # the frozen text targets' templates: PromptSRC's 60, or "openclip" (80)
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    schedule: str = "epoch"  # the official per-epoch cosine, or "step"
    crop_scale_min: float = 0.08
    text_chunk: int = 128  # classes per text-tower chunk; more classes than this are checkpointed
    device: str = "auto"
    precision: str = "auto"
    workers: int = 4
    seed: int = 1
    allow_pickle: bool = False
    random_init: bool = False  # allow an architecture without weights (tests)

    def validate(self) -> TeacherTuneConfig:
        from promptkd_edge.train.promptsrc import TEXT_TARGETS
        from promptkd_edge.train.schedule import SCHEDULES

        _weights_check({"--teacher": (self.teacher, self.teacher)}, self.random_init)
        checks = [
            (bool(self.data), "no training data: pass --data LABELED_IMAGEFOLDER"),
            (self.shots >= 1, "--shots must be >= 1"),
            (0 <= self.max_bad_fraction < 1, BAD_FRACTION_CHECK),
            (self.classes in ("base", "all"), "--classes must be base or all"),
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            _warmup_check(self.warmup_epochs, self.epochs),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.text_targets in TEXT_TARGETS, f"--text-targets must be one of {', '.join(TEXT_TARGETS)}"),
            (self.optimizer in ("sgd", "adamw"), "--optimizer must be sgd or adamw"),
            (self.lr is None or self.lr > 0, "--lr must be > 0"),
            (self.vision_tokens >= 0 and self.text_tokens >= 1, "prompt tokens must be >= 0 (vision), >= 1 (text)"),
            (self.vision_depth >= 0 and self.text_depth >= 1, "prompt depths must be >= 0 (vision), >= 1 (text)"),
            (self.gpa_std > 0, "--gpa-std must be > 0"),
            (self.text_chunk >= 0, "--text-chunk must be >= 0"),
            (0 < self.crop_scale_min <= 1, "--crop-scale-min must be in (0, 1]"),
        ]
        _first_failure(checks)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
