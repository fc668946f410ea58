"""Shared fixtures: tiny open_clip models (random weights), generated images, a finished tiny run."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports open_clip / huggingface_hub
os.environ["PKD_CACHE_DIR"] = __import__("tempfile").mkdtemp(prefix="pkd-test-cache-")  # never the user's cache

import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from promptkd_edge.models.openclip import register_tiny_configs  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
register_tiny_configs()  # tests also call open_clip.create_model("pkd-tiny-...") directly

TEACHER = "pkd-tiny-teacher"
STUDENT = "pkd-tiny-student"
NAMES = ["red_square", "green_circle", "blue_stripes"]


def write_images(root: Path, count: int, size: int = 48, seed: int = 0, classes: list[str] | None = None) -> Path:
    """`count` random-pattern PNGs under root (in class sub-folders when `classes` is given)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / classes[i % len(classes)] if classes else root / f"part{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.Resampling.NEAREST)
        img.save(folder / f"img{i:03d}.png")
    return root


def tiny_config(tmp_path: Path, **overrides):
    from promptkd_edge.train.config import DistillConfig

    classes = tmp_path / "classes.txt"
    if not classes.exists():
        classes.write_text("\n".join(NAMES) + "\n")
    data = tmp_path / "unlabeled"
    if not data.exists():
        write_images(data, 16)
    base = dict(teacher=TEACHER, student=STUDENT, classes=str(classes), data=str(data), epochs=2, batch_size=4,
                workers=0, prompt_depth=3, device="cpu", cache_dir=str(tmp_path / "cache"), log_every=2,
                random_init=True)  # the tiny architectures have no weights
    base.update(overrides)
    return DistillConfig(**base)


# What `make test-fast` (pytest -m "not slow") leaves out, by what makes them slow: mutants each run in a subprocess,
# whole pipelines (the demo, the paper reproduction), builds and installs (CMake, venvs, the ModelOpt venv, the GPU
# check's wheels), real-size towers. `make test` and CI run everything.
SLOW_MODULES = {"test_mutations.py", "test_demo.py", "test_reproduce.py", "test_native.py", "test_native_tensorrt.py",
                "test_install.py", "test_modelopt.py", "test_gpu_check.py", "test_students_bench.py"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(os.environ["PKD_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory):
    """A folder for one module's shared files, removed when the module is done (CI disks can be nearly full)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 2-epoch distillation of the tiny student, shared by read-only tests."""
    from promptkd_edge.train.distill import distill

    root = tmp_path_factory.mktemp("tiny_run")
    distill(tiny_config(root), root / "run")
    return root / "run"


@pytest.fixture()
def labeled_dir(tmp_path) -> Path:
    return write_images(tmp_path / "labeled", 12, classes=NAMES, seed=3)


class Ran(NamedTuple):
    """What a `pkd` run gave, as subprocess.run's CompletedProcess names it."""

    returncode: int
    stdout: str
    stderr: str


def pkd(*args: str | os.PathLike, cwd: Path | None = None, env: dict | None = None) -> Ran:
    """The `pkd` CLI run in this process (typer's runner: the same parsing, error lines and exit codes, without
    importing torch and the package again). `pkd_process` where the process itself is under test."""
    import contextlib
    import traceback

    from typer.testing import CliRunner

    from promptkd_edge.cli import app

    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = CliRunner().invoke(app, [str(a) for a in args], env={"HF_HUB_OFFLINE": "1", **(env or {})})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):  # what Python prints
        stderr += "".join(traceback.format_exception(result.exception))
    return Ran(result.exit_code, result.stdout, stderr)


def pkd_process(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run the real `pkd` CLI in a subprocess (`python -m promptkd_edge`); returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "promptkd_edge", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=600)


@pytest.fixture()
def clean_dir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
