"""The plan record a serving entry carries: one `# pkd-plan: {json}` comment line in a Triton config.pbtxt or a
DeepStream nvinfer config (both formats skip `#` lines), naming the TensorRT release, GPU and compute capability
the entry's plan was built for, which `pkd doctor --bundle ENTRY` checks against the machine it runs on: a plan
loads only on the TensorRT release that built it and on GPUs of that architecture."""

from __future__ import annotations

import json
from typing import Any

PLAN_RECORD = "# pkd-plan: "
PLAN_KEYS = ("tensorrt", "compute_capability", "gpu", "precision", "profiles")


def plan_record_line(plan: Any) -> str:
    """The record line of an engine entry (formats/manifest.py EngineEntry), newline included. JSON keeps it ASCII
    with control characters escaped, so manifest text cannot end the comment."""
    return PLAN_RECORD + json.dumps({k: getattr(plan, k) for k in PLAN_KEYS}) + "\n"


def read_plan_record(text: str) -> dict[str, Any] | None:
    """The plan record of a config we wrote (its `PLAN_RECORD` line), or None."""
    for line in text.splitlines():
        if line.startswith(PLAN_RECORD):
            try:
                record = json.loads(line[len(PLAN_RECORD):])
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None
