"""Class names where they enter (class lists, ImageFolder sub-folders, `--classes`, `with_class_names`, class
vectors) and where they leave (Triton's labels.txt, DeepStream's labels): one line each, told apart by CLIP's
tokenizer, a list (not a string), a file only when asked for with @, a BOM not part of the first name."""

from __future__ import annotations

import hashlib
import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import STUDENT, TEACHER, write_images
from safetensors.torch import save_file
from typer.testing import CliRunner

from promptkd_edge.cli import app
from promptkd_edge.errors import PkdError
from promptkd_edge.export.bundle import export_run
from promptkd_edge.export.options import ExportOptions
from promptkd_edge.formats.classes import read_class_names, validate_class_names
from promptkd_edge.models import compute_class_vectors, load_clip, load_teacher
from promptkd_edge.models.student import StudentConfig, build_student, save_student
from promptkd_edge.runtime import Classifier

NAMES = ["red_square", "green circle", "blue stripes"]
runner = CliRunner()
tokenizer = open_clip.get_tokenizer(TEACHER)  # the tiny teacher's: CLIP's byte pairs, a 16-token context


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per message


def cli(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def error_line(result) -> str:
    """The one `error:` line of a refused command (exit 2)."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def same_tokens(a: str, b: str) -> bool:
    """The independent reference: open_clip's tokenizer reads both class sentences as the same token ids."""
    rows = tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in (a, b)])
    return torch.equal(rows[0], rows[1])


@pytest.fixture(scope="module")
def text_bundle(module_dir):
    """A zero-shot run (teacher weights on disk, so `pkd classes` works) and its bundle: pixel input (DeepStream),
    logits and embeddings, the text encoder (names given on the device)."""
    root = module_dir
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in load_clip(TEACHER).model.state_dict().items()},
              str(root / "t.safetensors"))
    vectors = compute_class_vectors(load_teacher(f"{TEACHER}:{root / 't.safetensors'}"), NAMES)
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    student = build_student(load_clip(STUDENT), StudentConfig(spec=STUDENT, teacher_dim=vectors.dim, prompt_depth=2))
    save_student(student.eval(), run / "student.safetensors")
    vectors.save(run)
    write_images(root / "unlabeled", 8)
    bundle = root / "bundle"
    export_run(run, bundle, ExportOptions(head="both", input_format="pixels", text_encoder=True,
                                          data=str(root / "unlabeled"), parity_images=8))
    write_images(root / "imgs", 2)
    return run, bundle


def predict_labels(bundle: Path, images: Path, classes: str) -> set[str]:
    result = cli("predict", bundle, images, "--classes", classes, "--backend", "onnxruntime", "--top-k", "50",
                 "--json")
    assert result.exit_code == 0, result.output
    return {label for row in json.loads(result.stdout)["predictions"] for label in row["labels"]}


# ------------------------------------------------------------------------------- 4: one line per name


@pytest.mark.parametrize("bad", ["cat\ndog", "cat\rdog", "tab\there", "esc\x1b[0m", "nel\x85x", "ls\u2028x",
                                 "ps\u2029x"])
def test_a_name_that_is_not_one_line_is_refused_where_it_enters(text_bundle, tmp_path, bad):
    """A control character or a line/paragraph separator (what would break labels.txt into more lines than
    logits): refused with the class index, the name escaped and the real reason, wherever the name comes from."""
    run, bundle = text_bundle
    reason = "line break or control character"
    # an ImageFolder sub-folder (pkd classes --names FOLDER, pkd eval --data FOLDER)
    folder = write_images(tmp_path / "folder", 4, classes=["bird", bad])
    line = error_line(cli("classes", run, "--names", folder, "--out", tmp_path / "vectors"))
    assert f"class 2 {bad!r}" in line and reason in line and "one name per line" in line
    assert not (tmp_path / "vectors").exists()
    if "\n" not in bad:  # inside one line of a class-list file: refused, not split into two classes
        (tmp_path / "names.txt").write_text(f"bird\n{bad}\nfish\n", encoding="utf-8", newline="")
        line = error_line(cli("classes", run, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors"))
        assert f"class 2 {bad!r}" in line and reason in line
    # --classes and the API
    line = error_line(cli("predict", bundle, tmp_path / "folder", "--classes", f"bird,{bad}"))
    assert f"class 2 {bad!r}" in line and reason in line
    clf = Classifier.from_bundle(bundle, backend="onnxruntime")
    with pytest.raises(PkdError, match=reason):
        clf.with_class_names(["bird", bad])
    with pytest.raises(PkdError, match=reason):
        clf.with_classes(["bird", bad], np.eye(2, clf.bundle.model.embedding_dim, dtype=np.float32))


def test_image_folders_of_eval_and_teacher_are_checked_too(tiny_run, tmp_path):
    folder = write_images(tmp_path / "folder", 4, classes=["bird", "cat\ndog"])
    for args in (("eval", tiny_run, "--data", folder, "--workers", "0"),
                 ("teacher", "--teacher", TEACHER, "--random-init", "--data", folder, "--out", tmp_path / "t")):
        line = error_line(cli(*args))
        assert "class 2 'cat\\ndog'" in line and "line break or control character" in line, args
    assert not (tmp_path / "t").exists()


def _old_bundle(bundle: Path, out: Path, names: list[str]) -> Path:
    """A copy of `bundle` whose classes.json holds `names`, its manifest rehashed: what an older release (that
    did not check names) could have written."""
    shutil.copytree(bundle, out)
    meta = json.loads((out / "classes.json").read_text(encoding="utf-8"))
    meta["names"] = names
    (out / "classes.json").write_text(json.dumps(meta), encoding="utf-8")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["classes.json"] = hashlib.sha256((out / "classes.json").read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


def test_label_writers_check_an_old_bundle_again(text_bundle, tmp_path):
    """Triton's labels.txt (one name a line) and DeepStream's labels (one line): a name with a line break in an old
    bundle is refused for its real reason, and no labels file with more lines than logits is left."""
    _, bundle = text_bundle
    old = _old_bundle(bundle, tmp_path / "old", ["red\nsquare", "green circle", "blue stripes"])
    line = error_line(cli("export", old, "--triton", tmp_path / "triton"))
    assert "class 1 'red\\nsquare'" in line and "line break or control character" in line
    assert not list((tmp_path / "triton").rglob("labels.txt"))
    line = error_line(cli("export", old, "--deepstream", tmp_path / "ds"))
    assert "class 1 'red\\nsquare'" in line and "line break or control character" in line and "';'" not in line
    assert not (tmp_path / "ds" / "labels.txt").exists()
    # the good bundle: labels.txt has exactly one line per logit
    assert cli("export", bundle, "--triton", tmp_path / "good").exit_code == 0
    [labels] = (tmp_path / "good").rglob("labels.txt")
    assert labels.read_text(encoding="utf-8").splitlines() == NAMES


def test_an_older_runs_class_list_is_checked_where_it_is_read(text_bundle, tmp_path):
    run, _ = text_bundle
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    meta = json.loads((old / "classes.json").read_text(encoding="utf-8"))
    meta["names"] = ["red\tsquare", *meta["names"][1:]]
    (old / "classes.json").write_text(json.dumps(meta), encoding="utf-8")
    (tmp_path / "names.txt").write_text("owl\nbat\n", encoding="utf-8")
    for args in (("classes", old, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors"),
                 ("export", old, "--out", tmp_path / "bundle")):
        line = error_line(cli(*args))
        assert f"{old / 'classes.json'}: class 1 'red\\tsquare'" in line, args
    assert not (tmp_path / "vectors").exists() and not (tmp_path / "bundle").exists()


# ------------------------------------------------------------------ 5: names CLIP's tokenizer reads alike


ALIKE = [("Golden Retriever", "golden retriever"),  # case
         ("golden_retriever", "golden retriever"),  # '_' is read as a space
         (unicodedata.normalize("NFC", "crème brûlée"), unicodedata.normalize("NFD", "crème brûlée")),
         ("polar  bear", "polar bear"),  # inner whitespace
         ("t-rex", "t - rex"),  # spacing around punctuation
         ("fish &amp; chips", "fish & chips")]  # an HTML entity


@pytest.mark.parametrize("a,b", ALIKE)
def test_names_the_tokenizer_reads_alike_are_refused_naming_both(text_bundle, tmp_path, a, b):
    run, bundle = text_bundle
    assert same_tokens(a, b)  # the reference: they would get the very same class vector
    (tmp_path / "names.txt").write_text(f"owl\n{a}\n{b}\n", encoding="utf-8")
    with pytest.raises(PkdError, match="same text to CLIP's tokenizer"):  # where the list is read, before any model
        read_class_names(tmp_path / "names.txt")
    line = error_line(cli("classes", run, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors"))
    assert "classes 2" in line and "and 3" in line and "same text to CLIP's tokenizer" in line
    shown = (repr, repr) if repr(a) != repr(b) else (ascii, ascii)
    assert shown[0](a) in line and shown[1](b) in line
    assert not (tmp_path / "vectors").exists()
    line = error_line(cli("predict", bundle, run.parent / "imgs", "--classes", f"owl,{a},{b}"))
    assert "same text to CLIP's tokenizer" in line
    clf = Classifier.from_bundle(bundle, backend="onnxruntime")
    with pytest.raises(PkdError, match="same text to CLIP's tokenizer"):
        clf.with_class_names([a, b])
    with pytest.raises(PkdError, match="same text to CLIP's tokenizer"):  # vectors given: the labels still clash
        clf.with_classes([a, b], np.eye(2, clf.bundle.model.embedding_dim, dtype=np.float32))


def test_outer_whitespace_in_folder_names_and_api_lists(text_bundle, tmp_path):
    run, bundle = text_bundle
    assert same_tokens("fox", " fox ")
    folder = write_images(tmp_path / "folder", 4, classes=["fox", " fox "])
    line = error_line(cli("classes", run, "--names", folder, "--out", tmp_path / "vectors"))
    assert "' fox '" in line and "'fox'" in line
    with pytest.raises(PkdError, match="' fox '"):
        Classifier.from_bundle(bundle, backend="onnxruntime").with_class_names(["fox", " fox "])


def test_names_the_tokenizer_tells_apart_are_kept(text_bundle, tmp_path):
    run, bundle = text_bundle
    names = ["cat", "cats", "Straße", "strasse", "a b", "ab", "t-rex", "t rex"]
    assert not any(same_tokens(a, b) for i, a in enumerate(names) for b in names[i + 1:])
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    result = cli("classes", run, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "vectors" / "classes.json").read_text(encoding="utf-8"))["names"] == names
    assert predict_labels(bundle, text_bundle[0].parent / "imgs", ",".join(names)) == set(names)


def long_name(tail: str) -> str:
    return "very long and winding name of a class " + tail  # beyond the tiny teacher's 16 tokens


def test_names_equal_after_the_context_cut_are_refused_and_cuts_are_said(text_bundle, tmp_path):
    run, bundle = text_bundle
    a, b = long_name("ending in an owl"), long_name("ending in a bat")
    assert same_tokens(a, b) and not same_tokens("owl", "bat")  # equal only because both are cut
    (tmp_path / "names.txt").write_text(f"owl\n{a}\n{b}\n", encoding="utf-8")
    line = error_line(cli("classes", run, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors"))
    assert repr(a) in line and repr(b) in line and "cuts both to the same tokens" in line
    line = error_line(cli("predict", bundle, run.parent / "imgs", "--classes", f"owl,{a},{b}"))
    assert "cuts both to the same tokens" in line

    # one cut name among short ones: accepted, and `pkd classes` says which name was cut (the reference: its
    # sentence is longer than the tokenizer's context)
    names = ["owl", a, "bat"]
    cut = [n for n in names if len(tokenizer.encode(f"a photo of a {n}.")) + 2 > tokenizer.context_length]
    assert cut == [a]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    result = cli("classes", run, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == [f"note: class name {a!r} is longer than the text encoder's 16-token context: cut"]
    result = cli("classes", run, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors2", "--json")
    assert json.loads(result.stdout)["notes"] == [notes[0].removeprefix("note: ")]


def test_the_key_without_ftfy_still_catches_case_unicode_form_and_spacing(monkeypatch):
    """A core install (no ftfy/regex): the stand-in key."""
    from promptkd_edge.utils import clip_text

    def missing():
        raise PkdError("the text encoder needs ftfy and regex")

    monkeypatch.setattr(clip_text, "imports", missing)
    for a, b in ALIKE[:4] + [("ﬁsh", "fish")]:
        with pytest.raises(PkdError, match="same text to CLIP's tokenizer"):
            validate_class_names([a, b], "names")
    validate_class_names(["cat", "cats", "a b", "ab"], "names")


def test_the_key_is_what_open_clip_tokenizes(monkeypatch):
    """text_key: equal keys exactly when open_clip's token ids (without the cut) are equal, over variants of names
    that differ in case, Unicode form, spacing, entities and punctuation."""
    from promptkd_edge.utils.clip_text import text_key

    bases = ["Golden Retriever", "crème brûlée", "t-rex", "fish & chips", "it's a dog", "C++ code", "日本の猫",
             "x² ½", "ＦＵＬＬ width", "naïve café", "don't", "a.b", "a. b", "ab", "a b", "e-mail", "3.14"]
    variants = []
    for text in bases:
        variants += [text, text.upper(), text.lower(), unicodedata.normalize("NFD", text), f"  {text} ",
                     text.replace(" ", "  "), text.replace("&", "&amp;"), text.replace("-", " - "),
                     text.replace(".", " . ")]
    rows = tokenizer(variants, context_length=200).numpy()
    keys = [text_key(v) for v in variants]
    for i in range(len(variants)):
        for j in range(i + 1, len(variants)):
            assert (keys[i] == keys[j]) == bool(np.array_equal(rows[i], rows[j])), (variants[i], variants[j])


# ------------------------------------------------------------------------------- 6: a list, not a string


def test_one_string_is_not_a_class_list(text_bundle):
    _, bundle = text_bundle
    clf = Classifier.from_bundle(bundle, backend="onnxruntime")
    with pytest.raises(PkdError, match=r"must be a list of names, not one string 'cat,dog'.*\['cat', 'dog'\]"):
        clf.with_class_names("cat,dog")
    with pytest.raises(PkdError, match="must be a list of names"):
        clf.with_classes("ab", np.eye(2, clf.bundle.model.embedding_dim, dtype=np.float32))
    named = clf.with_class_names(n for n in ("fox", "bear"))  # any iterable of names
    assert named.class_names == ["fox", "bear"]
    assert clf.with_class_names(("fox", "bear")).class_names == ["fox", "bear"]


# ---------------------------------------------------------------- 12, 15: --classes names, @FILE for a file


def test_classes_reads_a_file_only_when_asked_with_an_at(text_bundle, tmp_path, monkeypatch):
    _, bundle = text_bundle
    images = text_bundle[0].parent / "imgs"
    (tmp_path / "dog").write_text("cat\nbird\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = cli("predict", bundle, images, "--classes", "dog,fox", "--backend", "onnxruntime", "--json")
    assert result.exit_code == 0, result.output
    assert {label for row in json.loads(result.stdout)["predictions"] for label in row["labels"]} == {"dog", "fox"}
    # one name that is also a file's name: names, with a hint how to read the file
    result = cli("predict", bundle, images, "--classes", "dog", "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert "write --classes @dog" in result.output
    assert predict_labels(bundle, images, "@dog") == {"cat", "bird"}
    write_images(tmp_path / "folder", 2, classes=["owl", "bat"])
    assert predict_labels(bundle, images, "@folder") == {"owl", "bat"}
    line = error_line(cli("predict", bundle, images, "--classes", "@missing.txt"))
    assert "class list not found: missing.txt" in line
    assert "name the file after '@'" in error_line(cli("predict", bundle, images, "--classes", "@"))
    result = cli("predict", "--help")
    assert "@FILE" in result.output


def test_a_long_class_list_is_names_not_a_path(text_bundle, tmp_path):
    _, bundle = text_bundle
    names = [f"class number {i}" for i in range(40)]
    value = ",".join(names)
    assert len(value.encode()) > 255  # longer than a file name may be
    assert predict_labels(bundle, text_bundle[0].parent / "imgs", value) == set(names)
    line = error_line(cli("predict", bundle, text_bundle[0].parent / "imgs", "--classes", "@" + "x" * 300))
    assert "cannot read class list" in line or "class list not found" in line


# ------------------------------------------------------------------------------------ 22: a UTF-8 BOM


def test_a_bom_is_not_part_of_the_first_name(text_bundle, tmp_path):
    run, _ = text_bundle
    (tmp_path / "names.txt").write_bytes("owl\r\nbat\r\n".encode("utf-8-sig"))
    assert read_class_names(tmp_path / "names.txt") == ["owl", "bat"]
    result = cli("classes", run, "--names", tmp_path / "names.txt", "--out", tmp_path / "vectors")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "vectors" / "classes.json").read_text(encoding="utf-8"))["names"] == ["owl", "bat"]
