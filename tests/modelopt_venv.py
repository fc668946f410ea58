"""A separate venv with NVIDIA ModelOpt's ONNX tools, so the ModelOpt code paths are tested against the real library.

ModelOpt's `[onnx]` extra pins onnx 1.21, onnxruntime-gpu (the same `onnxruntime` module as the CPU build the
project uses) and cupy, so it does not go into the project's venv. This venv holds `nvidia-modelopt==0.47.0` (no
dependencies) and what its autocast and quantization modules import (tests/modelopt-requirements.txt, a CPU torch
among them). `run_python(code)` runs code there with the repository on the path.

    python tests/modelopt_venv.py      # build it once (about a minute); `make test` does this
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from real_tensorrt import REPO, RealTensorRTError, cache_root

MODELOPT = "nvidia-modelopt==0.47.0"
REQUIREMENTS = Path(__file__).with_name("modelopt-requirements.txt")


class ModelOptVenvError(RealTensorRTError):
    """The ModelOpt venv could not be built here (one line: what failed)."""


def venv_dir() -> Path:
    return cache_root().parent / "modelopt-venv"


def ensure() -> Path:
    """The venv's python, built on first use."""
    root = venv_dir()
    python = root / "bin" / "python"
    marker = root / ".ready"
    wanted = f"{MODELOPT}\n{REQUIREMENTS.read_text()}"
    if marker.is_file() and marker.read_text() == wanted and python.is_file():
        return python
    steps = [[sys.executable, "-m", "venv", "--clear", str(root)],
             [str(python), "-m", "pip", "install", "--quiet", "--no-deps", MODELOPT],
             [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelOptVenvError(f"building the ModelOpt test venv failed at `{' '.join(cmd[2:5])}`: {last}")
    check = run_python("import modelopt.onnx.autocast, modelopt.onnx.quantization; print('ok')")
    if check.returncode or "ok" not in check.stdout:
        raise ModelOptVenvError(f"ModelOpt does not import in {root}: "
                                f"{(check.stderr.strip().splitlines() or ['?'])[-1]}")
    marker.write_text(wanted)
    return python


def run_python(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -c code args...` in the ModelOpt venv, with the repository importable."""
    python = venv_dir() / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(REPO))


if __name__ == "__main__":
    try:
        print(f"ModelOpt test venv ready: {ensure()}")
    except RealTensorRTError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
