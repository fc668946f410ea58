"""`pkd`: the command line. Parses, calls one function per command, turns PkdError into one line + exit 2."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from promptkd_edge import __version__
from promptkd_edge.errors import PkdError
from promptkd_edge.utils.text import shown, visible

app = typer.Typer(name="pkd", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  add_completion=False,
                  help="promptkd-edge: distill a CLIP teacher into a prompted CLIP student (PromptKD) and ship it.")
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"promptkd-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for every error."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


def _errors_to_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known problems become one red line on stderr and exit code 2; --debug keeps the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PkdError as e:
            if _state["debug"]:
                raise
            _err().print(f"[bold red]error:[/] {shown(e)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as e:
            line = _missing_module(e)
            if line is None or _state["debug"]:
                raise
            _err().print(f"[bold red]error:[/] {shown(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _err().print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


# What a missing module means: the extra that brings it (pyproject.toml).
MODULE_EXTRAS = {"torch": "train", "torchvision": "train", "open_clip": "train", "matplotlib": "plot",
                 "timm": "train", "onnx": "export", "onnxscript": "export", "onnxslim": "slim",
                 "webdataset": "wds", "openvino": "openvino"}
EXTRA_MODULES = {"train": ("torch", "torchvision", "open_clip"), "export": ("onnx", "onnxscript")}


def _require(command: str, *extras: str) -> None:
    """One line naming the extras a command needs when their modules are missing, before any work."""
    import importlib.util

    missing = [m for e in extras for m in EXTRA_MODULES[e] if importlib.util.find_spec(m) is None]
    if missing:
        raise PkdError(f"`pkd {command}` needs {', '.join(missing)}: pip install "
                       f"'promptkd-edge[{','.join(extras)}]'")


def _missing_module(e: ModuleNotFoundError) -> str | None:
    """One line for a missing module that an extra brings, else None (a bug: keep the traceback)."""
    root = (e.name or "").split(".")[0]
    extra = MODULE_EXTRAS.get(root)
    return f"this needs {root}, which the [{extra}] extra installs: pip install 'promptkd-edge[{extra}]'" \
        if extra else None


def _err():
    from rich.console import Console

    return Console(stderr=True, emoji=False)  # ":name:" in users' text stays as written


def _out():
    from rich.console import Console

    return Console(emoji=False)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _progress(enabled: bool = True):
    """Bars on a terminal; plain periodic lines in a log file or CI; nothing when off or on other DDP ranks."""
    from promptkd_edge.utils.progress import LineProgress, NullProgress, RichProgress

    if not enabled or not _is_main_rank():
        return NullProgress()
    return RichProgress() if sys.stderr.isatty() else LineProgress()


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------------- distill

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


@app.command(epilog=DISTILL_EXAMPLES)
@_errors_to_exit
def distill(
    ctx: typer.Context,
    data: str = typer.Option("", "--data", help="Unlabeled images: a folder (recursive), a text file listing "
                             "paths, or WebDataset shards (needs the \\[wds] extra).", rich_help_panel="Data"),
    out: Path | None = typer.Option(None, "--out", help="New run directory.", rich_help_panel="Data"),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory from its last "
                                       "checkpoint (same config).", rich_help_panel="Data"),
    teacher: str = typer.Option("ViT-L-14:openai", help="Teacher: ARCH, ARCH:TAG or ARCH:/path/to/weights.",
                                rich_help_panel="Models"),
    classes: str | None = typer.Option(None, help="Class names: a text file (one per line) or an ImageFolder "
                                       "(its sub-folders).", rich_help_panel="Models"),
    class_vectors: str | None = typer.Option(None, help="Reuse stored class vectors (a run or folder with "
                                             "classes.json).", rich_help_panel="Models"),
    template: str = typer.Option("a photo of a {}.", help="Text template for the class vectors.",
                                 rich_help_panel="Models"),
    student: str = typer.Option("ViT-B-16:openai", help="Student: ARCH, ARCH:TAG or ARCH:/path/to/weights.",
                                rich_help_panel="Models"),
    prompt_tokens: int = typer.Option(4, help="Visual prompt tokens per layer.", rich_help_panel="Models"),
    prompt_depth: int = typer.Option(9, help="Layers that get their own prompts.", rich_help_panel="Models"),
    allow_pickle: bool = typer.Option(False, help="Allow weight files that need unpickling (TorchScript .pt); "
                                      "only for files you trust.", rich_help_panel="Models"),
    epochs: int = typer.Option(20, help="Epochs over the unlabeled images.", rich_help_panel="Training"),
    batch_size: int = typer.Option(8, help="Images per process and step.", rich_help_panel="Training"),
    lr: float | None = typer.Option(None, help="Learning rate \\[default: SGD 0.005 x global batch / 8; AdamW "
                                    "2.5e-4 x sqrt(global batch / 8)].", rich_help_panel="Training"),
    optimizer: str = typer.Option("sgd", help="sgd (momentum 0.9) or adamw.", rich_help_panel="Training"),
    weight_decay: float = typer.Option(5e-4, help="Weight decay.", rich_help_panel="Training"),
    warmup_epochs: int = typer.Option(1, help="Epochs at the constant warm-up lr before the cosine.",
                                      rich_help_panel="Training"),
    warmup_lr: float = typer.Option(1e-5, help="Warm-up learning rate.", rich_help_panel="Training"),
    schedule: str = typer.Option("epoch", help="epoch: the official cosine, stepped per epoch (the last epoch at "
                                 "~2.5 % of lr); step: a per-step cosine to 0.", rich_help_panel="Training"),
    temperature: float = typer.Option(1.0, help="KD temperature T (the loss is multiplied by T^2).",
                                      rich_help_panel="Training"),
    kd_norm: str = typer.Option("paper", help="paper: KL summed / (batch x classes), as PromptKD; batchmean: "
                                "per-sample mean KL (weight w here = w x classes under paper).",
                                rich_help_panel="Training"),
    kd_weight: float = typer.Option(1000.0, help="Loss weight (PromptKD: 1000; 200 for Aircraft/Flowers/DTD).",
                                    rich_help_panel="Training"),
    crop_scale_min: float = typer.Option(0.08, help="Smallest RandomResizedCrop area fraction.",
                                         rich_help_panel="Training"),
    seed: int = typer.Option(0, help="Seed of initialisation, data order and augmentation.",
                             rich_help_panel="Training"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N.", rich_help_panel="Performance"),
    precision: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 (GradScaler) "
                                  "or fp32.", rich_help_panel="Performance"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the student and teacher.",
                                 rich_help_panel="Performance"),
    workers: int = typer.Option(4, help="DataLoader worker processes.", rich_help_panel="Performance"),
    teacher_cache: int = typer.Option(0, help="Cache the teacher's features for K augmented views per image "
                                      "(computed once, reused across runs); 0 runs the teacher every step.",
                                      rich_help_panel="Performance"),
    cache_dir: str | None = typer.Option(None, help="Where teacher-feature caches live \\[default: "
                                         "~/.cache/promptkd-edge/teacher-features].", rich_help_panel="Performance"),
    max_bad_fraction: float = typer.Option(0.01, help="Abort when more than this fraction of images is "
                                           "unreadable.", rich_help_panel="Data"),
    shard_epoch_size: int = typer.Option(0, help="Images per epoch when --data is WebDataset shards.",
                                         rich_help_panel="Data"),
    checkpoint_every: int = typer.Option(0, help="Also checkpoint every N steps (0: each epoch only).",
                                         rich_help_panel="Training"),
    random_init: bool = typer.Option(False, "--random-init", help="Allow a teacher or student architecture "
                                     "without weights (random initialisation; for tests and dry runs).",
                                     rich_help_panel="Models"),
    log_every: int = typer.Option(10, help="Flush metrics every N steps.", rich_help_panel="Training"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Stage II: distill the teacher into a prompted student on unlabeled images (PromptKD)."""
    _require("distill", "train")
    from promptkd_edge.train.config import DistillConfig
    from promptkd_edge.train.distill import distill as run_distill
    from promptkd_edge.train.run_dir import RunDir
    from promptkd_edge.utils.files import read_json

    given = {k: v for k, v in ctx.params.items() if k not in ("out", "resume", "as_json")}
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise PkdError("pass either --out (a new run) or --resume (an existing one), not both")
        RunDir(resume).check_existing()
        stored = read_json(RunDir(resume).config, "run config")["config"]
        stored.setdefault("schedule", "step")  # runs written before the per-epoch default trained per step
        # typer may carry its own click: compare the source by name
        explicit = {k: v for k, v in given.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
        cfg = DistillConfig.from_dict({**stored, **explicit})
        run_dir = resume
    else:
        if out is None:
            raise PkdError("--out is required (the new run directory), or --resume RUN to continue one")
        cfg = DistillConfig.from_dict(given)
        run_dir = out
    progress = _progress(not as_json or sys.stderr.isatty())
    result = run_distill(cfg, run_dir, resume=resume is not None, progress=progress)
    if not _is_main_rank():
        return
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}
    if as_json:
        _print_json(summary)
        return
    _out().print(f"[bold green]done[/]: {result.steps} steps, {result.images_seen} images in {result.seconds:.1f} s "
                 f"({result.images_per_second:.1f} img/s), final loss {result.final_loss:.4g}"
                 + (f", {result.bad_images} unreadable images skipped (listed in "
                    f"{shown(Path(run_dir) / result.bad_images_file)})" if result.bad_images else ""))
    _out().print(f"student weights: {shown(Path(run_dir) / 'student.safetensors')}")


# ---------------------------------------------------------------------------------------------------- eval

EVAL_EXAMPLES = """
[bold]Examples[/bold]

  pkd eval runs/pets --data data/test
  pkd eval runs/pets --data data/test --teacher --json
"""


@app.command("eval", epilog=EVAL_EXAMPLES)
@_errors_to_exit
def eval_(
    run: Path = typer.Argument(..., help="A distillation run directory."),
    data: Path = typer.Option(..., "--data", help="Labeled ImageFolder whose sub-folders are class names."),
    teacher: bool = typer.Option(False, "--teacher", help="Also score the teacher and the student/teacher "
                                 "agreement."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    batch_size: int = typer.Option(64, help="Images per batch."),
    workers: int = typer.Option(2, help="DataLoader worker processes."),
    allow_pickle: bool = typer.Option(False, help="Allow weight files that need unpickling."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Top-1 accuracy of a run's student (and teacher) on a labeled ImageFolder, and their agreement."""
    _require("eval", "train")
    from promptkd_edge.eval.accuracy import base_novel_note, evaluate_run
    from promptkd_edge.train.distributed import resolve_device

    result = evaluate_run(run, data, with_teacher=teacher, device=str(resolve_device(device)),
                          batch_size=batch_size, workers=workers, allow_pickle=allow_pickle,
                          progress=_progress(not as_json))
    if as_json:
        _print_json(result.to_dict())
        return
    _out().print(_accuracy_table(f"{shown(run)} on {shown(data)} ({result.images} images, {result.classes} classes)",
                                 result.top1, result.base, result.novel, result.hm, result.agreement))
    if result.hm:
        _err().print(visible(base_novel_note(result.class_names)), markup=False, highlight=False)
    if result.bad_images:
        path, why = result.bad_images[0]
        _err().print(f"{len(result.bad_images)} unreadable images skipped (e.g. {shown(path)}: {shown(why)}; "
                     "all of them under `unreadable` in --json)")


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


@app.command(epilog=TEACHER_EXAMPLES)
@_errors_to_exit
def teacher(
    out: Path = typer.Option(..., "--out", help="New teacher run directory."),
    teacher: str = typer.Option("ViT-L-14:openai", help="Base CLIP: ARCH, ARCH:TAG or ARCH:/path/to/weights."),
    data: str = typer.Option("", "--data", help="Labeled ImageFolder (class sub-folders) to take the shots from."),
    class_names: str | None = typer.Option(None, help="Class names file fixing the class order (class ids); "
                                           "default: the sorted sub-folders of --data."),
    shots: int = typer.Option(16, help="Labeled images per class."),
    classes: str = typer.Option("base", help="base: tune on the first ceil(N/2) classes (base-to-novel); all."),
    vision_tokens: int = typer.Option(4, help="Visual prompt tokens per layer.", rich_help_panel="Prompts"),
    vision_depth: int = typer.Option(9, help="Layers with visual prompts.", rich_help_panel="Prompts"),
    text_tokens: int = typer.Option(4, help="Text context tokens per layer.", rich_help_panel="Prompts"),
    text_depth: int = typer.Option(9, help="Layers with text prompts.", rich_help_panel="Prompts"),
    text_init: str = typer.Option("a photo of a", help="Words the text context starts from.",
                                  rich_help_panel="Prompts"),
    self_consistency: bool = typer.Option(True, help="PromptSRC's L1/KL consistency with the frozen model.",
                                          rich_help_panel="PromptSRC"),
    text_targets: str = typer.Option("promptsrc", help="Templates of the frozen text targets: promptsrc (its 60 "
                                     "ImageNet templates) or openclip (open_clip's 80).", rich_help_panel="PromptSRC"),
    text_loss_weight: float = typer.Option(25.0, rich_help_panel="PromptSRC"),
    image_loss_weight: float = typer.Option(10.0, rich_help_panel="PromptSRC"),
    gpa: bool = typer.Option(True, help="Gaussian-weighted aggregation of the prompts over epochs.",
                             rich_help_panel="PromptSRC"),
    gpa_mean: float = typer.Option(15.0, rich_help_panel="PromptSRC"),
    gpa_std: float = typer.Option(1.0, rich_help_panel="PromptSRC"),
    epochs: int = typer.Option(20, rich_help_panel="Training"),
    batch_size: int = typer.Option(8, rich_help_panel="Training"),
    lr: float | None = typer.Option(None, help="\\[default: 0.005 x batch / 8 (SGD)]", rich_help_panel="Training"),
    optimizer: str = typer.Option("sgd", rich_help_panel="Training"),
    warmup_epochs: int = typer.Option(1, rich_help_panel="Training"),
    schedule: str = typer.Option("epoch", help="epoch: the official cosine, stepped per epoch; step: per-step "
                                 "cosine to 0.", rich_help_panel="Training"),
    text_chunk: int = typer.Option(128, help="Classes per text-tower pass; with more classes the passes are "
                                   "checkpointed (memory for 1000 classes).", rich_help_panel="Training"),
    seed: int = typer.Option(1, rich_help_panel="Training"),
    device: str = typer.Option("auto", rich_help_panel="Performance"),
    precision: str = typer.Option("auto", rich_help_panel="Performance"),
    workers: int = typer.Option(4, rich_help_panel="Performance"),
    allow_pickle: bool = typer.Option(False, help="Allow files that need unpickling (TorchScript .pt, some "
                                      "checkpoints); only for files you trust."),
    random_init: bool = typer.Option(False, "--random-init", help="Allow a teacher architecture without weights "
                                     "(random initialisation; for tests and dry runs)."),
    from_official: Path | None = typer.Option(None, help="Convert an official PromptKD/PromptSRC teacher "
                                              "checkpoint instead of training.", rich_help_panel="Import"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Stage I: prompt-tune the CLIP teacher on a few labeled shots (PromptSRC), or import an official one."""
    _require("teacher", "train")
    from promptkd_edge.runtime.names import read_class_names
    from promptkd_edge.train.config import TeacherTuneConfig
    from promptkd_edge.train.teacher import import_official_teacher, tune_teacher

    if from_official is not None:
        if not class_names and not data:
            raise PkdError("--from-official needs the class list: --class-names FILE or --data IMAGEFOLDER")
        names = read_class_names(class_names or data)
        path = import_official_teacher(from_official, teacher, names, out, text_prefix=text_init, device=device,
                                       allow_pickle=allow_pickle)
        summary = {"run_dir": str(path), "imported_from": str(from_official), "classes": len(names)}
    else:
        cfg = TeacherTuneConfig(
            teacher=teacher, data=data, class_names=class_names, shots=shots, classes=classes,
            vision_tokens=vision_tokens, vision_depth=vision_depth, text_tokens=text_tokens, text_depth=text_depth,
            text_init=text_init, self_consistency=self_consistency, text_targets=text_targets,
            text_loss_weight=text_loss_weight, image_loss_weight=image_loss_weight, gpa=gpa, gpa_mean=gpa_mean,
            gpa_std=gpa_std, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            warmup_epochs=warmup_epochs, schedule=schedule, text_chunk=text_chunk, seed=seed, device=device,
            precision=precision, workers=workers, allow_pickle=allow_pickle, random_init=random_init)
        result = tune_teacher(cfg, out, progress=_progress(not as_json))
        summary = {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()}
    if as_json:
        _print_json(summary)
    else:
        run_dir = shown(summary["run_dir"])
        _out().print(f"[bold green]teacher ready[/]: {run_dir} (teacher.safetensors, class vectors); "
                     f"next: pkd distill --teacher {run_dir} ...")
        if summary.get("bad_images"):
            _err().print(f"{summary['bad_images']} unreadable images skipped (listed in "
                         f"{shown(Path(summary['run_dir']) / summary['bad_images_file'])})")


@app.command(epilog="""
[bold]Examples[/bold]

  # class vectors of a new or extended class list from a tuned teacher (or a distillation run's teacher)
  pkd classes runs/teacher --names more_classes.txt --out vectors/more
  pkd classes runs/student --names classes.txt --out vectors/again --json
""")
@_errors_to_exit
def classes(
    run: Path = typer.Argument(..., help="A teacher run, a distillation run, or any folder with classes.json."),
    names: Path = typer.Option(..., "--names", help="Class names: a text file or an ImageFolder."),
    out: Path = typer.Option(..., "--out", help="Folder for classes.json + class_vectors.safetensors."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    allow_pickle: bool = typer.Option(False, help="Allow weight files that need unpickling."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Class vectors W for a new or extended class list, from the run's (prompted) teacher text tower."""
    _require("classes", "train")
    from promptkd_edge.models.class_vectors import CLASSES_FILE, ClassVectors, compute_class_vectors
    from promptkd_edge.models.teacher import DEFAULT_TEMPLATE, load_teacher, require_weights, teacher_run_file
    from promptkd_edge.runtime.names import read_class_names
    from promptkd_edge.train.distributed import resolve_device

    class_names = read_class_names(names)
    if (out / CLASSES_FILE).exists():
        raise PkdError(f"{out} already holds {CLASSES_FILE}; choose another --out")
    existing = ClassVectors.load(run) if (run / CLASSES_FILE).is_file() else None
    is_teacher_run = teacher_run_file(run, strict=False) is not None
    if existing is None and not is_teacher_run:
        raise PkdError(f"{run} is neither a teacher run nor a folder with {CLASSES_FILE}")
    source = str(run.resolve()) if is_teacher_run else existing.teacher
    teacher_model = load_teacher(source, device=resolve_device(device), allow_pickle=allow_pickle)
    require_weights(teacher_model, source, "its class vectors")
    # a zero-shot teacher keeps the run's template, so the original list gives back exactly the run's W
    template = existing.template if existing is not None and not teacher_model.prompted else DEFAULT_TEMPLATE
    vectors = compute_class_vectors(teacher_model, class_names, template)
    vectors.save(out)
    summary = {"out": str(out), "classes": len(class_names), "teacher": vectors.teacher, "dim": vectors.dim}
    if as_json:
        _print_json(summary)
    else:
        _out().print(f"{len(class_names)} class vectors from {shown(vectors.teacher)} written to {shown(out)}")


def _accuracy_table(title: str, top1: dict, base: dict, novel: dict, hm: dict, agreement: dict):
    """All-class top-1 and the base-to-novel protocol (base = first ceil(N/2) classes), one row per model."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("model", "top-1 (all classes)", "base", "novel", "HM"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def pct(d: dict, name: str) -> str:
        return f"{100 * d[name]:.2f} %" if name in d else "-"

    for name in top1:
        table.add_row(shown(name), pct(top1, name), pct(base, name), pct(novel, name), pct(hm, name))
    for name, value in agreement.items():
        table.add_row(f"top-1 agreement {shown(name)}", f"{100 * value:.2f} %", "", "", "")
    return table


# ---------------------------------------------------------------------------------------------------- demo

DEMO_EXAMPLES = """
[bold]Examples[/bold]

  pkd demo                      # everything into ./demo-output, about 3 minutes on 2 CPU cores
  pkd demo --out /tmp/d --json
"""


@app.command(epilog=DEMO_EXAMPLES)
@_errors_to_exit
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for data, weights and the run."),
    quick: bool = typer.Option(False, "--quick", help="A reduced demo (seconds; numbers meaningless)."),
    seed: int = typer.Option(0, help="Seed of the generated domain and of training."),
    workers: int = typer.Option(2, help="DataLoader worker processes."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """The embedded demo: textures seen by a camera at night, tiny CLIPs, both PromptKD stages, and what distillation
    gains over the student's own zero-shot head. Downloads nothing."""
    _require("demo", "train", "export")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from promptkd_edge.demo.pipeline import DemoSize, run_demo

    report = run_demo(out, size=DemoSize.quick() if quick else DemoSize(), seed=seed, workers=workers,
                      progress=_progress(not as_json))
    if as_json:
        _print_json(report.to_dict())
        return
    from rich.table import Table

    times = Table(title="time (s)")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for stage, seconds in report.seconds.items():
        times.add_row(stage, f"{seconds:.1f}")
    times.add_row("[bold]total[/]", f"[bold]{sum(report.seconds.values()):.1f}[/]")
    acc = _accuracy_table(f"test split ({report.test_images} images, {report.classes} classes, chance "
                          f"{100 / report.classes:.0f} %)", report.top1, report.base, report.novel, report.hm,
                          {"student after / teacher tuned": report.agreement})
    _out().print(times)
    _out().print(acc)
    _out().print(report.domain, markup=False, highlight=False)
    _out().print(_demo_gains(report.gains), markup=False, highlight=False)
    _out().print(f"teacher run: {shown(report.teacher['run'])}; student run: {shown(report.distill['run'])} "
                 "(student.safetensors, metrics.jsonl, loss.png)")


def _demo_gains(g: dict[str, float]) -> str:
    """The demo's headline: what distillation did for the student, in points and share of the teacher gap."""
    def closed(metric: str) -> str:
        share = g.get(f"{metric}_gap_closed")
        return f"{100 * share:.0f} %" if share is not None else "n/a (the teacher is not ahead)"

    if "top1_points" not in g:
        return "PromptKD: no gain figures (the report lacks the student before/after rows)"
    hm = f" and {g['hm_points']:+.1f} of base/novel HM" if "hm_points" in g else ""
    return (f"PromptKD: the distilled student scores {g['top1_points']:+.1f} points of all-class top-1{hm} over its "
            f"own zero-shot head and closes {closed('top1')} (top-1) / {closed('hm')} (HM) of the gap to the tuned "
            "teacher, without a single label.")


# ---------------------------------------------------------------------------------------------------- export

EXPORT_EXAMPLES = """
[bold]Examples[/bold]

  # ONNX bundle (FP32, logits head), gated for parity against the PyTorch student
  pkd export runs/pets --out bundles/pets

  # INT8 for CPU edge boxes, calibrated on 400 of the run's unlabeled images
  pkd export runs/pets --out bundles/pets-int8 --precision int8

  # bf16 on a CPU with AMX or AVX512_BF16 (OpenVINO), gated here; or add the gate to an existing bundle
  pkd export runs/pets --out bundles/pets --precision bf16
  pkd export bundles/pets --precision bf16

  # open vocabulary: the teacher's text tower and tokenizer too, so the device can name new classes
  pkd export runs/pets --out bundles/pets-open --head both --text-encoder

  # embeddings + logits, uint8 NHWC input (resize/crop in the app, the rest in the graph)
  pkd export runs/pets --out bundles/pets --head both --uint8-input

  # on the Jetson / GPU machine: add a TensorRT FP16 plan to a bundle (profiles 1/1/1 and 1/8/32)
  pkd export bundles/pets --trt --precision fp16 --trt-profile 1,1,1 --trt-profile 1,8,32 --data images/

  # a Triton model repository entry (config.pbtxt, 1/model.onnx or 1/model.plan, labels.txt)
  pkd export bundles/pets --triton models/ --triton-backend tensorrt

  # DeepStream: a bundle that takes pixels 0-255 (nvinfer's input), its plan built on the device, then the config
  pkd export runs/pets --out bundles/pets-ds --pixel-input
  pkd export bundles/pets-ds --trt --precision fp16 --trt-profile 1,8,16
  pkd export bundles/pets-ds --deepstream deepstream/pets --deepstream-mode secondary --threshold 20
"""


@app.command(epilog=EXPORT_EXAMPLES)
@_errors_to_exit
def export(
    source: Path = typer.Argument(..., help="A distillation run (new bundle) or a bundle (with --trt: add a "
                                  "TensorRT plan built on this machine)."),
    out: Path = typer.Option(None, "--out", help="New bundle folder (not with a bundle as SOURCE)."),
    head: str = typer.Option("logits", help="logits [B, C], embeddings [B, D] (class vectors ship beside it), or "
                             "both."),
    uint8_input: bool = typer.Option(False, "--uint8-input", help="Graph takes uint8 NHWC images at the model "
                                     "resolution and normalises itself."),
    pixel_input: bool = typer.Option(False, "--pixel-input", help="Graph takes float32 NCHW pixels 0-255 at the "
                                     "model resolution and normalises itself (what DeepStream's nvinfer feeds)."),
    precision: str = typer.Option("fp32", help="model.onnx: fp32, fp16 or int8 (ONNX Runtime QDQ); bf16: an FP32 "
                                  "model.onnx with OpenVINO's bf16 gated on this CPU (required; fp32 and int8 exports "
                                  "offer it where OpenVINO and bf16 exist). With --trt: the engine's, fp32, fp16, int8 "
                                  "or fp8."),
    opset: int = typer.Option(20, help="ONNX opset (20 parses on TensorRT 10.3 / JetPack 6)."),
    slim: bool = typer.Option(False, "--slim", help="Simplify the graph with onnxslim (pip install onnxslim)."),
    data: str = typer.Option(None, "--data", help="Images for calibration and parity (default: the run's "
                             "training data; generated images when there are none)."),
    parity_images: int = typer.Option(200, help="Images the parity gate compares on."),
    calibration_images: int = typer.Option(400, help="Images INT8/FP8 calibration sees."),
    calibration_method: str = typer.Option("percentile", help="INT8 calibration: percentile, minmax or entropy."),
    smooth: bool = typer.Option(True, "--smooth/--no-smooth", help="INT8: migrate activation outliers (CLIP's "
                                "massive activations) into the weights first (SmoothQuant); function unchanged."),
    text_encoder: bool = typer.Option(False, "--text-encoder", help="Also ship the teacher's text tower (ONNX, "
                                      "FP32 + FP16) and tokenizer, gated against `pkd classes`, so apps name "
                                      "classes on the device (needs --head embeddings or both)."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT plan here (needs TensorRT 10 or 11)."),
    trt_profile: list[str] = typer.Option(None, "--trt-profile", help="MIN,OPT,MAX batch of one optimization "
                                          "profile; repeat for several (default 1,8,32)."),
    workspace_gib: float = typer.Option(4.0, help="TensorRT builder workspace limit (GiB); 1-2 on 8 GB Jetsons."),
    opt_level: int = typer.Option(3, help="TensorRT builder optimization level 0-5."),
    timing_cache: Path = typer.Option(None, help="Persistent TensorRT timing cache file (read and updated)."),
    triton: Path = typer.Option(None, "--triton", help="With a bundle as SOURCE: write its entry into this Triton "
                                "model repository."),
    triton_backend: str = typer.Option("onnxruntime", help="Triton entry serves model.onnx (onnxruntime) or the "
                                       "bundle's plan (tensorrt)."),
    deepstream: Path = typer.Option(None, "--deepstream", help="With a bundle as SOURCE: write a DeepStream nvinfer "
                                    "config, labels and the plan into this folder (a --pixel-input bundle)."),
    deepstream_mode: str = typer.Option("primary", help="nvinfer process mode: primary (whole frames) or secondary "
                                        "(objects of an upstream detector)."),
    threshold: float = typer.Option(0.0, help="nvinfer classifier-threshold, on the logits (logit scale x cosine)."),
    max_batch: int = typer.Option(None, help="Triton max_batch_size (default 32; a plan's largest profile) or "
                                  "nvinfer batch-size (default: the plan's first profile's max)."),
    force: bool = typer.Option(False, "--force", help="Keep a bundle that fails the parity gate, marked invalid."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
) -> None:
    """Fold the student (prompts, projector, class vectors) into one ONNX graph, gate it, ship it as a bundle."""
    from promptkd_edge.export.bundle import ExportOptions, add_engine, export_run
    from promptkd_edge.runtime.bundle import is_bundle, open_bundle

    if uint8_input and pixel_input:
        raise PkdError("--uint8-input and --pixel-input are two input formats; choose one")
    input_format = "uint8" if uint8_input else "pixels" if pixel_input else "normalized"
    trt_options = _trt_options(trt_profile, workspace_gib, opt_level, timing_cache) if trt else None
    options = ExportOptions(head=head, input_format=input_format, precision=precision, opset=opset, slim=slim,
                            data=data, parity_images=parity_images, calibration_images=calibration_images,
                            calibration_method=calibration_method, smooth=smooth, force=force, overwrite=overwrite,
                            trt=trt_options, text_encoder=text_encoder).validate()
    progress = _progress(not as_json)
    if is_bundle(source):
        if text_encoder:
            raise PkdError("--text-encoder is exported from the run: pkd export RUN --out NEW --head both "
                           "--text-encoder")
        if trt:
            import importlib.util

            if importlib.util.find_spec("onnx") is None:
                raise PkdError("`pkd export BUNDLE --trt` reads the bundle's graph with onnx: pip install "
                               "'promptkd-edge[trt]' (on JetPack: 'promptkd-edge[jetson]')")
        add_bf16 = precision == "bf16" and not trt
        if not trt and not add_bf16 and triton is None and deepstream is None:
            raise PkdError(f"{source} is a bundle; export a run to make a new one, or pass --trt to add a "
                           "TensorRT plan to it, --precision bf16 to gate bf16 on this CPU, or --triton REPO, or "
                           "--deepstream DIR")
        if out is not None:
            raise PkdError("--out is for new bundles; with a bundle as SOURCE the plan is added to it")
        if trt:
            add_engine(source, options, progress=progress)
        if add_bf16:
            from promptkd_edge.export.cpu_gate import add_bf16_gate

            add_bf16_gate(source, data=data, parity_images=parity_images, force=force, progress=progress)
        if triton is not None:
            from promptkd_edge.export.triton import write_repository

            folder = write_repository(source, triton, backend=triton_backend, max_batch=max_batch)
            progress.note(f"Triton model repository entry: {folder}")
        if deepstream is not None:
            from promptkd_edge.export.deepstream import write_config

            config = write_config(source, deepstream, max_batch=max_batch, mode=deepstream_mode,
                                  threshold=threshold)
            progress.note(f"DeepStream nvinfer config: {config} (config-file-path of gst-nvinfer)")
        manifest, where = open_bundle(source).manifest, source
    else:
        if triton is not None or deepstream is not None:
            raise PkdError("--triton and --deepstream take a bundle as SOURCE: export the run first, then "
                           "`pkd export BUNDLE --triton REPO` or `--deepstream DIR`")
        if out is None:
            raise PkdError("pass --out BUNDLE, the folder to write the bundle to")
        _require("export RUN", "train", "export")
        manifest, where = export_run(source, out, options, progress=progress), out
    progress.done()
    if as_json:
        _print_json(manifest)
        return
    _out().print(_parity_table(manifest))
    state = "[green]valid[/]" if manifest["valid"] else "[bold red]INVALID (kept with --force)[/]"
    _out().print(f"bundle {shown(where)}: {state}; model {shown(manifest['model']['file'])} "
                 f"({manifest['model']['precision']}, head {manifest['model']['head']})"
                 + "".join(f"; engine {shown(e['file'])}" for e in manifest["engines"]))


def _trt_options(profiles: list[str] | None, workspace_gib: float, opt_level: int, timing_cache: Path | None):
    from promptkd_edge.export.tensorrt_build import TrtBuildOptions

    parsed = []
    for text in profiles or ["1,8,32"]:
        try:
            parsed.append(tuple(int(v) for v in text.split(",")))
        except ValueError:
            raise PkdError(f"--trt-profile '{text}' is not MIN,OPT,MAX (e.g. 1,8,32)") from None
        if len(parsed[-1]) != 3:
            raise PkdError(f"--trt-profile '{text}' is not MIN,OPT,MAX (e.g. 1,8,32)")
    return TrtBuildOptions(precision="fp32", profiles=parsed, workspace_gib=workspace_gib, opt_level=opt_level,
                           timing_cache=timing_cache)


def _parity_table(manifest: dict):
    from rich.table import Table

    table = Table(title="parity gate (exported model vs PyTorch student)")
    for col in ("target", "precision", "images", "top-1 agreement", "max |d logit|", "min cosine", "result"):
        table.add_column(col, justify="left" if col in ("target", "precision", "result") else "right", overflow="fold")
    for p in manifest["parity"]:
        result = "[green]pass[/]" if p["passed"] else "[red]FAIL[/] " + "; ".join(p["failures"])
        ties = f" ({p['near_tie_flips']} near-tie flips)" if p.get("near_tie_flips") else ""
        table.add_row(shown(p["target"]), p["precision"], str(p["images"]), f"{100 * p['top1_agreement']:.2f} %{ties}",
                      f"{p['max_abs_logit_diff']:.2e}", f"{p['min_cosine']:.6f}", result)
    return table


# ---------------------------------------------------------------------------------------------------- predict

PREDICT_EXAMPLES = """
[bold]Examples[/bold]

  pkd predict bundles/pets cat.jpg dog.png
  pkd predict bundles/pets photos/ --top-k 3 --json > predictions.json
  pkd predict bundles/pets photos/ --backend tensorrt
  pkd predict bundles/pets photos/ --backend openvino --precision bf16 --threads 4

  # other classes, named here (a bundle exported with --text-encoder computes their vectors on this device)
  pkd predict bundles/pets photos/ --classes "red fox, polar bear, snow owl"
  pkd predict bundles/pets photos/ --classes new_classes.txt
"""


@app.command(epilog=PREDICT_EXAMPLES)
@_errors_to_exit
def predict(
    bundle: Path = typer.Argument(..., help="A bundle folder written by `pkd export`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (walked recursively)."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Classes per image."),
    backend: str = typer.Option("auto", help="auto (a TensorRT plan for this GPU, else the fastest gated option "
                                "measured on this CPU, cached), onnxruntime, openvino, tensorrt or torch."),
    precision: str = typer.Option(None, help="Force OpenVINO's precision: fp32 or bf16 (default: bf16 only where "
                                  "the bundle's bf16 gate passed)."),
    threads: int = typer.Option(None, help="CPU threads (default: all usable)."),
    classes: str = typer.Option(None, "--classes", help="Classify into these classes instead of the bundle's: "
                                "comma-separated names, or a class-list file (one per line). Needs a bundle "
                                "exported with --text-encoder."),
    batch_size: int = typer.Option(16, help="Images per batch."),
    allow_invalid: bool = typer.Option(False, help="Load a bundle that failed its parity gate."),
    as_json: bool = typer.Option(False, "--json", help="Print predictions as JSON on stdout."),
) -> None:
    """Top-k classes of images with a bundle (TensorRT, ONNX Runtime or OpenVINO; no torch needed)."""
    from promptkd_edge.data.listing import IMAGE_EXTENSIONS, list_images
    from promptkd_edge.runtime import Classifier
    from promptkd_edge.runtime.preprocess import to_rgb

    if top_k < 1:
        raise PkdError("--top-k must be >= 1")
    files: list[tuple[Path, bool]] = []  # (path, named explicitly)
    for item in images:
        if item.is_dir():
            files += [(p, False) for p in list_images(item)]
        elif item.is_file():
            files.append((item, True))
        else:
            raise PkdError(f"image not found: {item}")
    if not files:
        raise PkdError(f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    clf = Classifier.from_bundle(bundle, backend, allow_invalid=allow_invalid, precision=precision, threads=threads)
    if classes is not None:
        from promptkd_edge.runtime.names import class_names_argument

        clf = clf.with_class_names(class_names_argument(classes))
    for note in clf.notes:
        _err().print(f"[yellow]note:[/] {shown(note)}", highlight=False)
    if clf.choice is not None and not clf.choice.cached and not as_json:
        _err().print(f"[yellow]backend:[/] {shown(clf.choice.picked)}, {shown(clf.choice.reason)}", highlight=False)
    rows, skipped = [], []
    update = _progress(not as_json and len(files) > batch_size).task("predicting", len(files))
    for start in range(0, len(files), batch_size):
        chunk, decoded = files[start:start + batch_size], []
        for path, explicit in chunk:
            try:
                decoded.append((path, to_rgb(path)))
            except PkdError as e:
                if explicit:
                    raise
                skipped.append(f"{path}: {e}")
        if decoded:
            preds = clf.predict([img for _, img in decoded], top_k=top_k, batch_size=batch_size)
            rows += [{"image": str(path), **p.to_dict()} for (path, _), p in zip(decoded, preds, strict=True)]
        update(start + len(chunk))
    if as_json:
        _print_json({"bundle": str(bundle), "backend": clf.description,
                     "backend_choice": clf.choice.to_dict() if clf.choice is not None else None,
                     "predictions": rows, "skipped": skipped})
        return
    from rich.table import Table

    table = Table(title=f"{shown(bundle)} on {shown(clf.description)}")
    common = os.path.commonpath([r["image"] for r in rows]) if len(rows) > 1 else ""
    table.add_column(f"image (in {shown(common)})" if common else "image", overflow="fold")
    table.add_column("top-1")
    table.add_column("p", justify="right")
    if top_k > 1:
        table.add_column(f"next {min(top_k, len(clf.class_names)) - 1}")
    for r in rows:
        rest = ", ".join(f"{shown(n)} {p:.2f}" for n, p in zip(r["labels"][1:], r["probabilities"][1:], strict=True))
        name = os.path.relpath(r["image"], common) if common else r["image"]
        table.add_row(shown(name), shown(r["labels"][0]), f"{r['probabilities'][0]:.3f}",
                      *([rest] if top_k > 1 else []))
    _out().print(table)
    for line in skipped:
        _err().print(f"[yellow]skipped[/] {shown(line)}", highlight=False)


# ---------------------------------------------------------------------------------------------------- doctor


@app.command(epilog="[bold]Examples[/bold]\n\n  pkd doctor\n  pkd doctor --json\n  pkd doctor --no-trt-check\n  "
             "pkd doctor --bundle bundles/pets   # which backend the bundle runs on here, and why\n")
@_errors_to_exit
def doctor(
    trt_check: bool = typer.Option(True, "--trt-check/--no-trt-check", help="Where TensorRT exists, build and run "
                                   "a tiny engine end to end."),
    bundle: Path = typer.Option(None, "--bundle", help="Also load this bundle as `backend=auto` does and say which "
                                "backend it runs on here and why (measured once, then cached)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON on stdout."),
) -> None:
    """What this machine can run: CPU flags, torch + CUDA, ONNX Runtime providers that really load, OpenVINO,
    TensorRT, GPU, Jetson; with --bundle, the backend a bundle runs on here."""
    from promptkd_edge.bench.doctor import probe, summary_rows

    report = probe(run_tensorrt_check=trt_check)
    if bundle is not None:
        from promptkd_edge.runtime import Classifier

        clf = Classifier.from_bundle(bundle)
        report["bundle"] = {"path": str(bundle), "backend": clf.description, "notes": clf.notes,
                            "choice": clf.choice.to_dict() if clf.choice is not None else None}
        clf.close()
    if as_json:
        _print_json(report)
        return
    from rich.table import Table

    table = Table(title="pkd doctor")
    for col in ("component", "status", "detail"):
        table.add_column(col)
    colour = {"ok": "green", "missing": "yellow", "warning": "red"}
    for component, status, detail in summary_rows(report):
        table.add_row(shown(component), f"[{colour.get(status, 'white')}]{status}[/]", shown(detail))
    _out().print(table)
    if bundle is not None:
        b = report["bundle"]
        why = b["choice"]["reason"] + (" (cached)" if b["choice"]["cached"] else "") if b["choice"] else \
            "a TensorRT plan or a GPU provider, or the only option"
        _out().print(f"bundle {shown(bundle)} runs on {shown(b['backend'])}: {shown(why)}")
        for note in b["notes"]:
            _out().print(f"  note: {shown(note)}")


# ---------------------------------------------------------------------------------------------------- bench

BENCH_EXAMPLES = """
[bold]Examples[/bold]

  # the exported bundle on every backend; those this machine cannot run are listed with the reason
  pkd bench bundles/pets

  # ViT-B-16 student against its ViT-L-14 teacher on CPU backends, batch 1 and 8 (random weights)
  pkd bench ViT-B-16 --compare-teacher --teacher ViT-L-14 --classes 100 --batch-sizes 1,8 \\
      --backends torch-eager-fp32,onnxruntime-cpu-fp32,onnxruntime-cpu-int8

  # GPU: eager fp16, compiled, CUDA graphs up to batch 256, with the fraction of the bf16 peak reached
  pkd bench runs/pets --device cuda --batch-sizes 1,8,32,128,256 --peak-tflops 790 --out bench/h200

  # a bundle with a text encoder: also class names per second (1000 names)
  pkd bench bundles/pets-open --text-names 1000

  Backends: torch-eager-fp32|fp16|bf16, torch-compile-fp32|bf16, torch-cudagraphs-bf16,
  onnxruntime-cpu-fp32|int8, openvino-cpu-fp32|bf16|int8|int8-bf16, auto (a bundle: what the runtime picks),
  onnxruntime-cuda-fp32, onnxruntime-tensorrt-fp16, tensorrt (or: all).
"""


@app.command(epilog=BENCH_EXAMPLES)
@_errors_to_exit
def bench(
    target: str = typer.Argument(..., help="A bundle, a distillation run, or an open_clip architecture name "
                                 "(random weights)."),
    backends: str = typer.Option("all", help="Comma list of backends, or all."),
    batch_sizes: str = typer.Option("1,8,32", help="Comma list of batch sizes."),
    warmup: int = typer.Option(10, help="Untimed calls before timing, per backend and batch."),
    iterations: int = typer.Option(50, help="Timed calls (at least), per backend and batch."),
    min_seconds: float = typer.Option(1.0, help="Time each batch for at least this long."),
    max_seconds: float = typer.Option(30.0, help="Stop timing a batch after this long (>= 3 calls)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
    threads: int = typer.Option(None, help="CPU threads for torch and ONNX Runtime (default: all usable)."),
    compare_teacher: bool = typer.Option(False, "--compare-teacher", help="Also time the teacher (its "
                                         "architecture, random weights); report the student's speed-up."),
    teacher: str = typer.Option(None, help="Teacher for --compare-teacher (default: the one the target was "
                                "distilled from, else ViT-L-14)."),
    classes: int = typer.Option(1000, help="Classes of an architecture target's random class vectors."),
    end_to_end: bool = typer.Option(True, "--e2e/--no-e2e", help="Also time decode + preprocess + infer + top-k "
                                    "from image files."),
    images: str = typer.Option(None, help="Image folder for end-to-end timing (default: generated 640x480 "
                               "JPEGs)."),
    e2e_max_batch: int = typer.Option(32, help="Time end to end only up to this batch size."),
    peak_tflops: float = typer.Option(None, help="The GPU's peak TFLOP/s (e.g. 790 bf16 on H200): report the "
                                      "fraction of the FLOP-bound throughput reached."),
    text_names: int = typer.Option(0, "--text-names", help="Also time the bundle's text encoder (export "
                                   "--text-encoder): names per second for this many class names, e.g. 1000."),
    out: Path = typer.Option(None, "--out", help="Folder for bench.json, .csv, .md and .png (default: "
                             "bench-<target>-<time>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Latency and throughput per backend and batch: p50/p90/p99, compute vs end to end, memory, power."""
    import time

    from promptkd_edge.bench.backends import parse_backends
    from promptkd_edge.bench.harness import BenchConfig, run_bench
    from promptkd_edge.bench.report import terminal_table, write_all

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise PkdError(f"--batch-sizes '{batch_sizes}' is not a comma list of integers") from None
    cfg = BenchConfig(target=target, backends=parse_backends(backends), batch_sizes=sizes, warmup=warmup,
                      iterations=iterations, min_seconds=min_seconds, max_seconds=max_seconds, device=device,
                      threads=threads, compare_teacher=compare_teacher, teacher=teacher, classes=classes,
                      end_to_end=end_to_end, images=images, e2e_max_batch=e2e_max_batch, peak_tflops=peak_tflops,
                      text_names=text_names, command=" ".join(["pkd", *sys.argv[1:]])).validate()
    from promptkd_edge.runtime.bundle import is_bundle

    if compare_teacher or not is_bundle(Path(target).expanduser()):  # a bundle alone runs on the core install
        _require("bench", "train")
    progress = _progress(not as_json)
    report = run_bench(cfg, progress)
    progress.done()
    written = write_all(report, out or Path(f"bench-{Path(target).name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    if as_json:
        _print_json(report)
        return
    for mode in ("compute", "end_to_end"):
        if any(r["mode"] == mode for r in report["results"]):
            _out().print(terminal_table(report, mode))
    for c in report["comparisons"]:
        _out().print(f"student speed-up over the teacher, {c['backend']} batch {c['batch']} ({c['mode']}): "
                     f"[bold]{c['speedup']:.2f}x[/]")
    for u in report["unavailable"]:
        _err().print(f"[yellow]not run[/] {u['model']} {u['backend']}: {shown(u['reason'])}", highlight=False)
    _out().print(f"report: {', '.join(shown(p) for p in written.values())}")
    if "png" not in written:
        _out().print("no bench.png: plotting needs matplotlib (pip install 'promptkd-edge[plot]')", markup=False)


# ---------------------------------------------------------------------------------------------------- models


@app.command(epilog="[bold]Examples[/bold]\n\n  pkd models\n  pkd models --filter ViT-L --json\n")
@_errors_to_exit
def models(
    filter: str = typer.Option("", "--filter", help="Only architectures containing this text."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
) -> None:
    """List open_clip architectures (including the package's tiny ones) and their pretrained tags."""
    _require("models", "train")
    import open_clip

    from promptkd_edge.models.openclip import list_architectures

    rows = {a: open_clip.list_pretrained_tags_by_model(a) for a in list_architectures() if filter in a}
    if as_json:
        _print_json(rows)
        return
    from rich.text import Text

    for arch, tags in rows.items():  # Text, not markup: names are printed as they are
        _out().print(Text(visible(arch), style="bold") + Text(f": {visible(', '.join(tags))}" if tags else ""),
                     highlight=False)


def main() -> None:
    app()
