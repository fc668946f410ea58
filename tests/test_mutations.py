"""Named mutations of the package, each of which at least one test must catch.

Each mutation copies promptkd_edge/ into a temporary folder, replaces an exact text (found exactly once) and runs
the tests named for it in a subprocess whose PYTHONPATH puts the mutated copy before the repository: the run must
fail. A probe plugin records which promptkd_edge the subprocess imported, so a mutant that was not really used
cannot pass for caught. Add a mutation with one line in MUTATIONS.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent


class Mutation(NamedTuple):
    name: str
    file: str  # relative to promptkd_edge/
    old: str  # occurs exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids, relative to the repository
    noconftest: bool = False  # True where the tests need nothing from tests/conftest.py (no torch import: faster)


TRT = "runtime/tensorrt_backend.py"
RUN_PATH = "tests/test_tensorrt.py::test_backend_run_path"
RUNTIME = "tests/test_tensorrt_runtime.py::"
DEVICE_1 = RUNTIME + "test_device_1_from_a_thread_whose_current_device_is_0"

MUTATIONS = [
    Mutation("no sync before outputs are read", TRT, 'cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")', "None", (RUN_PATH,), True),  # noqa: E501
    Mutation("pageable host copy", TRT, "staging.ctypes.data, x.nbytes, h2d, stream)", "x.ctypes.data, x.nbytes, h2d, stream)", (RUN_PATH,), True),  # noqa: E501
    Mutation("stream 0 in execute_async_v3", TRT, "execute_async_v3(int(self._stream))", "execute_async_v3(0)", (RUN_PATH,), True),  # noqa: E501
    Mutation("no profile switch", TRT, "ctx.set_optimization_profile_async(profile, int(self._stream))", "pass", (RUNTIME + "test_profiles_with_a_gap",), True),  # noqa: E501
    Mutation("no cudaSetDevice in stage", TRT, "self._use_device()\n            x = self._checked(batch)\n            cudart", "x = self._checked(batch)\n            cudart", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in run", TRT, "self._use_device()\n            x = self._checked(batch)\n            shapes", "x = self._checked(batch)\n            shapes", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in run_staged", TRT, "self._use_device()\n            self._set_shapes(", "self._set_shapes(", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in synchronize", TRT, "self._use_device()\n            cuda_check(self._cudart,", "cuda_check(self._cudart,", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in close", TRT, "return\n            self._use_device()", "return", (DEVICE_1,), True),
    Mutation("grown buffer freed under queued work", TRT, 'cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")\n            del pool[name]', "del pool[name]", (RUNTIME + "test_buffer_growth_and_staged_runs",), True),  # noqa: E501
]

PROBE = '''
import os, sys


def pytest_sessionfinish(session, exitstatus):
    module = sys.modules.get("promptkd_edge")
    with open(os.environ["PKD_MUTANT_PROBE"], "w") as f:
        f.write(getattr(module, "__file__", "") or "")
'''


def _run(copy_root: Path, tests: tuple[str, ...], probe: Path, noconftest: bool) -> subprocess.CompletedProcess:
    """pytest on `tests` with the copy first on the path; run from the copy's folder (`python -m` puts the working
    directory first on sys.path: the repository's own promptkd_edge would shadow the copy)."""
    (copy_root / "pkd_mutant_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy_root), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "PKD_MUTANT_PROBE": str(probe)}
    args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "pkd_mutant_probe", *(["--noconftest"] if noconftest else [])]
    return subprocess.run([sys.executable, "-m", "pytest", *args, *(str(REPO / t) for t in tests)], cwd=copy_root,
                          env=env, capture_output=True, text=True, timeout=600)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "mutant"
    shutil.copytree(REPO / "promptkd_edge", root / "promptkd_edge", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _imported_copy(root: Path, probe: Path, run: subprocess.CompletedProcess) -> None:
    assert probe.is_file(), run.stdout[-2000:] + run.stderr[-2000:]
    imported = Path(probe.read_text())
    assert imported.is_relative_to(root), f"the tests imported {imported}, not the mutated copy under {root}"


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name.replace(" ", "-") for m in MUTATIONS])
def test_mutation_is_caught(mutation: Mutation, tmp_path):
    root = _copy(tmp_path)
    target = root / "promptkd_edge" / mutation.file
    text = target.read_text()
    assert text.count(mutation.old) == 1, f"{mutation.name}: the text to mutate occurs {text.count(mutation.old)}x"
    target.write_text(text.replace(mutation.old, mutation.new))
    probe = tmp_path / "imported.txt"
    run = _run(root, mutation.tests, probe, mutation.noconftest)
    _imported_copy(root, probe, run)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    assert run.returncode != 0 and re.search(r"\b\d+ failed\b", summary), \
        f"mutation '{mutation.name}' survived {list(mutation.tests)}: {summary}"


def test_unmutated_copy_passes_the_mutation_tests(tmp_path):
    """The control: the same harness on an unmutated copy passes, so a mutant's failure is the mutation's."""
    root = _copy(tmp_path)
    for noconftest in sorted({m.noconftest for m in MUTATIONS}):
        tests = tuple(dict.fromkeys(t for m in MUTATIONS if m.noconftest == noconftest for t in m.tests))
        probe = tmp_path / f"imported-{noconftest}.txt"
        run = _run(root, tests, probe, noconftest)
        _imported_copy(root, probe, run)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
