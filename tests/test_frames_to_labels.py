"""benchmarks/frames_to_labels.py --tiny (issue 22's Goal benchmark at tiny size): model-only and end-to-end rows for
files and frames, before (sequential) and after (the pipeline), ratios to model-only, the same top-1 both ways."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_frames_to_labels_tiny(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("frames_to_labels", BENCHMARKS / "frames_to_labels.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["frames_to_labels.py", "--tiny"])
    report = script.main(["--tiny", "--backends", "onnxruntime,onnxruntime", "--out", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert "| files |" in (tmp_path / "r.md").read_text() and report["machine"]["cpu"]
    [row, again] = report["rows"]
    assert again["skipped"] == "run above"  # one backend is timed once
    model = row["model_only"]["images_per_s"]
    for kind in ("files", "frames"):
        for label, workers in (("before", 0), ("after", report["workers_after"])):
            cell = row[f"{kind} {label}"]
            assert cell["workers"] == workers and cell["images_per_s"] > 0
            assert cell["ratio_to_model"] == pytest.approx(cell["images_per_s"] / model, abs=1e-3)
            assert row[f"{kind} preprocessing {label}"]["ms_per_image"] > 0
        assert row[f"{kind} top1 identical"] and row[f"{kind} max abs logit diff"] == 0.0
    assert report["files"] == "6 generated 1920x1080 JPEG files (quality 90)" and report["threads_left"] == []
