"""CPU backends: OpenVINO (f32, bf16, INT8 graphs), the gated bf16 precision, and `backend="auto"` choosing the
fastest gated option by a cached probe; INT8 that survives planted activation outliers (SmoothQuant)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import STUDENT, TEACHER, pkd, tiny_config, write_images

from promptkd_edge.errors import PkdError
from promptkd_edge.export import parity as gate
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.formats.manifest import TensorInfo
from promptkd_edge.runtime import Classifier
from promptkd_edge.runtime import auto as auto_mod
from promptkd_edge.runtime.backends import Backend
from promptkd_edge.runtime.bundle import open_bundle
from promptkd_edge.runtime.openvino_backend import OpenVinoBackend, has_bf16
from promptkd_edge.runtime.preprocess import prepare

needs_bf16 = pytest.mark.skipif(not has_bf16(), reason="this CPU has no native bf16 (AMX / AVX512_BF16)")


@pytest.fixture(scope="module")
def cpu_bundles(tiny_run, module_dir) -> dict[str, Path]:
    root = module_dir
    for name, precision in (("fp32", "fp32"), ("int8", "int8")):
        export_run(tiny_run, root / name, ExportOptions(precision=precision, parity_images=32, calibration_images=32))
    return {"fp32": root / "fp32", "int8": root / "int8"}


@pytest.fixture(scope="module")
def images(tiny_run) -> np.ndarray:
    spec = open_bundle_spec(tiny_run)
    return prepare(gate.collect_images(str(tiny_run.parent / "unlabeled"), 16, 0, spec.size).parity, spec)


def open_bundle_spec(run: Path):
    from promptkd_edge.models.student import load_student

    return load_student(run / "student.safetensors").preprocess


def test_each_cpu_backend_matches_onnxruntime_fp32_within_its_thresholds(cpu_bundles, images):
    """OpenVINO f32 and bf16 on the FP32 graph, ONNX Runtime and OpenVINO on the INT8 graph, each against ONNX
    Runtime FP32 with the gate of its precision (embeddings compared inside the logits graph)."""
    from promptkd_edge.export.gate_run import embeddings_inside
    from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend

    fp32, int8 = (cpu_bundles[k] / "model.onnx" for k in ("fp32", "int8"))
    inside = {p: embeddings_inside(p, "logits") for p in (fp32, int8)}
    reference = OnnxRuntimeBackend(fp32, providers="cpu", extra_outputs=inside[fp32]).run(images)
    cases = [("fp32", OpenVinoBackend(fp32, precision="fp32", extra_outputs=inside[fp32])),
             ("int8", OnnxRuntimeBackend(int8, providers="cpu", extra_outputs=inside[int8])),
             ("int8", OpenVinoBackend(int8, precision="fp32", extra_outputs=inside[int8]))]
    if has_bf16():
        cases += [("bf16", OpenVinoBackend(fp32, precision="bf16", extra_outputs=inside[fp32])),
                  ("int8", OpenVinoBackend(int8, precision="bf16", extra_outputs=inside[int8]))]
    for precision, backend in cases:
        figures = gate.compare(reference, backend.run(images), precision, backend.description, "test")
        assert figures["passed"], (backend.description, figures["failures"])
    ov = OpenVinoBackend(fp32, precision="fp32")
    np.testing.assert_allclose(ov.run(images)["logits"], reference["logits"], atol=1e-4)
    assert ov.description.startswith("openvino ") and ov.description.endswith("CPU fp32")


def test_openvino_is_safe_from_many_threads(cpu_bundles, images):
    from concurrent.futures import ThreadPoolExecutor

    ov = OpenVinoBackend(cpu_bundles["fp32"] / "model.onnx")
    want = [ov.run(images[i:i + 2])["logits"] for i in range(0, 16, 2)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: ov.run(images[i:i + 2])["logits"], range(0, 16, 2)))
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    # the throughput hint (parallel streams) for apps that call from many threads: the same numbers
    clf = Classifier.from_bundle(cpu_bundles["fp32"], backend="openvino", precision="fp32", hint="throughput")
    assert clf.backend.hint == "throughput"
    with ThreadPoolExecutor(4) as pool:
        streamed = list(pool.map(lambda i: clf.backend.run(images[i:i + 2])["logits"], range(0, 16, 2)))
    for a, b in zip(want, streamed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(PkdError, match="unknown OpenVINO hint 'fast'"):
        Classifier.from_bundle(cpu_bundles["fp32"], hint="fast")


@needs_bf16
def test_bf16_gate_is_recorded_and_vouches_for_the_runtime(cpu_bundles):
    """An FP32 export with OpenVINO on a bf16 CPU offers bf16: a passing optional entry, which the runtime uses."""
    manifest = open_bundle(cpu_bundles["fp32"]).manifest
    (entry,) = [p for p in manifest.parity if p.runtime == "openvino-bf16"]
    assert entry.precision == "bf16" and entry.passed and entry.required is False
    assert entry.thresholds == {"top1_agreement": 0.995, "min_cosine": 0.999} and entry.reference == "pytorch"
    figures = entry.extra
    assert figures["thresholds_of"] == "bf16" and figures["cpu"]["model"] and figures["cosine_of"] == "embeddings"
    assert "openvino-bf16" in manifest.passed_gates() and manifest.valid
    clf = Classifier.from_bundle(cpu_bundles["fp32"], backend="openvino")
    assert clf.backend.precision == "bf16" and not clf.notes
    # the INT8 graph's offer keeps the INT8 bundle's promise: INT8's thresholds against the PyTorch student
    manifest = open_bundle(cpu_bundles["int8"]).manifest
    (entry,) = [p for p in manifest.parity if p.runtime == "openvino-bf16"]
    assert entry.extra["thresholds_of"] == "int8" and entry.thresholds == gate.THRESHOLDS["int8"]
    (own,) = [p for p in manifest.parity if p.target == "onnxruntime-cpu"]
    assert entry.passed and entry.reference == "pytorch" and entry.images == own.images
    assert Classifier.from_bundle(cpu_bundles["int8"], backend="openvino").backend.precision == "bf16"


def _without_bf16(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["parity"] = [p for p in manifest["parity"] if p.get("runtime") != "openvino-bf16"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@needs_bf16
def test_adding_the_bf16_gate_to_a_bundle(cpu_bundles, tmp_path, monkeypatch):
    bundle = _without_bf16(cpu_bundles["fp32"], tmp_path / "b")
    clf = Classifier.from_bundle(bundle, backend="openvino")
    assert clf.backend.precision == "fp32"  # no gate, no bf16
    forced = Classifier.from_bundle(bundle, backend="openvino", precision="bf16")
    assert forced.backend.precision == "bf16" and "no passing bf16 parity gate" in forced.notes[0]
    r = pkd("export", str(bundle), "--precision", "bf16", "--parity-images", "16", "--json")
    assert r.returncode == 0, r.stderr
    (entry,) = [p for p in json.loads(r.stdout)["parity"] if p.get("runtime") == "openvino-bf16"]
    assert entry["passed"] and entry["reference"] == "onnxruntime-cpu fp32" and entry["images"] == 16
    assert entry["thresholds_of"] == "bf16"
    assert Classifier.from_bundle(bundle, backend="openvino").backend.precision == "bf16"
    # an INT8 bundle: against ONNX Runtime on its INT8 graph, with bf16's thresholds (what bf16 adds)
    int8 = _without_bf16(cpu_bundles["int8"], tmp_path / "i")
    r = pkd("export", str(int8), "--precision", "bf16", "--parity-images", "16", "--json")
    assert r.returncode == 0, r.stderr
    (entry,) = [p for p in json.loads(r.stdout)["parity"] if p.get("runtime") == "openvino-bf16"]
    assert entry["reference"] == "onnxruntime-cpu int8" and entry["thresholds_of"] == "bf16"
    # a failing gate records nothing (and the bundle's files stay as they were), unless forced
    before = (bundle / "manifest.json").read_bytes()
    monkeypatch.setitem(gate.THRESHOLDS, "bf16", {"top1_agreement": 1.0, "min_cosine": 1.0 + 1e-9})
    from promptkd_edge.export.cpu_gate import add_bf16_gate

    with pytest.raises(PkdError, match="OpenVINO bf16 failed the parity gate"):
        add_bf16_gate(bundle, parity_images=8)
    assert (bundle / "manifest.json").read_bytes() == before
    add_bf16_gate(bundle, parity_images=8, force=True)
    manifest = open_bundle(bundle).manifest
    assert manifest.valid and "openvino-bf16" not in manifest.passed_gates()  # recorded as failed, never used
    assert Classifier.from_bundle(bundle, backend="openvino").backend.precision == "fp32"


def test_bf16_needs_openvino_and_a_bf16_cpu(tiny_run, tmp_path, monkeypatch):
    import promptkd_edge.runtime.openvino_backend as ov

    monkeypatch.setattr(ov, "has_bf16", lambda: False)
    with pytest.raises(PkdError, match="--precision bf16 is gated on this CPU, and cannot be here: this CPU .*"
                                       "no native bf16"):
        export_run(tiny_run, tmp_path / "b", ExportOptions(precision="bf16", parity_images=4))
    assert not (tmp_path / "b").exists()
    manifest = export_run(tiny_run, tmp_path / "plain", ExportOptions(parity_images=4))  # no offer, no entry
    assert "openvino-bf16" not in {p.runtime for p in manifest.parity}
    monkeypatch.setattr(ov, "openvino_version", lambda: None)
    with pytest.raises(PkdError, match="OpenVINO is not installed"):
        export_run(tiny_run, tmp_path / "b", ExportOptions(precision="bf16", parity_images=4))
    with pytest.raises(PkdError, match="precision bf16 runs on OpenVINO"):
        Classifier.from_bundle(tmp_path / "plain", backend="onnxruntime", precision="bf16")


@needs_bf16
def test_required_bf16_gate_fails_the_export(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(gate.THRESHOLDS, "bf16", {"top1_agreement": 1.0, "min_cosine": 1.0 + 1e-9})
    with pytest.raises(PkdError, match="parity gate failed .*openvino-cpu bf16"):
        export_run(tiny_run, tmp_path / "b", ExportOptions(precision="bf16", parity_images=4))
    assert not (tmp_path / "b").exists()
    # offered (a plain fp32 export): a failing bf16 entry is recorded as failed, the bundle stays valid
    manifest = export_run(tiny_run, tmp_path / "ok", ExportOptions(parity_images=4))
    (entry,) = [p for p in manifest.parity if p.runtime == "openvino-bf16"]
    assert not entry.passed and manifest.valid


# ------------------------------------------------------------------------------------------------ auto


class FakeBackend(Backend):
    device = "cpu"

    def __init__(self, name, log):
        self.name, self.log, self.description = name, log, f"fake {name}"
        log.append(("load", name))

    def run(self, batch):
        return {"logits": np.zeros((len(batch), 3), np.float32)}

    def close(self):
        self.log.append(("close", self.name))


def _options(log, fail=()):
    def loader(name):
        def load():
            if name in fail:
                raise PkdError(f"{name} cannot load here")
            return FakeBackend(name, log)
        return load
    return [auto_mod.Option(n, loader(n), "test") for n in ("onnxruntime", "openvino-fp32", "openvino-bf16")]


MODEL = TensorInfo(name="image", shape=["batch", 3, 8, 8], dtype="float32")


def test_auto_picks_the_fastest_and_remembers_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "cache"))
    timings = {"onnxruntime": {"1": 90.0, "8": 80.0}, "openvino-fp32": {"1": 80.0, "8": 70.0},
               "openvino-bf16": {"1": 40.0, "8": 30.0}}
    measured = []

    def fake_measure(backend, model):
        measured.append(backend.name)
        assert model is MODEL
        return timings[backend.name]

    log: list = []
    kw = dict(model_sha256="abc", threads=2, versions={"openvino": "x"}, measure_fn=fake_measure)
    backend, choice = auto_mod.choose(_options(log), MODEL, **kw)
    assert backend.name == "openvino-bf16" and choice.picked == "openvino-bf16" and not choice.cached
    assert measured == ["onnxruntime", "openvino-fp32", "openvino-bf16"]
    # the losers are released as soon as a faster option is measured: never more than two loaded at once
    assert log == [("load", "onnxruntime"), ("load", "openvino-fp32"), ("close", "onnxruntime"),
                   ("load", "openvino-bf16"), ("close", "openvino-fp32")]
    assert choice.reason.startswith("fastest of 3 gated options") and "openvino-bf16 40/30" in choice.reason
    # the second load builds only the winner and measures nothing
    log.clear()
    backend, again = auto_mod.choose(_options(log), MODEL, **kw)
    assert again.cached and again.picked == "openvino-bf16" and log == [("load", "openvino-bf16")]
    assert len(measured) == 3
    # another thread count (or graph, CPU, library version) is another measurement
    auto_mod.choose(_options(log), MODEL, **{**kw, "threads": 1})
    assert len(measured) == 6
    # an option that cannot load is skipped and said so; a lone option is not measured
    timings["onnxruntime"] = {"1": 1.0, "8": 1.0}
    _, choice = auto_mod.choose(_options(log, fail=("onnxruntime",)), MODEL, **{**kw, "model_sha256": "other"})
    assert choice.picked == "openvino-bf16" and "cannot load here" in choice.skipped["onnxruntime"]
    _, lone = auto_mod.choose(_options(log)[:1], MODEL, **kw)
    assert lone.picked == "onnxruntime" and lone.timings == {} and len(measured) == 8
    # an unwritable cache only costs a new measurement
    (tmp_path / "ro").write_text("a file, not a folder")
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "ro"))
    count = len(measured)
    _, choice = auto_mod.choose(_options(log), MODEL, **kw)
    assert choice.picked == "onnxruntime" and not choice.cached and len(measured) == count + 3


def test_measure_times_batches_of_1_and_8():
    calls = []

    class Counting:
        def run(self, batch):
            calls.append(batch.shape)
            return {}

    timings = auto_mod.measure(Counting(), MODEL)
    assert set(timings) == {"1", "8"} and all(v >= 0 for v in timings.values())
    assert calls.count((1, 3, 8, 8)) == 1 + auto_mod.PROBE_CALLS[1]
    assert calls.count((8, 3, 8, 8)) == 1 + auto_mod.PROBE_CALLS[8]
    uint8 = auto_mod.probe_input(TensorInfo(name="image", shape=["batch", 8, 8, 3], dtype="uint8"), 2)
    assert uint8.dtype == np.uint8 and uint8.shape == (2, 8, 8, 3)


@needs_bf16
def test_classifier_auto_offers_only_gated_options(cpu_bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "cache"))
    seen = []

    def fake_measure(backend, model):
        name = "openvino-" + backend.precision if backend.name == "openvino" else backend.name
        seen.append(name)
        return {"onnxruntime": {"1": 3.0}, "openvino-fp32": {"1": 2.0}, "openvino-bf16": {"1": 1.0}}[name]

    monkeypatch.setattr(auto_mod, "measure", fake_measure)
    clf = Classifier.from_bundle(cpu_bundles["fp32"])
    assert seen == ["onnxruntime", "openvino-fp32", "openvino-bf16"]
    assert clf.choice.picked == "openvino-bf16" and clf.description.endswith("CPU bf16 (auto)")
    seen.clear()
    assert Classifier.from_bundle(cpu_bundles["fp32"], precision="fp32").choice.picked == "openvino-fp32"
    assert seen == ["onnxruntime", "openvino-fp32"]  # precision="fp32" leaves bf16 out
    seen.clear()
    monkeypatch.setenv("PKD_CACHE_DIR", str(tmp_path / "cache-nobf16"))  # the same graph and options: a cache hit
    Classifier.from_bundle(_without_bf16(cpu_bundles["fp32"], tmp_path / "nobf16"))
    assert seen == ["onnxruntime", "openvino-fp32"]  # no gate, no bf16
    seen.clear()
    Classifier.from_bundle(_without_bf16(cpu_bundles["int8"], tmp_path / "int8-nobf16"))
    assert seen == ["onnxruntime", "openvino-fp32"]  # the INT8 graph on both, in its own arithmetic
    seen.clear()
    Classifier.from_bundle(cpu_bundles["int8"])
    assert seen == ["onnxruntime", "openvino-fp32", "openvino-bf16"]  # and the rest in bf16, as gated
    assert Classifier.from_bundle(cpu_bundles["fp32"], probe=False).choice is None  # ONNX Runtime, unmeasured
    # pkd predict --json and pkd doctor --bundle say what runs and why
    write_images(tmp_path / "imgs", 2)
    r = pkd("predict", str(cpu_bundles["fp32"]), str(tmp_path / "imgs"), "--json",
            env={"PKD_CACHE_DIR": str(tmp_path / "cache2")})
    out = json.loads(r.stdout)
    assert out["backend_choice"]["picked"] in ("onnxruntime", "openvino-fp32", "openvino-bf16")
    assert set(out["backend_choice"]["timings_ms_per_image"]) == {"onnxruntime", "openvino-fp32", "openvino-bf16"}
    r = pkd("doctor", "--no-trt-check", "--bundle", str(cpu_bundles["fp32"]), "--json",
            env={"PKD_CACHE_DIR": str(tmp_path / "cache2")})
    doctor = json.loads(r.stdout)
    assert doctor["bundle"]["choice"]["cached"] and doctor["bundle"]["choice"]["picked"] == out["backend_choice"][
        "picked"]
    assert doctor["openvino"]["available"] and doctor["openvino"]["self_test"]
    assert "BF16" in doctor["openvino"]["capabilities"] and doctor["cpu"]["speed_flags"]


def test_openvino_runtime_imports_no_torch(cpu_bundles):
    code = ("import sys, numpy as np\n"
            "from promptkd_edge.runtime import Classifier\n"
            f"c = Classifier.from_bundle({str(cpu_bundles['fp32'])!r}, backend='openvino')\n"
            "p = c.predict([np.zeros((32, 32, 3), np.uint8)])[0]\n"
            "print(c.description, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "openvino" and r.stdout.split()[-1] == "False"


# ------------------------------------------------------------------------------------------------ bench


def test_bench_times_every_cpu_backend_with_its_flop_ceiling(cpu_bundles, tmp_path):
    r = pkd("bench", str(cpu_bundles["fp32"]), "--backends",
            "onnxruntime-cpu-fp32,onnxruntime-cpu-int8,openvino-cpu-fp32,openvino-cpu-bf16,openvino-cpu-int8,"
            "openvino-cpu-int8-bf16,auto,torch-eager-fp32", "--batch-sizes", "1,2", "--iterations", "2", "--warmup",
            "1", "--min-seconds", "0", "--no-e2e", "--out", str(tmp_path / "b"), "--json",
            env={"PKD_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    rows = {(x["backend"], x["batch"]) for x in report["results"]}
    expected = ["onnxruntime-cpu-fp32", "onnxruntime-cpu-int8", "openvino-cpu-fp32", "openvino-cpu-int8", "auto",
                "torch-eager-fp32"] + (["openvino-cpu-bf16", "openvino-cpu-int8-bf16"] if has_bf16() else [])
    assert {(b, n) for b in expected for n in (1, 2)} <= rows, report["unavailable"]
    limits = {(x["backend"], x["batch"]): x for x in report["limits"]}
    bf16 = limits.get(("openvino-cpu-bf16", 1))
    fp32 = limits[("onnxruntime-cpu-fp32", 1)]
    assert "FLOP/cycle" in fp32["basis"] and 0 < fp32["fraction"] < 1
    if bf16:
        assert bf16["limit_images_per_s"] > fp32["limit_images_per_s"]  # AMX / AVX512_BF16 peaks are higher
        int8_bf16, int8 = limits[("openvino-cpu-int8-bf16", 1)], limits[("openvino-cpu-int8", 1)]
        assert int8_bf16["limit_images_per_s"] == int8["limit_images_per_s"]  # INT8 layers bound both


def test_cpu_peak_per_cycle_from_flags():
    from promptkd_edge.bench.cpu_peak import cpu_peaks, per_cycle

    assert per_cycle({"avx2", "fma"}) == {"fp32": (32, per_cycle({"avx2", "fma"})["fp32"][1]),
                                          "bf16": (32, "no native bf16: the fp32 rate"),
                                          "int8": (64, "no VNNI: twice the fp32 rate")}
    xeon = per_cycle({"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"})
    assert [xeon[p][0] for p in ("fp32", "bf16", "int8")] == [64, 1024, 2048]
    zen = per_cycle({"avx512f", "avx512_bf16", "avx512_vnni"})
    assert [zen[p][0] for p in ("fp32", "bf16", "int8")] == [64, 128, 256]
    peaks = cpu_peaks(2, {"max_mhz": 2500.0, "flags": ["avx512f", "avx512_bf16"]})
    assert peaks["fp32"]["tflops"] == pytest.approx(2 * 2.5e9 * 64 / 1e12)
    assert peaks["bf16"]["basis"].startswith("2 cores x 2.50 GHz x 128 bf16 FLOP/cycle")
    assert cpu_peaks(2, {"max_mhz": None, "flags": []}) == {}
    vm = cpu_peaks(2, {"max_mhz": 2600.0, "mhz_from": "cpuinfo", "flags": ["avx512f"]})  # no cpufreq: nominal
    assert vm["fp32"]["basis"].startswith("2 cores x 2.60 GHz (cpuinfo's clock, no cpufreq here: turbo may exceed")


# ------------------------------------------------------------------------------------------------ INT8 outliers


def _planted_run(root: Path, factor: float = 40.0) -> Path:
    """A tiny distillation run whose student base weights carry 3 planted outlier channels in every block: LayerNorm
    scale x factor, the following weights / factor (the function barely changes, its activations do)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from promptkd_edge.train.distill import distill

    torch.manual_seed(0)
    model = open_clip.create_model(STUDENT)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            for ln, weight in ((block.ln_1, block.attn.in_proj_weight), (block.ln_2, block.mlp.c_fc.weight)):
                for c in (7, 30, 55):
                    ln.weight[c] *= factor
                    ln.bias[c] *= factor
                    weight[:, c] /= factor
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "student.safetensors"))
    cfg = tiny_config(root, student=f"{STUDENT}:{root / 'student.safetensors'}", teacher=TEACHER, epochs=2,
                      prompt_depth=2)
    distill(cfg, root / "run")
    return root / "run"


def test_int8_survives_planted_activation_outliers(tmp_path):
    """Without smoothing the planted channels cost INT8 its gate (embedding cosine); SmoothQuant's migration
    brings it back, with the same operators (same speed). The tiny student (width 96) needs 150x outliers to lose
    its gate; ViT-B/16 loses it at 40x (benchmarks/int8_outliers.py)."""
    import onnx

    run = _planted_run(tmp_path / "planted", factor=150.0)
    options = dict(precision="int8", parity_images=48, calibration_images=48, force=True, int8_fallback=False)
    raw = export_run(run, tmp_path / "raw", ExportOptions(smooth=False, **options))
    smoothed = export_run(run, tmp_path / "smooth", ExportOptions(**options))
    raw_cos, smooth_cos = raw.parity[0].min_cosine, smoothed.parity[0].min_cosine
    assert raw_cos < 0.99 <= smooth_cos, (raw_cos, smooth_cos)
    assert smoothed.valid and not raw.valid
    info = smoothed.model.conversion["smoothing"]
    assert info["method"] == "smoothquant" and info["outlier_ratio_before"] > 20 > 2 > info["outlier_ratio_after"]
    ops = [sorted(n.op_type for n in onnx.load(str(tmp_path / d / "model.onnx")).graph.node) for d in ("raw", "smooth")]
    assert ops[0] == ops[1]


def test_smoothing_leaves_the_function_unchanged(tiny_run):
    """x W = (x / s)(s W): the smoothed folded student computes what the original does (float rounding only)."""
    import copy

    import torch

    from promptkd_edge.export.fold import FoldedStudent
    from promptkd_edge.export.smooth import smooth
    from promptkd_edge.models import ClassVectors, load_student

    student = load_student(tiny_run / "student.safetensors")
    folded = FoldedStudent(student, ClassVectors.load(tiny_run))
    original = copy.deepcopy(folded)
    x = torch.randn(6, 3, 32, 32)
    info = smooth(folded, x.numpy())
    assert info["layernorms"] == 2 * len(student.tower.visual.transformer.resblocks) + 1
    with torch.no_grad():
        torch.testing.assert_close(folded(x), original(x), rtol=1e-4, atol=1e-4)
        assert not torch.equal(folded.tower.visual.transformer.resblocks[0].ln_1.weight,
                               original.tower.visual.transformer.resblocks[0].ln_1.weight)


def test_bundle_flops_are_counted_from_its_graph(cpu_bundles, tiny_run):
    """A bundle's GFLOP/image (for the FLOP ceilings) from its ONNX graph equals torch's FLOP counter on the same
    folded student (prompts, projector and head included), for the FP32 and the INT8 QDQ graph alike."""
    from promptkd_edge.bench.flops import onnx_gflops, torch_gflops
    from promptkd_edge.export.fold import FoldedStudent
    from promptkd_edge.models import load_student
    from promptkd_edge.models.class_vectors import ClassVectors

    student = load_student(tiny_run / "student.safetensors")
    folded = FoldedStudent(student, ClassVectors.load(tiny_run), "logits")
    fp32, int8 = (onnx_gflops(cpu_bundles[k] / "model.onnx") for k in ("fp32", "int8"))
    assert fp32 == pytest.approx(int8, rel=1e-6)
    assert fp32 == pytest.approx(torch_gflops(folded, (3, *student.preprocess.size)), rel=0.05)


ALT_STACK_CHECK = """
import ctypes, gc, sys
import numpy as np
from promptkd_edge.runtime.openvino_backend import OpenVinoBackend, cpu_capabilities

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

def alt_stack_is_mapped():
    s = Stack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s)) == 0
    spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in open("/proc/self/maps")]
    return s.sp is None or any(lo <= s.sp < hi for lo, hi in spans)

first = OpenVinoBackend(sys.argv[1])
second = OpenVinoBackend(sys.argv[1])
cpu_capabilities()
first.close()  # closed in the order they were made, not the reverse
second.close()
del first, second
gc.collect()
print(alt_stack_is_mapped())
OpenVinoBackend(sys.argv[1]).run(np.zeros((1, 3, 32, 32), np.float32))
"""


def test_openvino_leaves_the_signal_stack_mapped(cpu_bundles):
    """Each OpenVINO Core swaps the thread's signal alternate stack for its own and unmaps it when it dies;
    two Cores dying in creation order left the main thread on an unmapped stack, and the next signal (a DataLoader
    worker exiting) wrote its frame over memory mapped there later: SIGSEGV in our suite. One Core per process."""
    r = subprocess.run([sys.executable, "-c", ALT_STACK_CHECK, str(cpu_bundles["fp32"] / "model.onnx")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True"]


def test_evaluation_with_workers_after_openvino_ran_in_the_process(tiny_run, cpu_bundles, tmp_path):
    """`pkd demo` exports with the bf16 gate (OpenVINO) and then evaluates with DataLoader workers, whose exits
    signal this process: same numbers as without workers, no crash."""
    from promptkd_edge.eval.accuracy import evaluate_run

    for _ in range(2):
        OpenVinoBackend(cpu_bundles["fp32"] / "model.onnx").run(np.zeros((1, 3, 32, 32), np.float32))
    labeled = write_images(tmp_path / "labeled", 9, classes=["red_square", "green_circle", "blue_stripes"])
    with_workers = evaluate_run(tiny_run, labeled, workers=2)
    assert with_workers.top1 == evaluate_run(tiny_run, labeled, workers=0).top1
