"""What every benchmark script records beside its figures: the machine, and the report files."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    import torch

    from promptkd_edge.runtime.cpu import cpu_info

    cpu = cpu_info()
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": cpu["model"], "cpu_cores": os.cpu_count(), "cpu_speed_flags": cpu["speed_flags"],
            "cpu_max_mhz": cpu["max_mhz"], "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    compute_capability=f"{p.major}.{p.minor}")
    return info


def write_report(report: dict, out: Path | None, default_name: str, markdown: Callable[[dict], str]) -> Path:
    """Add date, machine and command; write `<name>.json` and `<name>.md` (default: benchmarks/results/)."""
    report = {**report, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    out = out or RESULTS / f"{default_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return out


def where_it_ran(report: dict) -> str:
    """"DATE, CPU (flags: ...)" of a written report: what every results table says first."""
    m = report["machine"]
    return f"{report['date']}, {m['cpu']} (flags: {' '.join(m.get('cpu_speed_flags', [])) or 'not recorded'})"
