"""pkd bench on tiny models: every backend available here reports, the others are listed with a reason."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import STUDENT, TEACHER, pkd

from promptkd_edge.bench.backends import BACKENDS, parse_backends
from promptkd_edge.bench.flops import torch_gflops
from promptkd_edge.bench.harness import BenchConfig, comparisons, compute_ratios, limits, run_bench
from promptkd_edge.bench.record import ResultRow
from promptkd_edge.bench.report import validate_report
from promptkd_edge.bench.timing import Timing, time_calls
from promptkd_edge.errors import PkdError
from promptkd_edge.runtime import pipeline

CPU_BACKENDS = "torch-eager-fp32,onnxruntime-cpu-fp32,onnxruntime-cpu-int8,torch-eager-bf16,onnxruntime-cuda-fp32," \
               "tensorrt"


def test_percentiles_on_known_samples():
    t = Timing(batch=1, samples_ms=[float(v) for v in range(100, 0, -1)])  # 1..100, in any order
    assert t.p50 == pytest.approx(50.5) and t.p90 == pytest.approx(90.1) and t.p99 == pytest.approx(99.01)
    assert t.to_dict()["min_ms"] == 1.0 and t.mean == pytest.approx(50.5)
    t = Timing(batch=8, samples_ms=[10.0, 20.0, 30.0, 40.0])
    assert t.p50 == 25.0 and t.images_per_s == pytest.approx(8 * 1000 / 25.0)
    with pytest.raises(ValueError):
        Timing(batch=1, samples_ms=[])


def test_time_calls_warms_up_and_times_with_the_clock_it_is_given():
    ticks = iter(float(i) for i in range(1000))  # every clock read advances one second
    calls = []
    t = time_calls(lambda: calls.append(1), 4, warmup=2, iterations=5, clock=lambda: next(ticks))
    assert len(calls) == 2 + 5 and t.samples_ms == [1000.0] * 5
    t = time_calls(lambda: None, 1, warmup=0, iterations=3, timer=lambda fn: 7.5)
    assert t.samples_ms == [7.5, 7.5, 7.5]


def vit_formula_gflops(visual, extra_tokens: int = 0) -> float:
    """The analytic count `pkd bench` used before the FLOP counter (an open_clip ViT tower's matmuls, attention
    scores, patch embedding and projection), kept here as the reference the counter must agree with."""
    width, layers = visual.transformer.width, len(visual.transformer.resblocks)
    mlp, patch = visual.transformer.resblocks[0].mlp.c_fc.out_features, visual.conv1.kernel_size[0]
    h, w = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    n = (h // patch) * (w // patch) + 1 + extra_tokens
    per_layer = 4 * n * width * width + 2 * n * width * mlp + 2 * n * n * width
    patch_embed = (h // patch) * (w // patch) * 3 * patch * patch * width
    return 2 * (layers * per_layer + patch_embed + width * visual.output_dim) / 1e9


def test_flop_counter_matches_the_vit_formula_and_the_published_figure():
    """ViT-B/16 at 224 px: about 35 GFLOP per image (17.6 G multiply-adds), the basis of the GPU limit. torch's
    FlopCounterMode (on meta tensors) agrees with the analytic ViT formula to 0.01 % here (35.13 both; ViT-L-14:
    162.03 both), and counts towers the formula cannot (any architecture, prompts, heads)."""
    import open_clip

    visual = open_clip.create_model("ViT-B-16").visual.eval()
    counted = torch_gflops(visual, (3, 224, 224))
    assert 34.5 <= counted <= 36.0
    assert counted == pytest.approx(vit_formula_gflops(visual), rel=1e-3)
    assert next(visual.parameters()).device.type == "cpu"  # counted on meta copies: the module is untouched


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    cfg = BenchConfig(target=STUDENT, backends=parse_backends(CPU_BACKENDS), batch_sizes=[1, 4], warmup=1,
                      iterations=3, min_seconds=0.0, max_seconds=5.0, device="cpu", threads=2,
                      compare_teacher=True, teacher=TEACHER, classes=10, e2e_images=6, command="test")
    return run_bench(cfg)


def test_every_backend_available_here_reports_and_the_others_say_why(report):
    validate_report(report)
    ran = {(r["model"], r["backend"]) for r in report["results"]}
    for model in ("student", "teacher"):
        for backend in ("torch-eager-fp32", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"):
            assert (model, backend) in ran
    reasons = {(u["model"], u["backend"]): u["reason"] for u in report["unavailable"]}
    assert "needs a CUDA GPU" in reasons[("student", "torch-eager-bf16")]
    assert "needs a CUDA GPU" in reasons[("teacher", "onnxruntime-cuda-fp32")]
    assert set(reasons) | ran == {(m, b) for m in ("student", "teacher") for b in CPU_BACKENDS.split(",")}
    for r in report["results"]:
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["images_per_s"] > 0
        assert r["peak_rss_mib"] > 0 and r["device"] == "cpu"
        assert (r["first_call_ms"] is not None) == (r["mode"] == "compute")
    modes = {(r["backend"], r["batch"], r["mode"]) for r in report["results"] if r["model"] == "student"}
    assert ("onnxruntime-cpu-int8", 4, "end_to_end") in modes and ("torch-eager-fp32", 1, "compute") in modes
    assert report["environment"]["cores"] >= 1 and report["environment"]["gpu"] is None
    assert report["settings"]["end_to_end_images"].startswith("6 generated")


def test_teacher_comparison_is_a_measured_ratio(report):
    rows = {(r["model"], r["backend"], r["batch"], r["mode"]): r for r in report["results"]}
    for c in report["comparisons"]:
        t = rows[("teacher", c["backend"], c["batch"], c["mode"])]["p50_ms"]
        s = rows[("student", c["backend"], c["batch"], c["mode"])]["p50_ms"]
        assert c["speedup"] == pytest.approx(t / s, rel=0.01, abs=1e-3)
    assert len(report["comparisons"]) == 3 * 2 * 3  # 3 backends x 2 batches x 3 modes
    assert report["models"][1]["gflops_per_image"] > report["models"][0]["gflops_per_image"]


def test_end_to_end_rows_from_files_and_frames_with_their_ratio_to_compute(report):
    """Camera-like inputs (1080p JPEG files, 1080p frames in memory) beside every compute row, through the runtime's
    pipeline, each with images/s over the compute row's."""
    rows = {(r["model"], r["backend"], r["batch"], r["mode"]): r for r in report["results"]}
    for (model, backend, batch, mode), row in rows.items():
        if mode == "compute":
            assert "compute_ratio" not in row
            for e2e in ("end_to_end", "end_to_end_frames"):
                other = rows[(model, backend, batch, e2e)]
                assert other["compute_ratio"] == pytest.approx(other["images_per_s"] / row["images_per_s"], rel=1e-3,
                                                               abs=1e-4)
    assert report["settings"]["end_to_end_images"] == "6 generated 1920x1080 JPEG files (quality 90)"
    assert report["settings"]["end_to_end_frames"] == "6 uint8 RGB frames in memory (1920x1080)"
    assert report["settings"]["end_to_end_workers"] == pipeline.default_workers()
    assert not [t for t in threading.enumerate() if t.name.startswith(pipeline.THREAD_PREFIX)]


def test_end_to_end_tables_show_the_ratio(report, tmp_path):
    from rich.console import Console

    from promptkd_edge.bench.report import terminal_table, write_all

    console = Console(width=200, record=True)
    console.print(terminal_table(report, "end_to_end_frames"))
    text = console.export_text()
    assert "of compute" in text and text.startswith("End to end, frames")
    paths = write_all(report, tmp_path)
    md = paths["md"].read_text()
    assert "## End to end, frames" in md and "of compute" in md and "worker thread" in md
    header, *lines = paths["csv"].read_text().splitlines()
    assert header.endswith(",compute_ratio") and any(line.split(",")[6] == "end_to_end_frames" for line in lines)


def test_end_to_end_rows_run_through_the_runtime_pipeline(monkeypatch):
    """The rows time the runtime's pipeline (what Classifier.predict and pkd predict run), with its workers."""
    real, calls = pipeline.chunks, []

    def spy(items, spec, **kw):
        calls.append(kw)
        return real(items, spec, **kw)

    monkeypatch.setattr(pipeline, "chunks", spy)
    cfg = BenchConfig(target=STUDENT, backends=parse_backends("onnxruntime-cpu-fp32"), batch_sizes=[2], warmup=0,
                      iterations=1, min_seconds=0.0, device="cpu", classes=3, e2e_images=2, e2e_frames=1, workers=1)
    report = run_bench(cfg)
    assert [(c["workers"], c["batch_size"]) for c in calls] == [(1, 2), (1, 2)]
    assert [r["mode"] for r in report["results"]] == ["compute", "end_to_end", "end_to_end_frames"]
    assert report["settings"]["end_to_end_workers"] == 1
    with pytest.raises(PkdError, match="workers must be"):
        BenchConfig(target=STUDENT, workers=-2).validate()


def test_compute_ratios_from_known_rows():
    rows = [ResultRow(model="student", backend="auto", device="cpu", precision="bf16", batch=16, mode=m,
                      images_per_s=v) for m, v in (("compute", 32.0), ("end_to_end", 16.0),
                                                   ("end_to_end_frames", 24.0))]
    rows.append(ResultRow(model="student", backend="auto", device="cpu", precision="bf16", batch=8,
                          mode="end_to_end", images_per_s=10.0))  # no compute row at batch 8: no ratio
    compute_ratios(rows)
    assert [r.compute_ratio for r in rows] == [None, 0.5, 0.75, None]
    assert "compute_ratio" not in rows[0].to_dict() and rows[1].to_dict()["compute_ratio"] == 0.5


def test_limits_and_comparisons_from_known_rows():
    results = [ResultRow(model=m, backend="torch-compile-bf16", device="cuda", precision="bf16", batch=256,
                         mode="compute", p50_ms=p, images_per_s=256 * 1000 / p)
               for m, p in (("student", 25.6), ("teacher", 102.4))]
    assert comparisons(results)[0]["speedup"] == 4.0
    models = [{"role": "student", "gflops_per_image": 35.9}, {"role": "teacher", "gflops_per_image": None}]
    [limit] = limits(models, results, 790.0)
    assert limit["limit_images_per_s"] == pytest.approx(790e3 / 35.9, rel=1e-3)
    assert limit["fraction"] == pytest.approx(10000 / (790e3 / 35.9), rel=1e-3)
    assert limits(models, results, None) == []


def test_bench_a_bundle_from_the_cli(tiny_run, tmp_path):
    from promptkd_edge.export.bundle import export_run
    from promptkd_edge.export.options import ExportOptions

    export_run(tiny_run, tmp_path / "bundle", ExportOptions(parity_images=2))
    r = pkd("bench", str(tmp_path / "bundle"), "--backends", "onnxruntime-cpu-fp32,tensorrt", "--batch-sizes",
            "1,2", "--iterations", "3", "--warmup", "1", "--min-seconds", "0", "--out", str(tmp_path / "rep"),
            "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    validate_report(report)
    assert report["target"]["kind"] == "bundle"
    assert {r["backend"] for r in report["results"]} == {"onnxruntime-cpu-fp32"}
    assert [u["backend"] for u in report["unavailable"]] == ["tensorrt"]
    for suffix in ("json", "csv", "md", "png"):
        assert (tmp_path / "rep" / f"bench.{suffix}").is_file()
    assert json.loads((tmp_path / "rep" / "bench.json").read_text()) == report


def test_bad_bench_input_is_one_line(tmp_path):
    for args, message in [(("bench", "no-such-arch"), "not a bundle, a run or an open_clip architecture"),
                          (("bench", STUDENT, "--backends", "tensorrtx"), "unknown backend tensorrtx"),
                          (("bench", STUDENT, "--batch-sizes", "1,x"), "not a comma list"),
                          (("bench", str(tmp_path)), "neither a bundle")]:
        r = pkd(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    with pytest.raises(PkdError, match="positive"):
        BenchConfig(target=STUDENT, batch_sizes=[0]).validate()
    assert set(BACKENDS) >= {"torch-compile-fp32", "torch-cudagraphs-bf16", "onnxruntime-tensorrt-fp16"}


def test_torch_compile_runs_on_cpu_and_reports_first_call_separately():
    """torch.compile is available here (inductor + g++): its compile time lands in first_call_ms, not p50."""
    cfg = BenchConfig(target=STUDENT, backends=parse_backends("torch-compile-fp32"), batch_sizes=[2], warmup=1,
                      iterations=3, min_seconds=0.0, device="cpu", classes=5, end_to_end=False)
    report = run_bench(cfg)
    [row] = report["results"]
    assert row["backend"] == "torch-compile-fp32" and not report["unavailable"]
    assert row["first_call_ms"] > 10 * row["p50_ms"]


def test_documented_schema_names_every_result_field():
    from pathlib import Path

    from promptkd_edge.bench.report import RESULT_FIELDS

    doc = (Path(__file__).parent.parent / "docs" / "bench-report.md").read_text()
    assert all(f"`{name}`" in doc for name in RESULT_FIELDS)


def test_bench_a_run_times_its_own_student(tiny_run):
    cfg = BenchConfig(target=str(tiny_run), backends=parse_backends("onnxruntime-cpu-fp32"), batch_sizes=[1],
                      warmup=0, iterations=2, min_seconds=0.0, end_to_end=False)
    report = run_bench(cfg)
    validate_report(report)
    assert report["target"]["kind"] == "run" and report["models"][0]["classes"] == 3
    assert [r["backend"] for r in report["results"]] == ["onnxruntime-cpu-fp32"]
