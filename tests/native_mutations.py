"""Every mutation of the native library (tests/native/mutations.json) must be caught by the tests it names.

    python tests/native_mutations.py [NAME-SUBSTRING ...]      # `make mutations-native`

One copy of export/cpp is made; for each mutation its text is replaced (it must occur exactly once), the copy rebuilt
incrementally (PKD_NATIVE_SOURCE / PKD_NATIVE_BUILD for tests/native_build.py, PKD_NATIVE_BUILD_ROOT for
tests/native_tensorrt.py) and its tests run: they must fail. The file is restored after each. Not part of `make test`
(45 rebuilds and test runs: 15 min on 2 cores); tests/test_mutations.py holds the package's own (Python) mutations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIST = REPO / "tests" / "native" / "mutations.json"


def run(selected: list[str]) -> int:
    mutations = [m for m in json.loads(LIST.read_text())["mutations"]
                 if not selected or any(s in m["name"] for s in selected)]
    survived = []
    with tempfile.TemporaryDirectory(prefix="pkd-native-mutants-") as tmp:
        copy = Path(tmp) / "cpp"
        shutil.copytree(REPO / "export" / "cpp", copy)
        env = {**os.environ, "PKD_NATIVE_SOURCE": str(copy), "PKD_NATIVE_BUILD": str(Path(tmp) / "build"),
               "PKD_NATIVE_BUILD_ROOT": str(Path(tmp) / "trt-builds"), "HF_HUB_OFFLINE": "1"}
        for m in mutations:
            target = copy / Path(m["file"]).relative_to("export/cpp")
            original = target.read_text()
            if original.count(m["old"]) != 1:
                survived.append(f"{m['name']}: its text occurs {original.count(m['old'])}x in {m['file']}")
                continue
            target.write_text(original.replace(m["old"], m["new"]))
            start = time.monotonic()
            try:
                done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                       *(str(REPO / t) for t in m["tests"])], cwd=REPO, env=env, capture_output=True,
                                      text=True, timeout=900)
            finally:
                target.write_text(original)  # a new mtime: the next build recompiles it
            last = (done.stdout.strip().splitlines() or [""])[-1]
            caught = done.returncode != 0 and " failed" in last
            print(f"{'caught  ' if caught else 'SURVIVED'} {time.monotonic() - start:5.0f} s  {m['name']}: {last}",
                  flush=True)
            if not caught:
                survived.append(m["name"])
    print(f"{len(mutations) - len(survived)} of {len(mutations)} mutations caught")
    for name in survived:
        print(f"not caught: {name}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
