"""The bench report: schema validation and the outputs people read (JSON, CSV, Markdown, PNG, terminal table)."""

from __future__ import annotations

import copy
import csv
import json
import math
from typing import Any

import pytest

from promptkd_edge.bench.report import (
    CSV_FIELDS,
    RESULT_FIELDS,
    SCHEMA,
    SCHEMA_VERSION,
    markdown,
    terminal_table,
    validate_report,
    write_all,
    write_plot,
)
from promptkd_edge.errors import PkdError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BACKENDS = {  # backend -> (device, precision, student p50 ms at batch 1, ms per extra image)
    "torch-eager-fp32": ("cpu", "fp32", 210.0, 190.0),
    "onnxruntime-cpu-int8": ("cpu", "int8", 80.0, 64.0),
    "onnxruntime-cuda-fp16": ("cuda", "fp16", 2.1, 0.35),
}


def _row(model: str, backend: str, batch: int, mode: str, p50: float) -> dict[str, Any]:
    device, precision, _, _ = BACKENDS[backend]
    gpu = device == "cuda"
    return {
        "model": model, "backend": backend, "device": device, "precision": precision, "batch": batch, "mode": mode,
        "iterations": 50, "p50_ms": p50, "p90_ms": p50 * 1.02, "p99_ms": p50 * 1.05, "mean_ms": p50 * 1.01,
        "min_ms": p50 * 0.98, "images_per_s": 1000.0 * batch / p50,
        "first_call_ms": (p50 * 3 + 400.0) if mode == "compute" else None,
        "peak_rss_mib": 1450.2 if model == "student" else 2900.5, "peak_gpu_mib": 812.0 if gpu else None,
        "power_w": 120.0 if gpu else None, "images_per_joule": (1000.0 * batch / p50) / 120.0 if gpu else None,
    }


def make_report() -> dict[str, Any]:
    """Two models, three backends, batches 1/8/32, both modes, one unavailable backend, one comparison, one limit."""
    results = []
    for backend, (_, _, base, per_image) in BACKENDS.items():
        for batch in (1, 8, 32):
            results.append(_row("student", backend, batch, "compute", base + per_image * (batch - 1)))
    for batch in (1, 8, 32):
        results.append(_row("teacher", "torch-eager-fp32", batch, "compute", 3.06 * (210.0 + 190.0 * (batch - 1))))
    for backend in ("onnxruntime-cpu-int8", "onnxruntime-cuda-fp16"):
        _, _, base, per_image = BACKENDS[backend]
        for batch in (1, 8, 32):
            results.append(_row("student", backend, batch, "end_to_end", base + per_image * (batch - 1) + 9.0 * batch))
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": "2026-11-29T20:00:00+00:00",
        "command": "pkd bench runs/flowers --compare-teacher --batch-sizes 1,8,32",
        "target": {"kind": "run", "name": "flowers", "path": "runs/flowers"},
        "models": [
            {"role": "student", "description": "ViT-B-16 + 4x9 prompts + projector, 100 classes", "arch": "ViT-B-16",
             "image_size": [224, 224], "params_m": 86.4, "gflops_per_image": 35.2, "classes": 100},
            {"role": "teacher", "description": "ViT-L-14 image tower, 100 classes", "arch": "ViT-L-14",
             "image_size": [224, 224], "params_m": 304.0, "gflops_per_image": 162.0, "classes": 100},
        ],
        "environment": {
            "cpu": "AMD EPYC 9654 96-Core Processor", "cores": 16, "threads": 32,
            "gpu": {"name": "NVIDIA H200", "driver": "570.86.15", "memory_gib": 139.8, "compute_capability": "9.0",
                    "clocks_mhz": {"sm": 1980, "max_sm": 1980}, "power_limit_w": 700.0},
            "jetson": None,
            "versions": {"promptkd_edge": "0.1.0", "torch": "2.14.1", "onnxruntime": "1.32.0", "tensorrt": None},
            "python": "3.11.7", "platform": "Linux-6.8.0-x86_64-with-glibc2.39",
        },
        "settings": {"batch_sizes": [1, 8, 32], "warmup": 10, "iterations": 50, "min_seconds": 1.0,
                     "end_to_end": True, "end_to_end_images": "64 generated 640x480 JPEG files"},
        "results": results,
        "unavailable": [{"model": "student", "backend": "tensorrt-fp16",
                         "reason": "TensorRT is not installed (pip install tensorrt-cu12)"}],
        "comparisons": [{"backend": "torch-eager-fp32", "batch": 8, "mode": "compute", "teacher_p50_ms": 5000.0,
                         "student_p50_ms": 1635.5, "speedup": 3.0571}],
        "limits": [{"model": "student", "backend": "onnxruntime-cuda-fp16", "batch": 32,
                    "limit_images_per_s": 22000.0, "basis": "35 GFLOP/image at 790 TFLOP/s fp16", "fraction": 0.41}],
    }


@pytest.fixture
def report() -> dict[str, Any]:
    return make_report()


def test_validate_accepts_a_full_report(report):
    validate_report(report)
    for key in ("comparisons", "unavailable"):
        report[key] = []
    del report["limits"]
    validate_report(report)


def test_validate_names_the_first_bad_field(report):
    missing = copy.deepcopy(report)
    del missing["results"][0]["p50_ms"]
    with pytest.raises(PkdError, match=r"results\[0\]\.p50_ms is missing"):
        validate_report(missing)
    for bad in ("fast", True, [1.0]):
        wrong = copy.deepcopy(report)
        wrong["results"][0]["p50_ms"] = bad
        with pytest.raises(PkdError, match=r"results\[0\]\.p50_ms must be a number or null"):
            validate_report(wrong)
    for mutate, field in ((lambda r: r.update(schema_version=2), "schema_version 2"),
                          (lambda r: r.update(schema="other"), "schema"),
                          (lambda r: r["results"][3].update(mode="warm"), r"results\[3\]\.mode"),
                          (lambda r: r["environment"].pop("versions"), r"environment\.versions is missing"),
                          (lambda r: r["settings"]["batch_sizes"].append("64"), r"settings\.batch_sizes\[3\]")):
        wrong = copy.deepcopy(report)
        mutate(wrong)
        with pytest.raises(PkdError, match=field):
            validate_report(wrong)
    with pytest.raises(PkdError, match="expected a JSON object"):
        validate_report([report])


def test_result_fields_match_the_rows(report):
    assert list(report["results"][0]) == RESULT_FIELDS
    assert ["model", "arch", *RESULT_FIELDS[1:], "compute_ratio"] == CSV_FIELDS


def test_write_all_writes_four_files_that_round_trip(report, tmp_path):
    paths = write_all(report, tmp_path / "out", stem="flowers")
    assert set(paths) == {"json", "csv", "md", "png"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "flowers.csv", "flowers.json", "flowers.md", "flowers.png"]
    assert json.loads(paths["json"].read_text()) == report

    with paths["csv"].open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == CSV_FIELDS
    assert len(paths["csv"].read_text().splitlines()) == len(report["results"]) + 1
    assert len(rows) == len(report["results"])
    assert rows[0]["arch"] == "ViT-B-16" and rows[9]["arch"] == "ViT-L-14"
    assert rows[0]["peak_gpu_mib"] == "" and rows[0]["power_w"] == ""  # None -> empty cell
    e2e = [r for r in rows if r["mode"] == "end_to_end"]
    assert e2e and all(r["first_call_ms"] == "" for r in e2e)
    assert float(rows[0]["p50_ms"]) == report["results"][0]["p50_ms"]

    assert paths["md"].read_text(encoding="utf-8") == markdown(report)
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_markdown_reads_well(report):
    md = markdown(report)
    assert md.startswith("# Inference benchmark: flowers")
    for backend in ("torch-eager-fp32", "onnxruntime-cpu-int8", "onnxruntime-cuda-fp16", "tensorrt-fp16"):
        assert backend in md
    assert "TensorRT is not installed (pip install tensorrt-cu12)" in md
    assert "3.06×" in md
    assert "41%" in md
    assert "—" in md  # peak GPU MiB of the CPU backends
    assert "## Compute" in md and "## End to end" in md and "## Teacher vs student" in md
    assert "NVIDIA H200 (driver 570.86.15" in md and "139.8 GiB" in md and "SM clock 1980 MHz, max 1980 MHz" in md
    assert "tensorrt (not installed)" in md
    assert "pkd bench runs/flowers --compare-teacher" in md
    assert "| student | onnxruntime-cpu-int8 | 8 | 528 |" in md  # 80 + 7*64 ms, three significant figures
    end_to_end = md.split("## End to end")[1].split("##")[0]
    assert "first call" not in end_to_end  # a column no row has is left out


def test_markdown_shows_jetson_and_cpu_only_machines(report):
    env = report["environment"]
    env["gpu"] = None
    env["jetson"] = {"model": "NVIDIA Jetson Orin Nano", "l4t": "36.4.0", "jetpack": "6.1", "power_mode": "15W",
                     "jetson_clocks": True}
    md = markdown(report)
    assert "**GPU:** none" in md
    assert "NVIDIA Jetson Orin Nano: L4T 36.4.0 (JetPack 6.1), power mode 15W, jetson_clocks on" in md


def test_plot_is_a_png_of_the_expected_size(report, tmp_path):
    from PIL import Image

    out = write_plot(report, tmp_path / "bench.png")
    assert out == tmp_path / "bench.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as im:
        assert im.size == (1440, 600)


def test_plot_handles_many_lines_and_no_results(report, tmp_path):
    from PIL import Image

    many = copy.deepcopy(report)
    for i in range(12):
        many["results"].append({**report["results"][0], "backend": f"extra-backend-{i}"})
    with Image.open(write_plot(many, tmp_path / "many.png")) as im:
        assert im.size[0] == 1440 and im.size[1] > 600  # taller, so the legend below the axes fits
    empty = {**report, "results": [], "limits": [], "comparisons": []}
    assert write_plot(empty, tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC


def test_non_finite_numbers_become_null_and_dashes(report, tmp_path):
    report["results"][0]["p99_ms"] = math.nan
    paths = write_all(report, tmp_path)
    assert json.loads(paths["json"].read_text())["results"][0]["p99_ms"] is None
    assert next(csv.DictReader(paths["csv"].open(newline="")))["p99_ms"] == ""


def _render(table) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_terminal_table_renders_every_backend(report):
    compute, e2e = _render(terminal_table(report, "compute")), _render(terminal_table(report, "end_to_end"))
    for backend in BACKENDS:
        assert backend in compute
    for backend in ("onnxruntime-cpu-int8", "onnxruntime-cuda-fp16"):
        assert backend in e2e
    assert "p50 ms" in compute and "img/s" in compute and "—" in compute
    with pytest.raises(PkdError, match="unknown bench mode"):
        terminal_table(report, "warm")



def test_the_record_round_trips_the_json_form_key_for_key(report):
    from promptkd_edge.bench.record import BenchReport

    report["environment"]["cpu_flags"] = ["avx2"]
    report["future_key"] = {"kept": True}  # a newer writer's key survives a read and a write
    record = BenchReport.from_dict(report)
    assert record.results[0].p50_ms == report["results"][0]["p50_ms"] and record.environment.cores == 16
    assert record.to_dict() == report and list(record.to_dict()) == list(report)
    assert list(record.results[0].to_dict()) == RESULT_FIELDS  # no gpu_process_mib key where none was measured
    del report["limits"]
    assert "limits" not in BenchReport.from_dict(report).to_dict()
    with pytest.raises(PkdError, match=r"results\[0\]\.p50_ms is missing"):
        del report["results"][0]["p50_ms"]
        BenchReport.from_dict(report)


def test_nvml_gpu_memory_is_a_new_optional_field(report, tmp_path):
    """ORT / TensorRT rows on a GPU carry gpu_process_mib (NVML: all of this process's GPU memory); the Markdown and
    terminal tables show it only where some row has it; the CSV keeps its columns."""
    gpu_rows = [r for r in report["results"] if r["device"] == "cuda"]
    for r in gpu_rows:
        r["gpu_process_mib"] = 1536.0
    paths = write_all(report, tmp_path)
    assert json.loads(paths["json"].read_text())["results"][-1]["gpu_process_mib"] == 1536.0
    assert "GPU MiB (NVML)" in markdown(report) and "1,536" in markdown(report)
    assert "GPU MiB (NVML)" in _render(terminal_table(report, "end_to_end"))
    assert next(csv.reader(paths["csv"].open(newline=""))) == CSV_FIELDS
    for r in gpu_rows:
        del r["gpu_process_mib"]
    assert "NVML" not in markdown(report)
    report["results"][0]["gpu_process_mib"] = "big"
    with pytest.raises(PkdError, match=r"results\[0\]\.gpu_process_mib must be a number or null"):
        validate_report(report)
