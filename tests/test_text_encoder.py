"""Open vocabulary on the device: the teacher's text tower and CLIP's tokenizer in the bundle, torch-free."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import STUDENT, TEACHER, pkd, write_images

from promptkd_edge.errors import PkdError
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.models import ClassVectors, Teacher, TeacherConfig, compute_class_vectors, load_clip, load_teacher
from promptkd_edge.models.student import StudentConfig, build_student, save_student
from promptkd_edge.models.teacher import DEFAULT_TEMPLATE, save_teacher
from promptkd_edge.runtime import Classifier
from promptkd_edge.runtime.tokenizer import ClipTokenizer

NAMES = ["red_square", "green circle", "blue stripes"]
NEW = ["red fox", "polar bear", "Crème brûlée", "a_b_c", "日本の猫", "naïve café &amp; bar"]


# ------------------------------------------------------------------------------------------------ tokenizer


def fuzz_strings(n: int, seed: int = 0) -> list[str]:
    """Words, numbers, punctuation, accents, CJK, emoji, HTML entities, odd whitespace, over-long and empty."""
    rng = np.random.default_rng(seed)
    pieces = ["photo", "Golden_Retriever", "of", "a", "don't", "it's", "we'll", "I'M", "3.14", "2024", "x" * 40,
              "crème", "brûlée", "naïve", "Ångström", "東京", "日本語", "猫", "🦊", "🐻‍❄️", "👍🏽", "&amp;", "&lt;b&gt;",
              "&#39;", "!!!", "?!", "...", "--", "(", ")", "[x]", "<start_of_text>", "<END_OF_TEXT>", "\t", "\n",
              "\u00a0", "\u200b", "ﬁ", "ＦＵＬＬ", "Straße", "İstanbul", "ǅ", "١٢٣", "Ⅻ", "x²", "½", "ß",
              "façade", "mojibake: Ã©", "ðŸ¦Š", "C++", "e-mail", "snake_case_name", "CamelCase"]
    out = ["", " ", "a", "a photo of a {}."]
    while len(out) < n:
        k = int(rng.integers(1, 12 if rng.random() < 0.9 else 120))
        sep = [" ", "", "  ", " \t "][int(rng.integers(0, 4))]
        out.append(sep.join(str(pieces[int(i)]) for i in rng.integers(0, len(pieces), k)))
    return out


@pytest.mark.parametrize("arch", ["ViT-B-32", TEACHER])  # CLIP's 77-token context; the tiny teacher's 16
def test_tokenizer_matches_open_clip_token_for_token(arch):
    reference = open_clip.get_tokenizer(arch)
    merges = sorted(reference.bpe_ranks, key=reference.bpe_ranks.get)
    ours = ClipTokenizer(merges, ["<start_of_text>", "<end_of_text>"], reference.context_length, "lower")
    texts = fuzz_strings(3000)
    (got, cut), want = ours.tokenize(texts), reference(texts).numpy()
    mismatched = [texts[i] for i in range(len(texts)) if not np.array_equal(got[i], want[i])]
    assert not mismatched, mismatched[:5]
    assert len(cut) > 10  # over-long texts were in the mix, cut as open_clip cuts them
    assert all(len(ours.encode(texts[i])) + 2 > reference.context_length for i in cut)
    assert np.array_equal(ours(texts), got)
    assert got.dtype == np.int64 and got.shape == (3000, reference.context_length)


# ------------------------------------------------------------------------------------------------ runs


def _run(root: Path, prompted: bool) -> Path:
    """A run whose teacher has weights on disk (zero-shot: a local file; prompted: a `pkd teacher` folder)."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    clip = load_clip(TEACHER)
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(root / "t.safetensors"))
    source = f"{TEACHER}:{root / 't.safetensors'}"
    if prompted:
        torch.manual_seed(1)
        tuned = Teacher(load_clip(source), TeacherConfig(spec=source, vision_depth=2, text_depth=2, init_std=0.3))
        (root / "teacher").mkdir()
        save_teacher(tuned, root / "teacher" / "teacher.safetensors")
        source = str(root / "teacher")
    teacher = load_teacher(source)
    vectors = compute_class_vectors(teacher, NAMES, "itap of a {}." if not prompted else DEFAULT_TEMPLATE)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    student = build_student(load_clip(STUDENT), StudentConfig(spec=STUDENT, teacher_dim=vectors.dim, prompt_depth=2))
    save_student(student.eval(), run / "student.safetensors")
    vectors.save(run)
    write_images(root / "unlabeled", 8)
    return run


@pytest.fixture(scope="module", params=["zero-shot", "prompted"])
def text_bundle(request, module_dir):
    root = module_dir / request.param
    run = _run(root, request.param == "prompted")
    bundle = root / "bundle"
    export_run(run, bundle, ExportOptions(head="both", text_encoder=True, data=str(root / "unlabeled"),
                                          parity_images=8))
    yield run, bundle
    shutil.rmtree(root, ignore_errors=True)  # ~75 MB per flavour


def test_text_encoder_equals_pkd_classes(text_bundle):
    """The bundle's encoder, fed by the torch-free tokenizer, gives `pkd classes`' vectors for names the run never
    saw (max |delta| <= 1e-4), and its gate says so for the run's own names."""
    from promptkd_edge.runtime.bundle import open_bundle
    from promptkd_edge.runtime.text import TextEncoder

    run, bundle = text_bundle
    manifest = open_bundle(bundle).manifest
    entry = manifest.text_encoder
    (fp32,) = [g for g in entry.parity if g.precision == "fp32"]
    assert fp32.passed and fp32.extra["max_abs_diff"] <= 1e-4 and fp32.extra["names"] == len(NAMES)
    assert entry.extra["prompted"] == (load_teacher(ClassVectors.load(run).teacher).prompted)
    teacher = load_teacher(ClassVectors.load(run).teacher)
    template = ClassVectors.load(run).template if not teacher.prompted else DEFAULT_TEMPLATE
    want = compute_class_vectors(teacher, NEW, template).vectors.numpy()
    encoder = TextEncoder(open_bundle(bundle))
    got, notes = encoder.encode(NEW)
    assert np.abs(got - want).max() <= 1e-4 and not notes
    # the runtime cuts a batch after its longest text; the whole context gives the same vectors (causal mask)
    assert entry.tokenizer["cut_after_longest_end"] is True
    full = encoder.tokenizer(encoder.sentences(NEW))
    assert encoder._cut(full).shape[1] < full.shape[1]
    whole = encoder.backend.run(full)["text_embeddings"]
    assert np.abs(whole - got).max() <= 1e-5
    # the files are in the manifest: a changed merges file is refused like any other
    assert "text/merges.txt.gz" in manifest.files and "text/encoder.onnx" in manifest.files


def test_with_class_names_classifies_against_the_teachers_vectors(text_bundle):
    run, bundle = text_bundle
    clf = Classifier.from_bundle(bundle, backend="onnxruntime")
    teacher = load_teacher(ClassVectors.load(run).teacher)
    template = ClassVectors.load(run).template if not teacher.prompted else DEFAULT_TEMPLATE
    w = compute_class_vectors(teacher, NEW, template).vectors.numpy()
    images = [np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8) for i in range(6)]
    named = clf.with_class_names(NEW)
    assert named.class_names == NEW
    logits = named.logits(images)
    reference = clf.bundle.logit_scale * clf.embed(images) @ w.T
    assert np.abs(logits - reference).max() <= 1e-3
    assert (logits.argmax(1) == reference.argmax(1)).all()
    assert [p.label for p in named.predict(images[:1], top_k=len(NEW))][0] in NEW


def test_text_runtime_imports_no_torch(text_bundle):
    _, bundle = text_bundle
    code = ("import sys, numpy as np\n"
            "from promptkd_edge.runtime import Classifier\n"
            f"c = Classifier.from_bundle({str(bundle)!r}, backend='onnxruntime').with_class_names(['fox', 'bear'])\n"
            "print(c.predict([np.zeros((32, 32, 3), np.uint8)])[0].label, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "False" and r.stdout.split()[0] in ("fox", "bear")


def test_bad_names_get_one_line_each(text_bundle):
    _, bundle = text_bundle
    clf = Classifier.from_bundle(bundle, backend="onnxruntime")
    with pytest.raises(PkdError, match="holds no class names"):
        clf.with_class_names([])
    with pytest.raises(PkdError, match="class 2 has an empty name"):
        clf.with_class_names(["fox", "  "])
    with pytest.raises(PkdError, match="duplicate class name 'fox'"):
        clf.with_class_names(["fox", "bear", "fox"])
    long = "very " * 100 + "long name"
    named = clf.with_class_names(["fox", long])
    assert any("longer than the text encoder's 16-token context: cut" in n for n in named.notes)


def test_predict_with_classes_on_the_command_line(text_bundle, tmp_path):
    _, bundle = text_bundle
    write_images(tmp_path / "imgs", 2)
    r = pkd("predict", str(bundle), str(tmp_path / "imgs"), "--classes", "red fox, polar bear", "--json",
            "--backend", "onnxruntime", "--top-k", "2")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {label for row in out["predictions"] for label in row["labels"]} == {"red fox", "polar bear"}
    (tmp_path / "names.txt").write_text("fox\nbear\nowl\n")
    r = pkd("predict", str(bundle), str(tmp_path / "imgs"), "--classes", f"@{tmp_path / 'names.txt'}", "--json",
            "--backend", "onnxruntime", "--top-k", "3")
    assert r.returncode == 0, r.stderr
    assert {label for row in json.loads(r.stdout)["predictions"] for label in row["labels"]} == {"fox", "bear", "owl"}
    r = pkd("predict", str(bundle), str(tmp_path / "imgs"), "--classes", "fox,,bear")
    assert r.returncode == 2 and "class 2 has an empty name" in r.stderr and "Traceback" not in r.stderr


def test_text_encoder_needs_an_embeddings_head_and_real_weights(tmp_path, tiny_run):
    r = pkd("export", str(tiny_run), "--out", str(tmp_path / "b"), "--text-encoder")
    assert r.returncode == 2 and "--text-encoder needs --head embeddings or both" in r.stderr
    r = pkd("export", str(tiny_run), "--out", str(tmp_path / "b"), "--head", "both", "--text-encoder",
            "--parity-images", "4")
    assert r.returncode == 2 and "random weights" in r.stderr
    assert not (tmp_path / "b").exists()
    plain = tmp_path / "plain"
    export_run(tiny_run, plain, ExportOptions(head="both", parity_images=4))
    with pytest.raises(PkdError, match="has no text encoder: export it with"):
        Classifier.from_bundle(plain).with_class_names(["fox"])


def test_bench_times_the_text_encoder(text_bundle, tmp_path):
    _, bundle = text_bundle
    r = pkd("bench", str(bundle), "--backends", "onnxruntime-cpu-fp32", "--batch-sizes", "1", "--iterations", "1",
            "--warmup", "0", "--min-seconds", "0", "--no-e2e", "--text-names", "200", "--out", str(tmp_path / "b"),
            "--json")
    assert r.returncode == 0, r.stderr
    text = json.loads(r.stdout)["text_encoder"]
    assert text["rows"] and all(row["names"] == 200 and row["names_per_s"] > 0 for row in text["rows"])
    assert text["files_mb"] > 0
