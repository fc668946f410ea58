"""benchmarks/students.py (over promptkd_edge/bench/students.py) on the package's tiny architectures: every row,
the ratios to the reference, the Pareto fronts, the plot, and the reasons for architectures and backends that could
not be measured."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
UNCOVERED = "pkd-test-tiny-mixer"  # a timm MLP-Mixer tower: no student family covers it
BACKENDS = ("torch-eager-fp32", "onnxruntime-cpu-fp32")
CUDA_ONLY = "torch-eager-fp16"


def load_script():
    spec = importlib.util.spec_from_file_location("students_bench", BENCHMARKS / "students.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.fixture(scope="module")
def students():
    from promptkd_edge.bench import students

    return students


@pytest.fixture(scope="module")
def uncovered_arch():
    """A small MLP-Mixer architecture (timm) known to open_clip for this module only."""
    import open_clip.factory

    from promptkd_edge.models.openclip import register_tiny_configs

    register_tiny_configs()
    text = copy.deepcopy(open_clip.factory._MODEL_CONFIGS["pkd-tiny-student"]["text_cfg"])
    open_clip.factory._MODEL_CONFIGS[UNCOVERED] = {
        "embed_dim": 32, "text_cfg": text,
        "vision_cfg": {"image_size": 32, "timm_model_name": "mixer_s32_224", "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear"}}
    yield UNCOVERED
    open_clip.factory._MODEL_CONFIGS.pop(UNCOVERED, None)


@pytest.fixture(scope="module")
def tiny_report(script, students, uncovered_arch, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("students")
    archs = students.tiny_archs()
    # made-up top-1 figures for the tiny towers: the Pareto front needs some (the real file cites its source)
    facts = {a: {"tag": "test", "imagenet_top1": 0.5 + 0.01 * i} for i, a in enumerate(archs)}
    zero_shot = tmp / "zero_shot.json"
    zero_shot.write_text(json.dumps({"source": "test figures", "architectures": facts}))
    out = tmp / "out"
    report = script.main(["--tiny", "--archs", ",".join([*archs, uncovered_arch, "not-an-arch"]),
                            "--backends", ",".join([*BACKENDS, CUDA_ONLY]), "--zero-shot", str(zero_shot),
                            "--out", str(out), "--threads", "1"])
    return report, out, archs


def test_every_architecture_has_its_rows(tiny_report, students):
    report, out, archs = tiny_report
    assert students.TINY_REFERENCE in archs and len(archs) >= 6  # one tiny tower per family the package registers
    written = json.loads((out / "students.json").read_text())
    assert [r["arch"] for r in written["table"]] == [r["arch"] for r in report["table"]]
    from promptkd_edge.models.towers import family_of

    for arch in archs:
        timed = [r for r in report["table"] if r["arch"] == arch]
        assert [r["backend"] for r in timed] == list(BACKENDS), arch
        for r in timed:
            assert r["family"] == family_of(arch) and r["reason"] is None
            assert r["params_m"] > 0 and r["gflops_per_image"] > 0 and r["peak_rss_mib"] > 0
            assert sorted(r["batches"]) == ["1", "8"]
            for batch, cell in r["batches"].items():
                assert cell["p50_ms"] > 0
                assert cell["images_per_s"] == pytest.approx(1000 * int(batch) / cell["p50_ms"], rel=0.01)


def test_ratios_are_to_the_reference_on_the_same_backend_and_batch(tiny_report):
    report, _, _ = tiny_report
    ref = {r["backend"]: r["batches"] for r in report["table"] if r["arch"] == report["reference"]}
    timed = [r for r in report["table"] if r["backend"]]
    for r in timed:
        for batch, cell in r["batches"].items():
            assert cell["p50_vs_reference"] == pytest.approx(cell["p50_ms"] / ref[r["backend"]][batch]["p50_ms"],
                                                             abs=1e-3)
    assert all(c["p50_vs_reference"] == 1.0 for b in ref.values() for c in b.values())


def test_architectures_without_a_student_are_rows_with_their_reason(tiny_report):
    report, out, _ = tiny_report
    rows = {r["arch"]: r for r in report["table"] if r["backend"] is None}
    assert set(rows) == {UNCOVERED, "not-an-arch"}
    assert rows[UNCOVERED]["family"] == "no student adaptation"
    assert rows[UNCOVERED]["reason"].startswith(f"no student adaptation covers the {UNCOVERED} image tower")
    assert "not an open_clip architecture" in rows["not-an-arch"]["reason"]
    md = (out / "students.md").read_text()
    assert f"not measured: {rows[UNCOVERED]['reason']}" in md


def test_unavailable_backends_say_why(tiny_report):
    report, out, archs = tiny_report
    gaps = {(u["arch"], u["backend"]): u["reason"] for u in report["unavailable"]}
    assert set(gaps) == {(a, CUDA_ONLY) for a in archs}
    assert all(reason.startswith("needs a CUDA GPU") for reason in gaps.values())
    assert f"**{archs[0]} · {CUDA_ONLY}:** needs a CUDA GPU" in (out / "students.md").read_text()


def test_pareto_front_and_plot(tiny_report, students):
    report, out, _ = tiny_report
    for backend, front in report["pareto"].items():
        points = {r["arch"]: (r["batches"]["1"]["p50_ms"], r["zero_shot_top1"]) for r in report["table"]
                  if r["backend"] == backend}
        dominated = {a for a, (lat, acc) in points.items()
                     if any(lat2 <= lat and acc2 >= acc and (lat2, acc2) != (lat, acc)
                            for lat2, acc2 in points.values())}
        assert set(front) == set(points) - dominated and front
        assert [points[a][0] for a in front] == sorted(points[a][0] for a in front)
    assert students.pareto([("a", 1.0, 0.5), ("b", 2.0, 0.6), ("c", 3.0, 0.55), ("d", 1.5, 0.4)]) == ["a", "b"]
    png = out / report["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_names_the_cpu_and_its_flags(tiny_report):
    report, out, _ = tiny_report
    env = report["environment"]
    md = (out / "students.md").read_text()
    assert env["cpu"] and f"**CPU:** {env['cpu']}" in md
    assert all(flag in md for flag in env["cpu_flags"])
    assert report["settings"]["threads"] == 1


def test_zero_shot_facts_are_cited_or_blank_with_a_reason(script):
    data = json.loads(script.ZERO_SHOT.read_text())
    assert script.ZERO_SHOT.parent.name == "bench"  # package data: `pkd bench A,B` reads it from an install
    assert data["source"].startswith("https://github.com/mlfoundations/open_clip/blob/")
    facts = data["architectures"]
    assert set(facts) == set(script.DEFAULT_ARCHS)
    for arch, fact in facts.items():
        top1 = fact["imagenet_top1"]
        if top1 is None:
            assert fact["reason"], arch
        else:
            assert 0 < top1 < 1 and math.isfinite(top1) and fact["row"].startswith(f"{arch},{fact['tag']},")
            assert f"{top1:.4f}" in fact["row"]


def test_cpu_means_every_cpu_backend_pkd_bench_has(students):
    from promptkd_edge.bench.backends import BACKENDS

    names = [s.name for s in students.cpu_backends()]
    assert names == [n for n, s in BACKENDS.items() if not s.cuda_only and n != "auto"]
    assert {"torch-eager-fp32", "onnxruntime-cpu-fp32", "openvino-cpu-fp32", "openvino-cpu-bf16"} <= set(names)


def test_an_architecture_that_fails_is_a_row_with_its_reason(students, monkeypatch):
    from promptkd_edge.bench.backends import BACKENDS
    from promptkd_edge.bench.harness import BenchConfig

    cfg = BenchConfig(target="", backends=[BACKENDS[CUDA_ONLY]], batch_sizes=[1], device="cpu", end_to_end=False,
                      warmup=0, iterations=1, classes=4)
    entry = students.bench_arch(students.TINY_REFERENCE, cfg)
    assert entry["results"] == [] and entry["family"] == "openclip-vit"
    assert entry["reason"].startswith(f"no backend ran it: {CUDA_ONLY}: needs a CUDA GPU")

    def broken(cfg, progress=None):
        raise RuntimeError("export failed\ntraceback lines")

    monkeypatch.setattr(students, "measure", broken)
    entry = students.bench_arch(students.TINY_REFERENCE, cfg)
    assert entry["reason"] == "could not be built: RuntimeError: export failed"
    table = students.rows([entry], {}, students.TINY_REFERENCE)
    assert [(r["arch"], r["backend"], r["reason"]) for r in table] == [
        (students.TINY_REFERENCE, None, entry["reason"])]


# ------------------------------------------------------------------------------------ pkd bench A,B,... (the CLI)


def _cli(*args: str):
    from typer.testing import CliRunner

    from promptkd_edge.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})
    assert "Traceback" not in result.output, result.output
    return result


def test_pkd_bench_compares_several_architectures_as_students(tmp_path):
    """A comma list of architectures is the students benchmark through `pkd bench`: one report, ratios to the
    first architecture, the package's cited zero-shot facts, an architecture open_clip does not know as a row."""
    out = tmp_path / "cmp"
    archs = ["pkd-tiny-mci", "pkd-tiny-student", "not-an-arch"]
    result = _cli("bench", ",".join(archs), "--backends", "torch-eager-fp32", "--batch-sizes", "1,2", "--warmup",
                  "0", "--iterations", "1", "--max-seconds", "2", "--classes", "4", "--threads", "1", "--out", out,
                  "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["reference"] == "pkd-tiny-mci" and [e["arch"] for e in report["architectures"]] == archs
    ref_rows = [r for r in report["table"] if r["arch"] == "pkd-tiny-mci"]
    assert [r["batches"][b]["p50_vs_reference"] for r in ref_rows for b in ("1", "2")] == [1.0, 1.0]
    other = next(r for r in report["table"] if r["arch"] == "pkd-tiny-student")
    for b in ("1", "2"):  # the ratio is of this run's own figures
        mine, ref = other["batches"][b]["p50_ms"], ref_rows[0]["batches"][b]["p50_ms"]
        assert other["batches"][b]["p50_vs_reference"] == pytest.approx(mine / ref, abs=1e-3)
    assert "not an open_clip architecture" in next(r for r in report["table"] if r["arch"] == "not-an-arch")["reason"]
    assert report["zero_shot_source"].startswith("https://github.com/mlfoundations/open_clip/")
    assert not any(r["mode"] != "compute" for e in report["architectures"] for r in e["results"])
    assert json.loads((out / "students.json").read_text())["table"] == report["table"]
    assert (out / "students.md").read_text().startswith("# Students by family on ")

    shown = _cli("bench", "pkd-tiny-student,pkd-tiny-mci", "--backends", "torch-eager-fp32", "--batch-sizes", "1",
                 "--warmup", "0", "--iterations", "1", "--max-seconds", "2", "--classes", "4", "--threads", "1",
                 "--reference", "pkd-tiny-mci", "--out", tmp_path / "shown")
    assert shown.exit_code == 0, shown.output
    assert "ratios: p50 over pkd-tiny-mci's" in shown.output and "pkd-tiny-student" in shown.output
    assert "report: " in shown.output


@pytest.mark.parametrize(("args", "says"), [
    (["pkd-tiny-student,pkd-tiny-mci", "--reference", "ViT-B-16"], "--reference ViT-B-16 is not one of the "
                                                                    "architectures compared"),
    (["pkd-tiny-student", "--reference", "pkd-tiny-mci"], "--reference divides one architecture's latency"),
    (["pkd-tiny-student,pkd-tiny-student"], "names an architecture twice"),
    (["pkd-tiny-student,pkd-tiny-mci", "--compare-teacher"], "--compare-teacher times one student"),
])
def test_pkd_bench_several_architectures_refuses_in_one_line(tmp_path, args, says):
    result = _cli("bench", *args, "--backends", "torch-eager-fp32", "--out", tmp_path / "x")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], result.output
    assert not (tmp_path / "x").exists()
