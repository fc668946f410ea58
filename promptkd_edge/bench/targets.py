"""What `pkd bench` times: the student of a bundle, a run or an architecture, and optionally a teacher.

Every model is a classifier image -> logits [B, C]: the folded student (prompts, projector, class vectors) or
the teacher's image tower + L2 norm + class vectors. Architecture names get random weights (speed does not
depend on them); the teacher always runs with random weights of its architecture for the same reason.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptkd_edge.bench.flops import onnx_gflops, torch_gflops
from promptkd_edge.errors import PkdError
from promptkd_edge.formats.manifest import EngineEntry
from promptkd_edge.formats.run import STUDENT_FILE, is_run
from promptkd_edge.runtime.preprocess import PreprocessSpec


class Unavailable(Exception):  # noqa: N818 - reads as `raise Unavailable(reason)`
    """A backend cannot run this model here; the message says why (reported, never silently dropped)."""


@dataclass
class BenchModel:
    """One classifier to time, with the ways to obtain it as a torch module or an ONNX file."""

    role: str  # "student" | "teacher"
    description: str
    arch: str
    preprocess: PreprocessSpec
    classes: int
    build_torch: Callable[[], Any]  # -> nn.Module, model-ready batch (see input_format) -> logits
    input_format: str = "normalized"  # runtime.preprocess.INPUT_FORMATS
    bundle: Path | None = None  # the bundle folder its TensorRT plans live in
    engines: list[EngineEntry] = field(default_factory=list)  # the bundle's plan records (its manifest's entries)
    fixed_onnx: dict[str, Path] = field(default_factory=dict)  # precision -> ONNX shipped with the target
    params_m: float | None = None
    gflops_per_image: float | None = None
    workdir: Path | None = None
    _onnx: dict[str, Path] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        h, w = self.preprocess.size
        return (h, w, 3) if self.input_format == "uint8" else (3, h, w)

    def example(self, batch: int, seed: int = 0) -> np.ndarray:
        """A model-ready batch (what compute-only timing feeds)."""
        rng = np.random.default_rng(seed)
        if self.input_format == "uint8":
            return rng.integers(0, 256, (batch, *self.input_shape), dtype=np.uint8)
        if self.input_format == "pixels":
            return rng.uniform(0, 255, (batch, *self.input_shape)).astype(np.float32)
        return rng.standard_normal((batch, *self.input_shape)).astype(np.float32)

    def onnx(self, precision: str) -> Path:
        """An ONNX file of this model at `precision` (fp32 | int8): the target's own, else exported here once."""
        if precision in self.fixed_onnx:
            return self.fixed_onnx[precision]
        if precision in self._onnx:
            return self._onnx[precision]
        from promptkd_edge.export.graph import head_nodes
        from promptkd_edge.export.onnx_export import export_onnx

        work = self.workdir or Path(tempfile.mkdtemp(prefix="pkd-bench-"))
        self.workdir = work
        fp32 = self.fixed_onnx.get("fp32") or self._onnx.get("fp32")
        if fp32 is None:
            fp32 = work / f"{self.role}.onnx"
            export_onnx(self.build_torch(), fp32, self.preprocess.size)
            self._onnx["fp32"] = fp32
        if precision == "fp32":
            return fp32
        if precision != "int8":
            raise Unavailable(f"no {precision} ONNX for the {self.role}")
        import onnx

        from promptkd_edge.export.parity import generated_images
        from promptkd_edge.export.precision import quantize_int8
        from promptkd_edge.runtime.preprocess import prepare

        calibration = prepare(generated_images(32, self.preprocess.size), self.preprocess,
                              input_format=self.input_format)
        out = work / f"{self.role}.int8.onnx"
        quantize_int8(fp32, out, calibration, "image", head_nodes(onnx.load(str(fp32))))
        self._onnx["int8"] = out
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "description": self.description, "arch": self.arch,
                "image_size": list(self.preprocess.size), "params_m": self.params_m,
                "gflops_per_image": self.gflops_per_image, "classes": self.classes}

    def cleanup(self) -> None:
        if self.workdir and self.workdir.name.startswith("pkd-bench-"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def _count(module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def teacher_classifier(visual, vectors, scale: float):
    """Image tower -> L2 norm -> scale * W^T: how the deployed teacher would classify (a torch module)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TeacherClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = visual
            self.register_buffer("class_matrix", scale * vectors.t().contiguous())

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.visual(image), dim=-1) @ self.class_matrix

    return TeacherClassifier().eval()


def random_vectors(classes: int, dim: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=-1)


def teacher_model(spec: str, classes: int) -> BenchModel:
    """The teacher's architecture with random weights (speed only), classifying into `classes`."""
    from promptkd_edge.models.openclip import ModelSpec, load_clip
    from promptkd_edge.models.teacher import base_spec

    arch = ModelSpec.parse(base_spec(spec) if Path(spec).exists() else spec).arch
    holder: dict[str, Any] = {}

    def build():
        if "m" not in holder:
            import torch

            torch.manual_seed(0)
            clip = load_clip(ModelSpec(arch))
            visual = clip.model.visual
            holder["m"] = teacher_classifier(visual, random_vectors(classes, visual.output_dim), 100.0)
            holder["pre"] = clip.preprocess
        return holder["m"]

    model = build()
    visual = model.visual
    pre = holder["pre"]
    return BenchModel("teacher", f"{arch} image tower (random weights), {classes} classes", arch, pre, classes,
                      build, params_m=_count(visual), gflops_per_image=torch_gflops(model, (3, *pre.size)))


def image_dim(visual, size: tuple[int, int]) -> int:
    """Width of an image tower's output: open_clip's `output_dim` where it has one (its VisionTransformer), else
    read from one forward pass on a blank image (timm towers: TimmModel has no `output_dim`)."""
    import torch

    dim = getattr(visual, "output_dim", None)
    if dim is not None:
        return int(dim)
    with torch.inference_mode():
        return int(visual(torch.zeros(1, 3, *size)).shape[-1])


def student_from_arch(arch: str, classes: int, teacher_dim: int | None, prompt_tokens: int = 4,
                      prompt_depth: int = 9) -> BenchModel:
    """A PromptKD student around `arch` with random weights: prompts, projector, `classes` random class vectors."""
    import torch

    from promptkd_edge.export.fold import FoldedStudent
    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.openclip import ModelSpec, load_clip
    from promptkd_edge.models.student import StudentConfig, build_student

    torch.manual_seed(0)
    clip = load_clip(ModelSpec.parse(arch))
    dim = teacher_dim or image_dim(clip.model.visual, clip.preprocess.size)
    student = build_student(clip, StudentConfig(spec=arch, teacher_dim=dim, prompt_tokens=prompt_tokens,
                                                prompt_depth=prompt_depth)).eval()
    vectors = ClassVectors([f"class{i}" for i in range(classes)], random_vectors(classes, dim), "random", "{}", 100.0)
    folded = FoldedStudent(student, vectors, "logits")
    pre = student.preprocess
    return BenchModel("student", f"{arch} + {student.tower.adaptation} + projector to {dim} (random weights), "
                      f"{classes} classes", arch, pre, classes, lambda: folded, params_m=_count(folded),
                      gflops_per_image=torch_gflops(folded, (3, *pre.size)))


def student_from_run(run_dir: Path) -> BenchModel:
    from promptkd_edge.export.fold import FoldedStudent
    from promptkd_edge.models.class_vectors import ClassVectors
    from promptkd_edge.models.student import load_student

    student = load_student(run_dir / STUDENT_FILE)
    vectors = ClassVectors.load(run_dir)
    folded = FoldedStudent(student, vectors, "logits")
    cfg = student.config
    pre = student.preprocess
    return BenchModel("student", f"{cfg.spec} + {student.tower.adaptation}, run {run_dir.name}, "
                      f"{len(vectors.names)} classes", _arch(cfg.spec), pre, len(vectors.names),
                      lambda: folded, params_m=_count(folded), gflops_per_image=torch_gflops(folded, (3, *pre.size)))


def _arch(spec: str) -> str:
    from promptkd_edge.models.spec import ModelSpec

    return ModelSpec.parse(spec).arch


def student_from_bundle(path: Path) -> BenchModel:
    """The bundle's model.onnx (and plans) as shipped; its torch form needs the student's base weights."""
    from promptkd_edge.runtime.bundle import open_bundle

    bundle = open_bundle(path, allow_invalid=True)
    model = bundle.model
    if model.head == "embeddings":
        raise PkdError(f"{path} outputs embeddings only; bench a bundle with a logits head (or the run)")
    holder: dict[str, Any] = {}

    def build():
        if "m" not in holder:
            from promptkd_edge.export.fold import FoldedStudent
            from promptkd_edge.models.class_vectors import ClassVectors
            from promptkd_edge.models.student import load_student

            try:
                student = load_student(bundle.path / STUDENT_FILE)
            except PkdError as e:
                raise Unavailable(f"the torch form of this bundle needs its base weights: {e}") from None
            holder["m"] = FoldedStudent(student, ClassVectors.load(bundle.path), "logits", model.input_format)
        return holder["m"]

    spec = bundle.manifest.source.get("student_spec", "?")
    fixed = {model.precision: bundle.model_path}
    return BenchModel("student", f"bundle {path.name}: {spec}, {model.precision} model.onnx, "
                      f"{model.num_classes} classes", _arch(spec) if spec != "?" else "?",
                      bundle.preprocess, model.num_classes, build,
                      input_format=model.input_format, bundle=bundle.path,
                      engines=list(bundle.engines),
                      fixed_onnx=fixed, gflops_per_image=onnx_gflops(bundle.model_path))


def resolve(target: str, *, classes: int = 1000, teacher: str | None = None) -> tuple[str, list[BenchModel]]:
    """(kind, models) for a bundle folder, a run folder or an architecture name; the teacher last if asked."""
    from promptkd_edge.formats.bundle import is_bundle

    path = Path(target).expanduser()
    if is_bundle(path):
        kind, student = "bundle", student_from_bundle(path)
    elif is_run(path):
        kind, student = "run", student_from_run(path)
    elif path.exists():
        raise PkdError(f"{path} is neither a bundle (manifest.json) nor a run (student.safetensors)")
    else:
        from promptkd_edge.models.openclip import list_architectures

        if target not in list_architectures():
            raise PkdError(f"'{target}' is not a bundle, a run or an open_clip architecture (`pkd models`)")
        kind = "architecture"
        teacher_bench = teacher_model(teacher, classes) if teacher else None
        teacher_dim = int(teacher_bench.build_torch().class_matrix.shape[0]) if teacher_bench else None
        student = student_from_arch(target, classes, teacher_dim)
        return kind, [student, teacher_bench] if teacher_bench else [student]
    models = [student]
    if teacher:
        models.append(teacher_model(teacher, student.classes))
    return kind, models


def default_teacher(kind: str, target: str) -> str:
    """The teacher a target was distilled from (runs and bundles record it), else ViT-L-14."""
    from promptkd_edge.formats.bundle import read_manifest
    from promptkd_edge.formats.classes import ClassList

    try:
        if kind == "bundle":
            return read_manifest(Path(target)).source["teacher"]
        if kind == "run" and (teacher := ClassList.read(target).teacher):
            return teacher
    except (PkdError, KeyError):
        pass
    return "ViT-L-14"
