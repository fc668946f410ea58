"""Which device a command runs on: `--device auto|cpu|cuda[:N]` resolved once, the same way for every command.

torch is imported only to answer whether CUDA is there (never at module import): the core install has no torch.
"""

from __future__ import annotations

import re

from promptkd_edge.errors import PkdError


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' where torch sees a GPU, else 'cpu'; 'cpu', 'cuda', 'cuda:N' as given once checked; anything
    else, or CUDA where there is none, is a one-line PkdError. Wrap in torch.device(...) where torch wants one."""
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise PkdError(f"--device must be auto, cpu or cuda[:N], not {name}")
    if name.startswith("cuda") and not cuda_available():
        try:
            import torch

            where = f"torch {torch.__version__}"
        except ImportError:
            where = "torch is not installed"
        raise PkdError(f"--device {name}: CUDA is not available on this machine ({where})")
    return name
