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
            _err().print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _err().print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _err():
    from rich.console import Console

    return Console(stderr=True)


def _out():
    from rich.console import Console

    return Console()


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _progress(enabled: bool = True):
    from promptkd_edge.utils.progress import NullProgress, RichProgress

    return RichProgress() if enabled and _is_main_rank() else NullProgress()


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
    log_every: int = typer.Option(10, help="Flush metrics every N steps.", rich_help_panel="Training"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Stage II: distill the teacher into a prompted student on unlabeled images (PromptKD)."""
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
                 + (f", {result.bad_images} unreadable images skipped" if result.bad_images else ""))
    _out().print(f"student weights: {Path(run_dir) / 'student.safetensors'}")


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
    from promptkd_edge.eval.accuracy import evaluate_run
    from promptkd_edge.train.distributed import resolve_device

    result = evaluate_run(run, data, with_teacher=teacher, device=str(resolve_device(device)),
                          batch_size=batch_size, workers=workers, allow_pickle=allow_pickle,
                          progress=_progress(not as_json))
    if as_json:
        _print_json(result.to_dict())
        return
    from rich.table import Table

    table = Table(title=f"{run} on {data} ({result.images} images, {result.classes} classes)")
    table.add_column("model")
    table.add_column("top-1", justify="right")
    for name, acc in result.top1.items():
        table.add_row(name, f"{100 * acc:.2f} %")
    for name, agree in result.agreement.items():
        table.add_row(f"agreement {name}", f"{100 * agree:.2f} %")
    _out().print(table)
    if result.bad_images:
        _err().print(f"{len(result.bad_images)} unreadable images skipped (e.g. {result.bad_images[0]})")


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
    """The embedded demo: a generated texture domain, tiny CLIPs, both PromptKD stages. Downloads nothing."""
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
    acc = Table(title=f"test top-1 ({report.test_images} images, {report.classes} classes, chance "
                      f"{100 / report.classes:.0f} %)")
    acc.add_column("model")
    acc.add_column("top-1", justify="right")
    for name, value in report.top1.items():
        acc.add_row(name, f"{100 * value:.1f} %")
    acc.add_row("agreement student/teacher", f"{100 * report.agreement:.1f} %")
    _out().print(times)
    _out().print(acc)
    _out().print(f"run: {report.distill['run']} (student.safetensors, metrics.jsonl, loss.png)")


# ---------------------------------------------------------------------------------------------------- models


@app.command(epilog="[bold]Examples[/bold]\n\n  pkd models\n  pkd models --filter ViT-L --json\n")
@_errors_to_exit
def models(
    filter: str = typer.Option("", "--filter", help="Only architectures containing this text."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
) -> None:
    """List open_clip architectures (including the package's tiny ones) and their pretrained tags."""
    import open_clip

    from promptkd_edge.models.openclip import list_architectures

    rows = {a: open_clip.list_pretrained_tags_by_model(a) for a in list_architectures() if filter in a}
    if as_json:
        _print_json(rows)
        return
    for arch, tags in rows.items():
        _out().print(f"[bold]{arch}[/]" + (f": {', '.join(tags)}" if tags else ""), highlight=False)


def main() -> None:
    app()
