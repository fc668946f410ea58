"""The embedded demo, reduced (`--quick`): every stage runs and leaves what a user would look at."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.data.demo_domain import CLASSES


def test_quick_demo_end_to_end(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--json", "--workers", "0"],
                           catch_exceptions=False)
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["pretrained_here"] is True
    assert report["classes"] == len(CLASSES) and report["test_images"] == 4 * len(CLASSES)
    models = {"teacher zero-shot", "teacher tuned (stage I)", "student zero-shot (before)",
              "student + PromptKD (after)", "bundle fp32 (ONNX Runtime)", "bundle int8 (ONNX Runtime)"}
    for metric in ("top1", "base", "novel", "hm"):
        assert set(report[metric]) == models and all(0.0 <= v <= 1.0 for v in report[metric].values())
    assert 0.0 <= report["agreement"] <= 1.0
    # the shipped FP32 graph classifies the test split exactly as the PyTorch student; both bundles passed the gate
    assert report["top1"]["bundle fp32 (ONNX Runtime)"] == report["top1"]["student + PromptKD (after)"]
    assert all(b["valid"] for b in report["bundles"].values()) and set(report["bundles"]) == {"fp32", "int8"}
    assert (tmp_path / "bundle-int8" / "manifest.json").is_file()
    assert report["teacher"]["train_classes"] == len(CLASSES) // 2 and report["teacher"]["steps"] == 2 * 1
    assert report["distill"]["steps"] == 2 * (8 * len(CLASSES) // 16)
    for split in ("fewshot", "unlabeled", "test"):
        assert sorted(p.name for p in (tmp_path / "data" / split).iterdir()) == sorted(CLASSES)
    for f in ("weights/teacher.safetensors", "weights/student.safetensors", "teacher/teacher.safetensors",
              "teacher/class_vectors.safetensors", "run/student.safetensors",
              "run/class_vectors.safetensors", "run/loss.png", "run/metrics.jsonl", "demo_report.json"):
        assert (tmp_path / f).is_file(), f
    config = json.loads((tmp_path / "run/config.json").read_text())["config"]
    assert config["teacher"] == config["class_vectors"] == str(tmp_path / "teacher")  # stage I feeds stage II
    assert config["teacher_cache"] == 2

    again = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--workers", "0"],
                          catch_exceptions=False)
    assert again.exit_code == 0
    assert "reusing generated images" in again.output and "reusing pre-trained tiny CLIP weights" in again.output
    assert "PromptKD" in again.output and "HM" in again.output  # the table (wrapped at 80 columns)
    flat = " ".join(again.output.split())
    assert "camera at night" in flat and "over its own zero-shot head" in flat  # why, and the gain figures
    # the printed gains are the table's numbers
    before, after, tuned = (report["top1"][k] for k in ("student zero-shot (before)", "student + PromptKD (after)",
                                                        "teacher tuned (stage I)"))
    assert report["gains"]["top1_points"] == pytest.approx(100 * (after - before))
    if tuned > before:
        assert report["gains"]["top1_gap_closed"] == pytest.approx((after - before) / (tuned - before))


def test_demo_domain_styles():
    """The teacher's stand-in pre-training sees every class both well lit and in any light; the student's only well
    lit; the target is darker than anything the student saw. Seeded: the same images every time."""
    import numpy as np

    from promptkd_edge.data import demo_domain

    teacher = demo_domain.web_samples(80, seed=0, varied=True)
    student = demo_domain.web_samples(80, seed=0)
    assert {(s.label, s.style) for s in teacher} == {(c, st) for c in range(10) for st in ("web", "varied")}
    assert {s.style for s in student} == {"web"}
    rng = np.random.default_rng(0)
    target = [demo_domain.render(i % 10, rng, "target") for i in range(40)]
    brightness = {name: np.mean([np.asarray(s.image).mean() for s in samples])
                  for name, samples in (("web", student), ("target", target))}
    assert brightness["target"] < 0.5 * brightness["web"]
    again = demo_domain.web_samples(80, seed=0, varied=True)
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(teacher, again, strict=True))
    with pytest.raises(ValueError, match="unknown style"):
        demo_domain.render(0, rng, "night")
