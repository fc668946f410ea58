"""Class vectors: names from files and folders, W against open_clip directly, storage round trip."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TEACHER

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import read_class_names
from promptkd_edge.models import ClassVectors, Teacher, compute_class_vectors, load_clip


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return Teacher(load_clip(TEACHER))


def test_class_names_from_file_and_folder(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("golden_retriever\n  tabby cat \nsphynx\n\n\n")
    assert read_class_names(f) == ["golden_retriever", "tabby cat", "sphynx"]
    for name in ("b_class", "a_class", ".hidden"):
        (tmp_path / "folder" / name).mkdir(parents=True)
    (tmp_path / "folder" / "stray.txt").write_text("x")
    assert read_class_names(tmp_path / "folder") == ["a_class", "b_class"]


@pytest.mark.parametrize("content,message", [
    ("", "holds no class names"),
    ("\n\n", "holds no class names"),
    ("cat\n\ndog\n", "line 2 is empty"),
    ("cat\ndog\ncat\n", "duplicate class name 'cat' \\(classes 1 and 3\\)"),
])
def test_bad_class_lists(tmp_path, content, message):
    f = tmp_path / "names.txt"
    f.write_text(content)
    with pytest.raises(PkdError, match=message):
        read_class_names(f)


def test_bad_class_sources(tmp_path):
    with pytest.raises(PkdError, match="class list not found"):
        read_class_names(tmp_path / "nope.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkdError, match="no class sub-folders"):
        read_class_names(tmp_path / "empty")


def test_class_vectors_match_open_clip(teacher):
    names = ["golden_retriever", "cat"]
    vectors = compute_class_vectors(teacher, names, "a photo of a {}.")
    tokens = open_clip.get_tokenizer(TEACHER)(["a photo of a golden retriever.", "a photo of a cat."])
    with torch.no_grad():
        expected = F.normalize(teacher.model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(vectors.vectors, expected)
    torch.testing.assert_close(vectors.vectors.norm(dim=-1), torch.ones(2))
    assert vectors.logit_scale == pytest.approx(teacher.model.logit_scale.exp().item())
    assert vectors.teacher == TEACHER and vectors.template == "a photo of a {}."
    features = F.normalize(torch.randn(3, vectors.dim), dim=-1)
    torch.testing.assert_close(vectors.logits(features), vectors.logit_scale * features @ expected.T)


def test_template_needs_placeholder(teacher):
    with pytest.raises(PkdError, match="no '\\{\\}'"):
        compute_class_vectors(teacher, ["cat"], "a photo")


def test_round_trip_and_tamper_detection(tmp_path, teacher):
    vectors = compute_class_vectors(teacher, ["a", "b", "c"], "a photo of a {}.")
    vectors.save(tmp_path)
    loaded = ClassVectors.load(tmp_path)
    assert loaded.names == ["a", "b", "c"] and loaded.teacher == TEACHER
    assert torch.equal(loaded.vectors, vectors.vectors)
    assert loaded.logit_scale == vectors.logit_scale
    from safetensors.torch import save_file

    save_file({"class_vectors": torch.zeros(3, vectors.dim)}, str(tmp_path / "class_vectors.safetensors"))
    with pytest.raises(PkdError, match="modified after"):
        ClassVectors.load(tmp_path)
    with pytest.raises(PkdError, match="class list not found"):
        ClassVectors.load(tmp_path / "elsewhere")


def test_shape_mismatch_is_refused():
    with pytest.raises(PkdError, match="do not match 2 class names"):
        ClassVectors(["a", "b"], torch.zeros(3, 8), "t", "{}", 100.0)
