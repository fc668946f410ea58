"""`pkd teacher`, `pkd distill`, `pkd eval`, `pkd classes`: the two PromptKD stages and what a run is scored and
reused with. Option defaults are the config dataclasses' (train/config.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from promptkd_edge.cli.common import (
    accuracy_table,
    app,
    config_values,
    console,
    defaults,
    err,
    errors_to_exit,
    is_main_rank,
    make_progress,
    print_json,
    require,
)
from promptkd_edge.errors import PkdError
from promptkd_edge.formats.run import RunDir
from promptkd_edge.train.config import RESUMABLE_CHANGES, DistillConfig, TeacherTuneConfig
from promptkd_edge.utils.files import fields_as_json
from promptkd_edge.utils.text import shown, visible

_D = defaults(DistillConfig)
_RESUMABLE = ", ".join(f"--{k.replace('_', '-')}" for k in sorted(RESUMABLE_CHANGES))
_T = defaults(TeacherTuneConfig)

DISTILL_EXAMPLES = """
[bold]Examples[/bold]

  # OpenAI ViT-L/14 teacher (zero-shot), ViT-B/16 student, class names from the few-shot ImageFolder
  pkd distill --teacher ViT-L-14:openai --student ViT-B-16:openai \\
      --classes data/fewshot --data data/unlabeled --out runs/pets

  # local weight files, a faster run on one GPU with the teacher-feature cache
  pkd distill --teacher ViT-L-14-quickgelu:weights/ViT-L-14.safetensors \\
      --student ViT-B-16-quickgelu:weights/ViT-B-16.safetensors --classes classes.txt \\
      --data images.txt --batch-size 128 --teacher-cache 10 --out runs/big

  # 8 GPUs (or 2 CPU processes with gloo), then continue after an interruption
  torchrun --nproc-per-node 8 -m promptkd_edge distill ... --out runs/imagenet
  pkd distill --resume runs/imagenet
"""
DATA, MODELS, TRAINING, PERFORMANCE = "Data", "Models", "Training", "Performance"


_DistillData = Annotated[str, typer.Option(
    "--data", rich_help_panel=DATA,
    help="Unlabeled images: a folder (recursive), a text file listing paths, or WebDataset shards (needs the \\[wds] "
         "extra).")]
_DistillOut = Annotated[Path | None, typer.Option("--out", rich_help_panel=DATA, help="New run directory.")]
_DistillResume = Annotated[Path | None, typer.Option(
    "--resume", rich_help_panel=DATA,
    help="Continue the run in this directory from its last "
         "checkpoint (same config; these may change: "
         f"{_RESUMABLE}).")]
_DistillFromCheckpoint = Annotated[str | None, typer.Option(
    "--from-checkpoint", rich_help_panel=DATA,
    help="With --resume: continue from this checkpoint (a folder name under RUN/checkpoints, e.g. step-00000400) "
         "instead of the latest, e.g. when the latest is damaged.")]
_DistillTeacher = Annotated[str, typer.Option(
    rich_help_panel=MODELS, help="Teacher: ARCH, ARCH:TAG or ARCH:/path/to/weights.")]
_DistillClasses = Annotated[str | None, typer.Option(
    rich_help_panel=MODELS, help="Class names: a text file (one per line) or an ImageFolder (its sub-folders).")]
_DistillClassVectors = Annotated[str | None, typer.Option(
    rich_help_panel=MODELS, help="Reuse stored class vectors (a run or folder with classes.json).")]
_DistillTemplate = Annotated[str, typer.Option(rich_help_panel=MODELS, help="Text template for the class vectors.")]
_DistillStudent = Annotated[str, typer.Option(
    rich_help_panel=MODELS, help="Student: ARCH, ARCH:TAG or ARCH:/path/to/weights.")]
_DistillPromptTokens = Annotated[int, typer.Option(rich_help_panel=MODELS, help="Visual prompt tokens per layer.")]
_DistillPromptDepth = Annotated[int, typer.Option(rich_help_panel=MODELS, help="Layers that get their own prompts.")]
_DistillAllowPickle = Annotated[bool, typer.Option(
    rich_help_panel=MODELS,
    help="Allow weight files that need unpickling (TorchScript .pt); only for files you trust.")]
_DistillEpochs = Annotated[int, typer.Option(rich_help_panel=TRAINING, help="Epochs over the unlabeled images.")]
_DistillBatchSize = Annotated[int, typer.Option(rich_help_panel=TRAINING, help="Images per process and step.")]
_DistillLr = Annotated[float | None, typer.Option(
    rich_help_panel=TRAINING,
    help="Learning rate \\[default: SGD 0.005 x global batch / 8; AdamW 2.5e-4 x sqrt(global batch / 8)].")]
_DistillOptimizer = Annotated[str, typer.Option(rich_help_panel=TRAINING, help="sgd (momentum 0.9) or adamw.")]
_DistillWeightDecay = Annotated[float, typer.Option(rich_help_panel=TRAINING, help="Weight decay.")]
_DistillWarmupEpochs = Annotated[int, typer.Option(
    rich_help_panel=TRAINING, help="Epochs at the constant warm-up lr before the cosine.")]
_DistillWarmupLr = Annotated[float, typer.Option(rich_help_panel=TRAINING, help="Warm-up learning rate.")]
_DistillSchedule = Annotated[str, typer.Option(
    rich_help_panel=TRAINING,
    help="epoch: the official cosine, stepped per epoch (the last epoch at ~2.5 % of lr); step: a per-step cosine to "
         "0.")]
_DistillTemperature = Annotated[float, typer.Option(
    rich_help_panel=TRAINING, help="KD temperature T (the loss is multiplied by T^2).")]
_DistillKdNorm = Annotated[str, typer.Option(
    rich_help_panel=TRAINING,
    help="paper: KL summed / (batch x classes), as PromptKD; batchmean: per-sample mean KL (weight w here = w x "
         "classes under paper).")]
_DistillKdWeight = Annotated[float, typer.Option(
    rich_help_panel=TRAINING, help="Loss weight (PromptKD: 1000; 200 for Aircraft/Flowers/DTD).")]
_DistillCropScaleMin = Annotated[float, typer.Option(
    rich_help_panel=TRAINING, help="Smallest RandomResizedCrop area fraction.")]
_DistillSeed = Annotated[int, typer.Option(
    rich_help_panel=TRAINING, help="Seed of initialisation, data order and augmentation.")]
_DistillDevice = Annotated[str, typer.Option(rich_help_panel=PERFORMANCE, help="auto, cpu, cuda or cuda:N.")]
_DistillPrecision = Annotated[str, typer.Option(
    rich_help_panel=PERFORMANCE, help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 (GradScaler) or fp32.")]
_DistillCompile = Annotated[bool, typer.Option(
    "--compile", rich_help_panel=PERFORMANCE, help="torch.compile the student and teacher.")]
_DistillWorkers = Annotated[int, typer.Option(rich_help_panel=PERFORMANCE, help="DataLoader worker processes.")]
_DistillTeacherCache = Annotated[int, typer.Option(
    rich_help_panel=PERFORMANCE,
    help="Cache the teacher's features for K augmented views per image (computed once, reused across runs); 0 runs "
         "the teacher every step.")]
_DistillCacheDir = Annotated[str | None, typer.Option(
    rich_help_panel=PERFORMANCE,
    help="Where teacher-feature caches live \\[default: ~/.cache/promptkd-edge/teacher-features].")]
_DistillMaxBadFraction = Annotated[float, typer.Option(
    rich_help_panel=DATA, help="Abort when more than this fraction of images is unreadable.")]
_DistillShardEpochSize = Annotated[int, typer.Option(
    rich_help_panel=DATA, help="Images per epoch when --data is WebDataset shards.")]
_DistillCheckpointEvery = Annotated[int, typer.Option(
    rich_help_panel=TRAINING, help="Also checkpoint every N steps (0: each epoch only).")]
_DistillKeepCheckpoints = Annotated[int, typer.Option(
    rich_help_panel=TRAINING,
    help="Checkpoints kept, the newest (at least 1; with 2 a resume can fall back past a damaged latest).")]
_DistillRandomInit = Annotated[bool, typer.Option(
    "--random-init", rich_help_panel=MODELS,
    help="Allow a teacher or student architecture without weights (random initialisation; for tests and dry runs).")]
_DistillLogEvery = Annotated[int, typer.Option(rich_help_panel=TRAINING, help="Flush metrics every N steps.")]
_ResultJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


@app.command(epilog=DISTILL_EXAMPLES)
@errors_to_exit
def distill(
    ctx: typer.Context, data: _DistillData = _D.data, out: _DistillOut = None, resume: _DistillResume = None,
    from_checkpoint: _DistillFromCheckpoint = None, teacher: _DistillTeacher = _D.teacher,
    classes: _DistillClasses = _D.classes, class_vectors: _DistillClassVectors = _D.class_vectors,
    template: _DistillTemplate = _D.template, student: _DistillStudent = _D.student,
    prompt_tokens: _DistillPromptTokens = _D.prompt_tokens, prompt_depth: _DistillPromptDepth = _D.prompt_depth,
    allow_pickle: _DistillAllowPickle = _D.allow_pickle, epochs: _DistillEpochs = _D.epochs,
    batch_size: _DistillBatchSize = _D.batch_size, lr: _DistillLr = _D.lr, optimizer: _DistillOptimizer = _D.optimizer,
    weight_decay: _DistillWeightDecay = _D.weight_decay, warmup_epochs: _DistillWarmupEpochs = _D.warmup_epochs,
    warmup_lr: _DistillWarmupLr = _D.warmup_lr, schedule: _DistillSchedule = _D.schedule,
    temperature: _DistillTemperature = _D.temperature, kd_norm: _DistillKdNorm = _D.kd_norm,
    kd_weight: _DistillKdWeight = _D.kd_weight, crop_scale_min: _DistillCropScaleMin = _D.crop_scale_min,
    seed: _DistillSeed = _D.seed, device: _DistillDevice = _D.device, precision: _DistillPrecision = _D.precision,
    compile: _DistillCompile = _D.compile, workers: _DistillWorkers = _D.workers,
    teacher_cache: _DistillTeacherCache = _D.teacher_cache, cache_dir: _DistillCacheDir = _D.cache_dir,
    max_bad_fraction: _DistillMaxBadFraction = _D.max_bad_fraction,
    shard_epoch_size: _DistillShardEpochSize = _D.shard_epoch_size,
    checkpoint_every: _DistillCheckpointEvery = _D.checkpoint_every,
    keep_checkpoints: _DistillKeepCheckpoints = _D.keep_checkpoints, random_init: _DistillRandomInit = _D.random_init,
    log_every: _DistillLogEvery = _D.log_every, as_json: _ResultJson = False,
) -> None:
    """Stage II: distill the teacher into a prompted student on unlabeled images (PromptKD)."""
    require("distill", "train")
    from promptkd_edge.train.distill import distill as run_distill

    cfg, run_dir = _distill_config(ctx, out, resume)
    progress = make_progress(not as_json or sys.stderr.isatty())
    result = run_distill(cfg, run_dir, resume=resume is not None, from_checkpoint=from_checkpoint,
                         progress=progress)
    if not is_main_rank():
        return
    if as_json:
        print_json(fields_as_json(result))
        return
    console().print(f"[bold green]done[/]: {result.steps} steps, {result.images_seen} images in "
                    f"{result.seconds:.1f} s ({result.images_per_second:.1f} img/s), final loss "
                    f"{result.final_loss:.4g}"
                    + (f", {result.bad_images} unreadable images skipped (listed in "
                       f"{shown(Path(run_dir) / result.bad_images_file)})" if result.bad_images else ""))
    console().print(f"student weights: {shown(RunDir(run_dir).student)}")


def _distill_config(ctx: typer.Context, out: Path | None, resume: Path | None) -> tuple[DistillConfig, Path]:
    """The config of a new run (every option), or of a resumed one (its stored config, overridden by the options
    given on the command line), and the run directory."""
    given = config_values(DistillConfig, ctx.params)
    if resume is None:
        if out is None:
            raise PkdError("--out is required (the new run directory), or --resume RUN to continue one")
        return DistillConfig.from_dict(given), out
    if out is not None and Path(out) != Path(resume):
        raise PkdError("pass either --out (a new run) or --resume (an existing one), not both")
    from promptkd_edge.train.distill_setup import resumed_config

    # typer may carry its own click: compare the source by name
    explicit = {k: v for k, v in given.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    return resumed_config(resume, explicit), resume


# ---------------------------------------------------------------------------------------------------- eval

EVAL_EXAMPLES = """
[bold]Examples[/bold]

  pkd eval runs/pets --data data/test
  pkd eval runs/pets --data data/test --teacher --json
"""


@app.command("eval", epilog=EVAL_EXAMPLES)
@errors_to_exit
def eval_(
    run: Annotated[Path, typer.Argument(help="A distillation run directory.")],
    data: Annotated[Path, typer.Option("--data", help="Labeled ImageFolder whose sub-folders are class names.")],
    teacher: Annotated[bool, typer.Option("--teacher", help="Also score the teacher and the student/teacher "
                                          "agreement.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 2,
    allow_pickle: Annotated[bool, typer.Option(help="Allow weight files that need unpickling.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Top-1 accuracy of a run's student (and teacher) on a labeled ImageFolder, and their agreement."""
    require("eval", "train")
    from promptkd_edge.eval.accuracy import base_novel_note, evaluate_run
    from promptkd_edge.utils.devices import resolve_device

    result = evaluate_run(run, data, with_teacher=teacher, device=resolve_device(device),
                          batch_size=batch_size, workers=workers, allow_pickle=allow_pickle,
                          progress=make_progress(not as_json))
    if as_json:
        print_json(result.to_dict())
        return
    console().print(accuracy_table(f"{shown(run)} on {shown(data)} ({result.images} images, {result.classes} "
                                   "classes)", result.top1, result.base, result.novel, result.hm, result.agreement))
    if result.hm:
        err().print(visible(base_novel_note(result.class_names)), markup=False, highlight=False)
    if result.bad_images:
        path, why = result.bad_images[0]
        err().print(f"{len(result.bad_images)} unreadable images skipped (e.g. {shown(path)}: {shown(why)}; "
                    "all of them under `unreadable` in --json)")


# ---------------------------------------------------------------------------------------------------- teacher

TEACHER_EXAMPLES = """
[bold]Examples[/bold]

  # PromptSRC-style tuning of ViT-L/14 on 16 shots of the base classes (the paper's teacher)
  pkd teacher --teacher ViT-L-14:openai --data data/fewshot --shots 16 --classes base --out runs/teacher
  pkd distill --teacher runs/teacher --student ViT-B-16:openai --data data/unlabeled --out runs/student

  # 1000 ImageNet classes on a 24 GB GPU: text tower in chunks of 64 classes, checkpointed
  pkd teacher --teacher ViT-L-14:openai --data imagenet/train --classes all --text-chunk 64 --out runs/in1k

  # import an official PromptKD teacher checkpoint (needs the same base weights)
  pkd teacher --from-official teacher_model/OxfordPets/VLPromptLearner/model-best.pth.tar \\
      --teacher ViT-L-14-quickgelu:weights/ViT-L-14.safetensors --class-names pets.txt --out runs/pets-teacher
"""
PROMPTS, PROMPTSRC = "Prompts", "PromptSRC"


_TeacherOut = Annotated[Path, typer.Option("--out", help="New teacher run directory.")]
_TeacherTeacher = Annotated[str, typer.Option(help="Base CLIP: ARCH, ARCH:TAG or ARCH:/path/to/weights.")]
_TeacherData = Annotated[str, typer.Option(
    "--data", help="Labeled ImageFolder (class sub-folders) to take the shots from.")]
_TeacherClassNames = Annotated[str | None, typer.Option(
    help="Class names file fixing the class order (class ids); default: the sorted sub-folders of --data.")]
_TeacherShots = Annotated[int, typer.Option(
    help="Labeled images per class (an unreadable one is replaced by another image of its class).")]
_TeacherMaxBadFraction = Annotated[float, typer.Option(
    help="Abort when more than this fraction of the images read for the shots is unreadable.")]
_TeacherClasses = Annotated[str, typer.Option(help="base: tune on the first ceil(N/2) classes (base-to-novel); all.")]
_TeacherVisionTokens = Annotated[int, typer.Option(rich_help_panel=PROMPTS, help="Visual prompt tokens per layer.")]
_TeacherVisionDepth = Annotated[int, typer.Option(rich_help_panel=PROMPTS, help="Layers with visual prompts.")]
_TeacherTextTokens = Annotated[int, typer.Option(rich_help_panel=PROMPTS, help="Text context tokens per layer.")]
_TeacherTextDepth = Annotated[int, typer.Option(rich_help_panel=PROMPTS, help="Layers with text prompts.")]
_TeacherTextInit = Annotated[str, typer.Option(rich_help_panel=PROMPTS, help="Words the text context starts from.")]
_TeacherSelfConsistency = Annotated[bool, typer.Option(
    rich_help_panel=PROMPTSRC, help="PromptSRC's L1/KL consistency with the frozen model.")]
_TeacherTextTargets = Annotated[str, typer.Option(
    rich_help_panel=PROMPTSRC,
    help="Templates of the frozen text targets: promptsrc (its 60 ImageNet templates) or openclip (open_clip's 80).")]
_TeacherTextLossWeight = Annotated[float, typer.Option(rich_help_panel=PROMPTSRC)]
_TeacherImageLossWeight = Annotated[float, typer.Option(rich_help_panel=PROMPTSRC)]
_TeacherGpa = Annotated[bool, typer.Option(
    rich_help_panel=PROMPTSRC, help="Gaussian-weighted aggregation of the prompts over epochs.")]
_TeacherGpaMean = Annotated[float, typer.Option(rich_help_panel=PROMPTSRC)]
_TeacherGpaStd = Annotated[float, typer.Option(rich_help_panel=PROMPTSRC)]
_TeacherEpochs = Annotated[int, typer.Option(rich_help_panel=TRAINING)]
_TeacherBatchSize = Annotated[int, typer.Option(rich_help_panel=TRAINING)]
_TeacherLr = Annotated[float | None, typer.Option(
    rich_help_panel=TRAINING, help="\\[default: 0.005 x batch / 8 (SGD)]")]
_TeacherOptimizer = Annotated[str, typer.Option(rich_help_panel=TRAINING)]
_TeacherWarmupEpochs = Annotated[int, typer.Option(rich_help_panel=TRAINING)]
_TeacherSchedule = Annotated[str, typer.Option(
    rich_help_panel=TRAINING, help="epoch: the official cosine, stepped per epoch; step: per-step cosine to 0.")]
_TeacherTextChunk = Annotated[int, typer.Option(
    rich_help_panel=TRAINING,
    help="Classes per text-tower pass; with more classes the passes are checkpointed (memory for 1000 classes).")]
_TeacherSeed = Annotated[int, typer.Option(rich_help_panel=TRAINING)]
_TeacherDevice = Annotated[str, typer.Option(rich_help_panel=PERFORMANCE)]
_TeacherPrecision = Annotated[str, typer.Option(rich_help_panel=PERFORMANCE)]
_TeacherWorkers = Annotated[int, typer.Option(rich_help_panel=PERFORMANCE)]
_TeacherAllowPickle = Annotated[bool, typer.Option(
    help="Allow files that need unpickling (TorchScript .pt, some checkpoints); only for files you trust.")]
_TeacherRandomInit = Annotated[bool, typer.Option(
    "--random-init",
    help="Allow a teacher architecture without weights (random initialisation; for tests and dry runs).")]
_TeacherFromOfficial = Annotated[Path | None, typer.Option(
    rich_help_panel="Import", help="Convert an official PromptKD/PromptSRC teacher checkpoint instead of training.")]


@app.command(epilog=TEACHER_EXAMPLES)
@errors_to_exit
def teacher(
    ctx: typer.Context, out: _TeacherOut, teacher: _TeacherTeacher = _T.teacher, data: _TeacherData = _T.data,
    class_names: _TeacherClassNames = _T.class_names, shots: _TeacherShots = _T.shots,
    max_bad_fraction: _TeacherMaxBadFraction = _T.max_bad_fraction, classes: _TeacherClasses = _T.classes,
    vision_tokens: _TeacherVisionTokens = _T.vision_tokens, vision_depth: _TeacherVisionDepth = _T.vision_depth,
    text_tokens: _TeacherTextTokens = _T.text_tokens, text_depth: _TeacherTextDepth = _T.text_depth,
    text_init: _TeacherTextInit = _T.text_init, self_consistency: _TeacherSelfConsistency = _T.self_consistency,
    text_targets: _TeacherTextTargets = _T.text_targets,
    text_loss_weight: _TeacherTextLossWeight = _T.text_loss_weight,
    image_loss_weight: _TeacherImageLossWeight = _T.image_loss_weight, gpa: _TeacherGpa = _T.gpa,
    gpa_mean: _TeacherGpaMean = _T.gpa_mean, gpa_std: _TeacherGpaStd = _T.gpa_std, epochs: _TeacherEpochs = _T.epochs,
    batch_size: _TeacherBatchSize = _T.batch_size, lr: _TeacherLr = _T.lr, optimizer: _TeacherOptimizer = _T.optimizer,
    warmup_epochs: _TeacherWarmupEpochs = _T.warmup_epochs, schedule: _TeacherSchedule = _T.schedule,
    text_chunk: _TeacherTextChunk = _T.text_chunk, seed: _TeacherSeed = _T.seed, device: _TeacherDevice = _T.device,
    precision: _TeacherPrecision = _T.precision, workers: _TeacherWorkers = _T.workers,
    allow_pickle: _TeacherAllowPickle = _T.allow_pickle, random_init: _TeacherRandomInit = _T.random_init,
    from_official: _TeacherFromOfficial = None, as_json: _ResultJson = False,
) -> None:
    """Stage I: prompt-tune the CLIP teacher on a few labeled shots (PromptSRC), or import an official one."""
    require("teacher", "train")
    from promptkd_edge.train.teacher import import_official_teacher, tune_teacher

    if from_official is not None:
        if not class_names and not data:
            raise PkdError("--from-official needs the class list: --class-names FILE or --data IMAGEFOLDER")
        from promptkd_edge.formats.classes import read_class_names

        names = read_class_names(class_names or data)
        path = import_official_teacher(from_official, teacher, names, out, text_prefix=text_init, device=device,
                                       allow_pickle=allow_pickle)
        summary = {"run_dir": str(path), "imported_from": str(from_official), "classes": len(names)}
    else:
        cfg = TeacherTuneConfig(**config_values(TeacherTuneConfig, ctx.params))
        result = tune_teacher(cfg, out, progress=make_progress(not as_json))
        summary = fields_as_json(result)
    if as_json:
        print_json(summary)
        return
    run_dir = shown(summary["run_dir"])
    console().print(f"[bold green]teacher ready[/]: {run_dir} (teacher.safetensors, class vectors); "
                    f"next: pkd distill --teacher {run_dir} ...")
    if summary.get("bad_images"):
        err().print(f"{summary['bad_images']} unreadable images skipped (listed in "
                    f"{shown(Path(summary['run_dir']) / summary['bad_images_file'])})")
    if summary.get("short_classes"):
        short = summary["short_classes"]
        err().print(f"shots per class: {summary['shots_min']} to {summary['shots_max']} of the {summary['shots']} "
                    f"asked; {len(short)} classes have fewer readable images: "
                    + ", ".join(f"{shown(n)} {k}" for n, k in list(short.items())[:5])
                    + (", ..." if len(short) > 5 else ""))


# ---------------------------------------------------------------------------------------------------- classes

CLASSES_EXAMPLES = """
[bold]Examples[/bold]

  # class vectors of a new or extended class list from a tuned teacher (or a distillation run's teacher)
  pkd classes runs/teacher --names more_classes.txt --out vectors/more
  pkd classes runs/student --names classes.txt --out vectors/again --json
"""


@app.command(epilog=CLASSES_EXAMPLES)
@errors_to_exit
def classes(
    run: Annotated[Path, typer.Argument(help="A teacher run, a distillation run, or any folder with classes.json.")],
    names: Annotated[Path, typer.Option("--names", help="Class names: a text file or an ImageFolder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for classes.json + class_vectors.safetensors.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    allow_pickle: Annotated[bool, typer.Option(help="Allow weight files that need unpickling.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Class vectors W for a new or extended class list, from the run's (prompted) teacher text tower."""
    require("classes", "train")
    from promptkd_edge.formats.classes import CLASSES_FILE, read_class_names
    from promptkd_edge.models.class_vectors import class_vectors_for_run
    from promptkd_edge.utils.devices import resolve_device

    class_names = read_class_names(names)
    if (out / CLASSES_FILE).exists():
        raise PkdError(f"{out} already holds {CLASSES_FILE}; choose another --out")
    vectors = class_vectors_for_run(run, class_names, device=resolve_device(device), allow_pickle=allow_pickle)
    vectors.save(out)
    for note in vectors.notes:  # names cut to fit the text context
        err().print(f"[yellow]note:[/] {shown(note)}", highlight=False)
    if as_json:
        print_json({"out": str(out), "classes": len(class_names), "teacher": vectors.teacher, "dim": vectors.dim,
                    "notes": vectors.notes})
    else:
        console().print(f"{len(class_names)} class vectors from {shown(vectors.teacher)} written to {shown(out)}")
