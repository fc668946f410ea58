"""`class_vectors_for_run` (what `pkd classes` calls): W for a class list from a run's teacher, with the run's
template for a zero-shot teacher, the learned context for a prompted one, and random weights refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import NAMES, TEACHER
from safetensors.torch import save_file

from promptkd_edge.errors import PkdError
from promptkd_edge.models import ClassVectors, Teacher, compute_class_vectors, load_clip
from promptkd_edge.models.class_vectors import class_vectors_for_run
from promptkd_edge.models.teacher import DEFAULT_TEMPLATE, TeacherConfig, load_teacher, save_teacher


@pytest.fixture(scope="module")
def teachers(module_dir) -> dict[str, str]:
    """A zero-shot teacher with its weights in a file, and a `pkd teacher` run (prompted) on it."""
    torch.manual_seed(0)
    clip = load_clip(TEACHER)
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(module_dir / "t.safetensors"))
    zero_shot = f"{TEACHER}:{module_dir / 't.safetensors'}"
    torch.manual_seed(1)
    tuned = Teacher(load_clip(zero_shot), TeacherConfig(spec=zero_shot, vision_depth=2, text_depth=2, init_std=0.3))
    (module_dir / "teacher").mkdir()
    save_teacher(tuned, module_dir / "teacher" / "teacher.safetensors")
    return {"zero-shot": zero_shot, "prompted": str(module_dir / "teacher")}


def _folder(path: Path, teacher: Teacher, template: str = DEFAULT_TEMPLATE) -> Path:
    """A folder with classes.json (as a distillation run or a bundle holds) for NAMES."""
    compute_class_vectors(teacher, NAMES, template).save(path)
    return path


def test_a_zero_shot_run_keeps_its_template_so_its_own_names_give_back_its_vectors(teachers, tmp_path):
    run = _folder(tmp_path / "run", load_teacher(teachers["zero-shot"]), "itap of a {}.")
    stored = ClassVectors.load(run)
    again = class_vectors_for_run(run, NAMES)
    assert again.template == "itap of a {}." and again.teacher == stored.teacher
    assert torch.equal(again.vectors, stored.vectors)
    more = class_vectors_for_run(run, [*NAMES, "purple dots"])
    assert more.names[-1] == "purple dots"
    # a batch of 4 names runs other BLAS blocking than one of 3: equal to float rounding, not bit for bit
    torch.testing.assert_close(more.vectors[:3], stored.vectors, rtol=0, atol=1e-6)


def test_a_prompted_teacher_uses_its_learned_context_from_its_run_or_a_run_distilled_from_it(teachers, tmp_path):
    teacher = load_teacher(teachers["prompted"])
    expected = compute_class_vectors(teacher, NAMES, DEFAULT_TEMPLATE)
    direct = class_vectors_for_run(teachers["prompted"], NAMES)
    assert direct.template == teacher.template and "(learned context)" in direct.template
    assert torch.equal(direct.vectors, expected.vectors)
    # a distillation run names the teacher run in its classes.json; its stored template does not apply
    run = _folder(tmp_path / "run", teacher)
    meta = ClassVectors.load(run)
    assert Path(meta.teacher).resolve() == Path(teachers["prompted"]).resolve()
    assert torch.equal(class_vectors_for_run(run, NAMES).vectors, expected.vectors)


def test_random_weights_and_folders_without_a_teacher_are_refused(tmp_path):
    torch.manual_seed(0)
    run = _folder(tmp_path / "random", Teacher(load_clip(TEACHER)))
    with pytest.raises(PkdError, match=f"the teacher {TEACHER} has no weights file \\(random weights\\)"):
        class_vectors_for_run(run, NAMES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PkdError, match="is neither a teacher run nor a folder with classes.json"):
        class_vectors_for_run(tmp_path / "empty", NAMES)
