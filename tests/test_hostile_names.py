"""Text from users' files (class names, image paths, names inside a bundle someone else made) on the terminal.

Every command that prints such text is run over names that are rich markup, control characters and bidi
overrides: the terminal shows each name literally (markup escaped, control characters as visible escapes), never
dies with a MarkupError, never prints another name than the one given; `--json` keeps the exact strings.
"""

from __future__ import annotations

import json
import math
import shutil
import unicodedata
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import STUDENT, TEACHER, pkd_process, write_images
from safetensors.torch import save_file
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.utils.text import visible

HOSTILE = [
    "[/bold] cat",  # closes a style never opened: rich raises MarkupError
    "[red]dog[/red]",  # would print as "dog" in red
    "[link=https://example.com]x[/link]",
    "[bold]",
    "back\\slash\\[",  # a backslash before [ is rich's own escape
    ":thumbs_up: [i]x[/i]",  # an emoji code
    "tab\there",
    "esc\x1b[31mred",  # an ANSI sequence
    "bell\x07ring",
    "c1\x9bcontrol",  # the one-byte CSI
    "\u202eevil.png",  # a right-to-left override
    "emoji \U0001f408 [b]",
]
# class names cannot hold control characters (they would break the labels files: test_class_names.py); paths can
CLASS_NAMES = [n for n in HOSTILE if not any(unicodedata.category(c) == "Cc" for c in n)]
FOLDER_SAFE = [n for n in CLASS_NAMES if "/" not in n]  # class names can hold "/", folder names cannot
RAW_CONTROLS = ["\x1b", "\x07", "\x9b", "\u202e", "\t"]
runner = CliRunner()


def cli(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output and "MarkupError" not in result.output, result.output
    return result


def assert_shown_literally(output: str, names: list[str]) -> None:
    for name in names:
        assert visible(name) in output, (name, output)
    for ch in RAW_CONTROLS:
        assert ch not in output, (repr(ch), output)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A tiny run and its bundle whose class names are CLASS_NAMES, and images in folders with those names."""
    top = tmp_path_factory.mktemp("hostile")
    root = top / "runs [red]x \x1b[0m"  # a path holding markup and ANSI
    root.mkdir()
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    write_images(root / "unlabeled", 8)
    write_images(root / "test", len(FOLDER_SAFE), classes=FOLDER_SAFE, seed=3)
    torch.manual_seed(0)  # teacher weights in a file, so `pkd classes` can recompute its class vectors
    save_file({k: v.contiguous() for k, v in open_clip.create_model(TEACHER).state_dict().items()},
              str(root / "teacher [b].safetensors"))
    yield root
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # table cells are not wrapped inside a name


def test_every_command_shows_hostile_names_literally(hostile):
    run, bundle = hostile / "run", hostile / "bundle"
    result = cli("distill", "--random-init", "--teacher", f"{TEACHER}:{hostile / 'teacher [b].safetensors'}",
                 "--student", STUDENT, "--classes", str(hostile / "classes.txt"), "--data", str(hostile / "unlabeled"),
                 "--out", str(run), "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--workers", "0",
                 "--prompt-depth", "1", "--cache-dir", str(hostile / "cache"))
    assert result.exit_code == 0, result.output
    assert_shown_literally(result.output, [str(run)])

    # pkd eval: the table, and the base/novel note naming the base classes
    result = cli("eval", str(run), "--data", str(hostile / "test"), "--workers", "0")
    assert result.exit_code == 0, result.output
    assert_shown_literally(result.output, CLASS_NAMES[:3])
    assert visible(str(run)) in " ".join(result.output.split())  # the table's title may wrap inside the path
    assert json.loads(cli("eval", str(run), "--data", str(hostile / "test"), "--workers", "0",
                          "--json").stdout)["base_class_names"] == CLASS_NAMES[:math.ceil(len(CLASS_NAMES) / 2)]

    # pkd export, then pkd predict: image paths and labels in the table, exact in --json
    result = cli("export", str(run), "--out", str(bundle), "--parity-images", "2")
    assert result.exit_code == 0, result.output
    assert_shown_literally(result.output, [str(bundle)])
    result = cli("predict", str(bundle), str(hostile / "test"), "--top-k", str(len(CLASS_NAMES)))
    assert result.exit_code == 0, result.output
    assert_shown_literally(result.output, CLASS_NAMES)  # every class is in every row (top-k = all)
    rows = json.loads(cli("predict", str(bundle), str(hostile / "test"), "--json").stdout)["predictions"]
    assert {Path(r["image"]).parent.name for r in rows} == set(FOLDER_SAFE)
    assert {r["labels"][0] for r in rows} <= set(CLASS_NAMES)

    # pkd classes: a class list of hostile names for the run's teacher
    result = cli("classes", str(run), "--names", str(hostile / "classes.txt"), "--out", str(hostile / "vectors"))
    assert result.exit_code == 0, result.output
    assert_shown_literally(result.output, [str(hostile / "vectors")])

    # a Triton entry: labels.txt keeps the exact names, one per line
    result = cli("export", str(bundle), "--triton", str(hostile / "triton"))
    assert result.exit_code == 0, result.output
    labels = next((hostile / "triton").rglob("labels.txt")).read_text(encoding="utf-8").splitlines()
    assert labels == CLASS_NAMES

    # pkd bench on the bundle: the bundle's path in the report
    result = cli("bench", str(bundle), "--backends", "onnxruntime-cpu-fp32", "--batch-sizes", "1", "--iterations", "2",
                 "--warmup", "1", "--min-seconds", "0", "--no-e2e", "--out", str(hostile / "bench [b]\x1b"))
    assert result.exit_code == 0, result.output
    assert_shown_literally(result.output, [str(hostile / "bench [b]\x1b")])


@pytest.mark.parametrize("name", HOSTILE)
def test_error_lines_name_the_file_given(tmp_path, name):
    """A missing file whose name holds markup or control characters: the error line shows that very name."""
    missing = tmp_path / name
    images = write_images(tmp_path / "images", 2, classes=["a", "b"])
    for args in (("predict", str(missing), str(images)), ("eval", str(missing), "--data", str(images)),
                 ("distill", "--random-init", "--teacher", TEACHER, "--student", STUDENT, "--classes", str(missing),
                  "--data", str(images), "--out", str(tmp_path / "run"))):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and visible(str(missing)) in errors[0], result.output
        assert_shown_literally(result.output, [])


def test_progress_in_a_log_file_is_whole_lines_of_plain_text(hostile, tmp_path):
    """Not a terminal (a log file, CI): no bars cut mid-number, no escape codes, names shown literally."""
    out = tmp_path / "r [bold]\x1b[0m"
    proc = pkd_process("distill", "--random-init", "--teacher", TEACHER, "--student", STUDENT, "--classes",
               str(hostile / "classes.txt"), "--data", str(hostile / "unlabeled"), "--out", str(out), "--epochs", "2",
               "--warmup-epochs", "0", "--batch-size", "4", "--workers", "0", "--prompt-depth", "1", "--cache-dir",
               str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "epoch 1/2: 2/2 (100 %)" in proc.stderr and "epoch 2/2: 2/2 (100 %)" in proc.stderr
    assert not any("\x1b" in line or "…" in line or "\r" in line for line in lines), proc.stderr
    assert_shown_literally(proc.stdout + proc.stderr, [str(out)])


def test_shown_text_prints_exactly_as_written_through_rich():
    """rich's own renderer is the reference: any mix of brackets, backslashes, slashes and tag-like words comes out
    exactly as written, on its own and inside our markup; control characters come out as visible escapes."""
    import io
    import random

    from rich.console import Console

    from promptkd_edge.utils.text import shown

    def render(markup: str) -> str:
        buf = io.StringIO()
        Console(file=buf, width=1000, emoji=False, color_system=None, highlight=False).print(markup, soft_wrap=True)
        return buf.getvalue()[:-1]

    rng = random.Random(0)
    alphabet = ["\\", "[", "]", "/", "a", "b", " ", "#", "@", "=", ":", "red", "\x1b", "\n", "\u202e"]
    texts = HOSTILE + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(3000)]
    for text in texts:
        for markup, plain in (("{}", "{}"), ("[bold red]error:[/] {}", "error: {}"), ("[b]{} x[/b]", "{} x")):
            assert render(markup.format(shown(text))) == plain.format(visible(text)), (text, markup)


def test_line_progress_prints_periodic_whole_lines():
    import io

    from promptkd_edge.utils.progress import LineProgress

    log = io.StringIO()
    progress = LineProgress(every=3600, stream=log)
    update = progress.task("epoch 1/3 [b]", 500)
    for done in range(1, 501):
        update(done, loss=0.5)
    update(500)  # a repeated final update prints nothing more
    assert log.getvalue() == "epoch 1/3 [b]: 500/500 (100 %), 0 s, loss 0.5\n"
    log = io.StringIO()
    update = LineProgress(every=0, stream=log).task("cache", 3)
    for done in (1, 2, 3):
        update(done)
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == [
        "cache: 1/3 (33 %)", "cache: 2/3 (67 %)", "cache: 3/3 (100 %)"]
