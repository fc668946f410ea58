"""`pkd predict`: a bundle onto images, top-k classes per image (the core install: no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from promptkd_edge.cli.common import app, console, err, errors_to_exit, make_progress, print_json
from promptkd_edge.errors import PkdError
from promptkd_edge.runtime.backends import help_text as backend_help
from promptkd_edge.utils.text import shown

SKIPPED_EXIT_CODE = 3  # `pkd predict`: predictions written, some images skipped (2: an error, nothing predicted)

PREDICT_EXAMPLES = """
[bold]Examples[/bold]

  pkd predict bundles/pets cat.jpg dog.png
  pkd predict bundles/pets photos/ --top-k 3 --json > predictions.json
  pkd predict bundles/pets photos/ --backend tensorrt
  pkd predict bundles/pets photos/ --backend openvino --precision bf16 --threads 4

  # other classes, named here (a bundle exported with --text-encoder computes their vectors on this device)
  pkd predict bundles/pets photos/ --classes "red fox, polar bear, snow owl"
  pkd predict bundles/pets photos/ --classes @new_classes.txt
"""


@app.command(epilog=PREDICT_EXAMPLES)
@errors_to_exit
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `pkd export`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively). An image that "
                                                 "cannot be read, named here or found in a folder, is skipped and "
                                                 "named on stderr (under `skipped` with --json); the exit code is "
                                                 "then 3, and 2 when no image could be read.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes per image.")] = 5,
    backend: Annotated[str, typer.Option(help=backend_help())] = "auto",
    precision: Annotated[str | None, typer.Option(help="Force OpenVINO's precision: fp32 or bf16 (default: bf16 "
                                                  "only where the bundle's bf16 gate passed).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all usable).")] = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Classify into these classes instead of the "
                                                "bundle's: comma-separated names, or @FILE for a class-list file "
                                                "(one per line) and @FOLDER for an ImageFolder's sub-folders. Needs "
                                                "a bundle exported with --text-encoder.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    workers: Annotated[int | None, typer.Option(min=0, help="Threads that decode and resize the next batches while the "
                                                "backend runs the current one (default: min(4, usable cores); 0: "
                                                "decode on the main thread, in turn with the backend).")] = None,
    allow_invalid: Annotated[bool, typer.Option(help="Load a bundle that failed its parity gate.")] = False,
    exact_preprocess: Annotated[bool, typer.Option("--exact-preprocess", help="Decode JPEGs in full as open_clip "
                                                   "does, not by the faster decode the bundle's gate passed.")
                                ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print predictions as JSON on stdout.")] = False,
) -> None:
    """Top-k classes of images with a bundle (TensorRT, ONNX Runtime or OpenVINO; no torch needed)."""
    from promptkd_edge.runtime import Classifier
    from promptkd_edge.runtime.files import image_files, predict_files

    if top_k < 1:
        raise PkdError("--top-k must be >= 1")
    files = image_files(images)
    clf = Classifier.from_bundle(bundle, backend, allow_invalid=allow_invalid, precision=precision, threads=threads,
                                 exact_preprocess=exact_preprocess)
    if classes is not None:
        from promptkd_edge.formats.classes import class_names_argument

        names, notes = class_names_argument(classes)
        clf = clf.with_class_names(names)
        clf.notes += notes
    for note in clf.notes:
        err().print(f"[yellow]note:[/] {shown(note)}", highlight=False)
    if clf.choice is not None and not clf.choice.cached and not as_json:
        err().print(f"[yellow]backend:[/] {shown(clf.choice.picked)}, {shown(clf.choice.reason)}", highlight=False)
    update = make_progress(not as_json and len(files) > batch_size).task("predicting", len(files))
    results = []
    for done, result in enumerate(predict_files(clf, files, top_k=top_k, batch_size=batch_size,
                                                            workers=workers), 1):
        results.append(result)
        update(done)
    rows = [r.to_dict() for r in results if r.prediction is not None]
    skipped = [r for r in results if r.prediction is None]
    if not rows:
        raise PkdError(f"none of the {len(results)} images could be read ({skipped[0].skipped}"
                       + (f"; {len(skipped) - 1} more" if len(skipped) > 1 else "") + ")")
    if as_json:
        print_json({"bundle": str(bundle), "backend": clf.description,
                    "backend_choice": clf.choice.to_dict() if clf.choice is not None else None,
                    "predictions": rows, "skipped": [{"image": str(r.path), "reason": r.skipped} for r in skipped]})
    else:
        console().print(_predictions_table(f"{shown(bundle)} on {shown(clf.description)}", rows, top_k,
                                           len(clf.class_names)))
    for r in skipped:
        err().print(f"[yellow]skipped[/] {shown(r.skipped)}", highlight=False)
    if skipped:
        raise typer.Exit(SKIPPED_EXIT_CODE)


def _predictions_table(title: str, rows: list[dict], top_k: int, classes: int):
    """One row per image: its path (relative to the images' common folder), the top-1 class and the next ones."""
    from rich.table import Table

    table = Table(title=title)
    common = os.path.commonpath([r["image"] for r in rows]) if len(rows) > 1 else ""
    table.add_column(f"image (in {shown(common)})" if common else "image", overflow="fold")
    table.add_column("top-1")
    table.add_column("p", justify="right")
    if top_k > 1:
        table.add_column(f"next {min(top_k, classes) - 1}")
    for r in rows:
        rest = ", ".join(f"{shown(n)} {p:.2f}" for n, p in zip(r["labels"][1:], r["probabilities"][1:], strict=True))
        name = os.path.relpath(r["image"], common) if common else r["image"]
        table.add_row(shown(name), shown(r["labels"][0]), f"{r['probabilities'][0]:.3f}",
                      *([rest] if top_k > 1 else []))
    return table
