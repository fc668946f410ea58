"""Models: open_clip loading, the prompted student, the teacher and its class vectors.

The names below are imported on first use, so `promptkd_edge.models.spec` (and this package) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ClassVectors": "class_vectors", "compute_class_vectors": "class_vectors",
    "LoadedCLIP": "openclip", "Preprocess": "openclip", "load_clip": "openclip", "ModelSpec": "spec",
    "Projector": "projector", "PromptedVisionTower": "prompted_vision",
    "Student": "student", "StudentConfig": "student", "build_student": "student", "load_student": "student",
    "save_student": "student",
    "DEFAULT_TEMPLATE": "templates", "Teacher": "teacher", "TeacherConfig": "teacher", "load_teacher": "teacher",
    "save_teacher": "teacher",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'promptkd_edge.models' has no attribute '{name}'")
    return getattr(importlib.import_module(f"promptkd_edge.models.{_WHERE[name]}"), name)
