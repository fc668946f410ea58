"""Models: open_clip loading, the prompted student, the teacher and its class vectors."""

from promptkd_edge.models.class_vectors import ClassVectors, compute_class_vectors, read_class_names
from promptkd_edge.models.openclip import LoadedCLIP, ModelSpec, Preprocess, load_clip
from promptkd_edge.models.projector import Projector
from promptkd_edge.models.prompted_vision import PromptedVisionTower
from promptkd_edge.models.student import Student, StudentConfig, build_student, load_student, save_student
from promptkd_edge.models.teacher import DEFAULT_TEMPLATE, Teacher, TeacherConfig, load_teacher, save_teacher

__all__ = [
    "DEFAULT_TEMPLATE", "ClassVectors", "LoadedCLIP", "ModelSpec", "Preprocess", "Projector",
    "PromptedVisionTower", "Student", "StudentConfig", "Teacher", "TeacherConfig", "build_student",
    "compute_class_vectors", "load_clip", "load_student", "load_teacher", "read_class_names", "save_student",
    "save_teacher",
]
