"""Installing by role: the wheel, the torch-free core install, docker/install.sh and the Dockerfiles.

The core install (what an app on a Jetson or a CPU box gets from `pip install promptkd-edge`) must run bundles
without torch or onnx; commands that need an extra say which, in one line. The Dockerfiles cannot be built here (no
Docker daemon), so every install step they run is `docker/install.sh ROLE`, which these tests run in a venv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "docker" / "install.sh"
CORE = {"numpy", "pillow", "onnxruntime", "typer", "rich", "safetensors"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;]", requirement, maxsplit=1)[0].strip().lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(out), str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr  # e.g. setuptools' deprecated license table
    return next(out.glob("promptkd_edge-*.whl"))


@pytest.fixture(scope="module")
def bundle(tiny_run, tmp_path_factory) -> Path:
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    out = tmp_path_factory.mktemp("install") / "bundle"
    export_run(tiny_run, out, ExportOptions(parity_images=4))
    return out


def test_wheel_holds_what_an_install_needs(wheel):
    from promptkd_edge import __version__

    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name.startswith(f"promptkd_edge-{__version__}-py3-none-any")
    assert "promptkd_edge/py.typed" in names
    assert {"promptkd_edge/models/configs/pkd-tiny-student.json", "promptkd_edge/models/configs/pkd-tiny-teacher.json",
            "promptkd_edge/bench/zero_shot_imagenet.json"} <= set(names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta and f"Version: {__version__}" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    plain = {_name(line.split(":", 1)[1]) for line in meta.splitlines()
             if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert plain == CORE  # no torch, torchvision, open_clip, onnx, onnxscript or matplotlib by default


def _run(venv: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_core_install_runs_bundles_without_torch(wheel, bundle, tmp_path):
    """A clean venv, the wheel by role (core, then jetson, then cpu), and the commands an edge box runs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PYTHON": str(venv / "bin" / "python")}
    done = subprocess.run(["sh", str(INSTALL), "core", str(wheel)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    from promptkd_edge import __version__

    assert done.stdout.strip().splitlines()[-1] == f"promptkd-edge {__version__}"
    absent = _run(venv, "python", "-c", "import importlib.util as u; print([m for m in ('torch', 'torchvision', "
                  "'open_clip', 'onnx', 'onnxscript', 'matplotlib') if u.find_spec(m)])")
    assert absent.stdout.strip() == "[]"

    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    r = _run(venv, "pkd", "predict", str(bundle), str(image), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["backend"].startswith("onnxruntime") and len(result["predictions"]) == 1
    r = _run(venv, "pkd", "doctor", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["torch"]["available"] is False
    r = _run(venv, "pkd", "bench", str(bundle), "--backends", "onnxruntime-cpu-fp32,torch-eager-fp32",
             "--batch-sizes", "1", "--iterations", "2", "--warmup", "1", "--no-e2e", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bench.csv", "bench.json", "bench.md"]
    assert "torch is not installed" in r.stderr and "pip install 'promptkd-edge[plot]'" in r.stdout
    r = _run(venv, "pkd", "export", str(bundle), "--triton", str(tmp_path / "triton"))
    assert r.returncode == 0 and (tmp_path / "triton" / "bundle" / "config.pbtxt").is_file()

    for args, extras in ((["distill", "--teacher", "x", "--student", "y", "--data", str(tmp_path),
                           "--out", str(tmp_path / "run")], "[train]"),
                         (["export", str(tmp_path), "--out", str(tmp_path / "x")], "[train,export]"),
                         (["models"], "[train]"), (["bench", "ViT-B-16"], "[train]")):
        r = _run(venv, "pkd", *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert f"pip install 'promptkd-edge{extras}'" in r.stderr and "Traceback" not in r.stderr

    # the Jetson role adds cuda-python < 13 and onnx; without TensorRT a plan build says so and writes nothing
    done = subprocess.run(["sh", str(INSTALL), "jetson", str(wheel)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "python3-libnvinfer" in done.stderr  # no TensorRT visible: the note says where it comes from
    version = _run(venv, "python", "-c", "import importlib.metadata as m; print(m.version('cuda-python'))")
    assert version.stdout.startswith("12.")
    before = sorted(p.name for p in bundle.iterdir())
    r = _run(venv, "pkd", "export", str(bundle), "--trt", "--precision", "fp16")
    assert r.returncode == 2 and r.stderr.startswith("error: TensorRT is not installed") and "Traceback" not in r.stderr
    assert sorted(p.name for p in bundle.iterdir()) == before
    # the CPU role adds OpenVINO
    done = subprocess.run(["sh", str(INSTALL), "cpu", str(wheel)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _run(venv, "python", "-c", "import openvino").returncode == 0


@pytest.mark.parametrize(("role", "cuda", "expected"), [
    ("gpu", "12", ["[train,export,slim,plot]", "cuda-python>=12.6,<13", "tensorrt-cu12>=10.3,<12", "nvidia-ml-py"]),
    ("gpu", "13", ["[train,export,slim,plot]", "cuda-python>=13,<14", "tensorrt-cu13>=11,<12", "nvidia-ml-py"]),
    ("train", "12", ["[train,export,slim,plot]"]),
])
def test_install_roles_that_pull_torch_print_their_commands(role, cuda, expected, tmp_path):
    """The gpu and train roles install torch (GBs): checked as the commands they would run."""
    env = {**os.environ, "PKD_DRY_RUN": "1", "PKD_CUDA_MAJOR": cuda, "PYTHON": sys.executable}
    done = subprocess.run(["sh", str(INSTALL), role, "/src"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    for part in expected:
        assert part in printed, (part, printed)
    assert "-m pip install --no-cache-dir -c " in printed
    bad = subprocess.run(["sh", str(INSTALL), "everything"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def _dockerfile(path: Path) -> dict:
    """FROM images (ARG defaults resolved), COPY sources and install.sh roles of a Dockerfile."""
    args, images, copies, roles = {}, [], [], []
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("ARG ") and "=" in line:
            key, value = line[4:].split("=", 1)
            args[key.strip()] = value.strip()
        elif line.startswith("FROM "):
            ref = line.split()[1]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), ref))
        elif line.startswith("COPY "):
            copies += [p for p in line.split()[1:-1] if not p.startswith("--")]
        elif line.startswith("RUN ") and "install.sh" in line:
            roles.append(line.split("install.sh", 1)[1].split()[0])
    return {"images": images, "copies": copies, "roles": roles, "text": text}


def test_dockerfiles_are_pinned_and_consistent():
    script = INSTALL.read_text()
    known_roles = set(re.findall(r"^\s+(\w+)\)\s", script, flags=re.M))
    assert known_roles == {"core", "cpu", "jetson", "gpu", "train"}
    extras_named = set()
    for found in re.findall(r'EXTRAS="([^"]*)"', script):
        extras_named |= {e for e in found.split(",") if e}
    assert extras_named <= set(_pyproject()["project"]["optional-dependencies"])
    files = sorted((REPO / "docker").glob("Dockerfile.*"))
    assert [f.name for f in files] == ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.jetson"]
    for path in files:
        d = _dockerfile(path)
        assert d["images"], path.name
        for image in d["images"]:
            assert "$" not in image and ":" in image.split("/")[-1], f"{path.name}: unpinned base {image}"
            assert not image.endswith(":latest"), f"{path.name}: {image}"
        for source in d["copies"]:
            assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
        assert len(d["roles"]) == 1 and d["roles"][0] in known_roles, path.name
        assert 'ENTRYPOINT ["pkd"]' in d["text"]
    assert "python3-libnvinfer" in (REPO / "docker" / "Dockerfile.jetson").read_text()
    assert "--system-site-packages" in (REPO / "docker" / "Dockerfile.jetson").read_text()
    readme = (REPO / "docker" / "README.md").read_text()
    assert "not been built" in readme and "--runtime nvidia" in readme


def test_dependencies_by_role():
    project = _pyproject()["project"]
    assert {_name(r) for r in project["dependencies"]} == CORE
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert {"torch", "torchvision", "open_clip_torch", "matplotlib"} <= extras["train"]
    assert {"onnx", "onnxscript"} <= extras["export"] and extras["gpu"] == {"onnxruntime-gpu", "nvidia-ml-py"}
    assert {"cuda-python", "onnx"} <= extras["jetson"] and {"tensorrt-cu12", "nvidia-ml-py"} <= extras["trt"]
    assert "nvidia-ml-py" not in extras["jetson"]  # Jetson has no NVML: tegrastats measures power there
    assert project["license"] == "Apache-2.0" and project["dynamic"] == ["version"]
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    constraints = [line for line in (REPO / "constraints.txt").read_text().splitlines()
                   if line and not line.startswith("#")]
    assert all("==" in line for line in constraints)
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(constraints)
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_make_lint_covers_every_shell_script_and_dockerfile():
    """`make lint` names its files: a script or Dockerfile added later must be added there too, or this fails."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    shell = {p for p in tracked if p.endswith(".sh") or (REPO / p).is_file()
             and (REPO / p).read_bytes()[:64].startswith((b"#!/bin/sh", b"#!/usr/bin/env bash", b"#!/bin/bash"))}
    docker = {p for p in tracked if Path(p).name.startswith("Dockerfile")}
    lint = re.search(r"^lint:.*?\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    named = set(lint.split())
    assert shell and docker and not (shell | docker) - named, sorted((shell | docker) - named)
    assert "$(BIN)/shellcheck" in named and "$(BIN)/hadolint" in named


def test_make_test_fast_leaves_out_exactly_the_slow_modules():
    from conftest import SLOW_MODULES

    assert all((REPO / "tests" / name).is_file() for name in SLOW_MODULES), SLOW_MODULES
    fast = re.search(r"^test-fast:.*?\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert '-m "not slow"' in fast
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow",
                             "tests/test_mutations.py", "tests/test_export.py"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    assert any(i.startswith("tests/test_mutations.py::") for i in ids)  # a whole slow module
    assert [i for i in ids if i.startswith("tests/test_export.py::")] == [
        "tests/test_export.py::test_vit_b16_student_exports_with_parity"]  # marked one by one there
