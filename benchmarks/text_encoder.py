"""The teacher's text tower in a bundle (`pkd export --text-encoder`): export size, gate, and class names per second
on this CPU, tokenizer included.

    python benchmarks/text_encoder.py                 # ViT-L-14 teacher, ViT-B-16 student, 1000 names
    python benchmarks/text_encoder.py --size tiny     # seconds; checks the script

Random weights written to a local file (the text encoder needs the teacher's weights on disk, as `pkd classes`
does); class vectors of 100 generated names from that teacher; the run exported with `--head both
--text-encoder`; then `pkd bench`'s timing of the text encoder (ONNX Runtime and OpenVINO on the CPU).
Results: benchmarks/results/text_encoder-<size>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import RESULTS, write_report  # noqa: E402

from promptkd_edge.bench.harness import time_text_encoder  # noqa: E402
from promptkd_edge.export.bundle import export_run  # noqa: E402
from promptkd_edge.export.options import ExportOptions  # noqa: E402
from promptkd_edge.models.class_vectors import compute_class_vectors  # noqa: E402
from promptkd_edge.models.openclip import ModelSpec, load_clip, register_tiny_configs  # noqa: E402
from promptkd_edge.models.student import StudentConfig, build_student, save_student  # noqa: E402
from promptkd_edge.models.teacher import load_teacher  # noqa: E402
from promptkd_edge.utils.files import read_json  # noqa: E402

SIZES = {"real": ("ViT-L-14", "ViT-B-16", 9), "tiny": ("pkd-tiny-teacher", "pkd-tiny-student", 3)}


def make_run(root: Path, teacher_arch: str, student_arch: str, depth: int, classes: int) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = load_clip(ModelSpec.parse(teacher_arch))
    weights = root / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(weights))
    del clip
    teacher = load_teacher(f"{teacher_arch}:{weights}")
    vectors = compute_class_vectors(teacher, [f"class {i}" for i in range(classes)])
    run = root / "run"
    run.mkdir()
    torch.manual_seed(0)
    student = build_student(load_clip(ModelSpec.parse(student_arch)),
                            StudentConfig(spec=student_arch, teacher_dim=vectors.dim, prompt_depth=depth))
    save_student(student.eval(), run / "student.safetensors")
    vectors.save(run)


def markdown(r: dict) -> str:
    m, t = r["machine"], r["text_encoder"]
    lines = [f"# Text encoder in the bundle: {r['teacher']} text tower, {r['date']}", "",
             f"CPU: {m['cpu']}, flags: {' '.join(m.get('cpu_speed_flags', []))}; torch {m['torch']}. Random weights; "
             f"export with `--head both --text-encoder` took {r['export_s']} s (the whole bundle).", "",
             f"- parameters: {t['parameters']:,}; files: " + ", ".join(f"{k} {v} MB" for k, v in r["files_mb"].items()),
             "- gate against `pkd classes` on the run's " + f"{r['gates'][0]['names']} names: "
             + "; ".join(f"{g['precision']} max |delta| {g['max_abs_diff']:.2e}, min cosine {g['min_cosine']:.6f}, "
                         f"{'pass' if g['passed'] else 'FAIL'}" for g in r["gates"]), "",
             "| backend | names | seconds | names/s |", "|---|---:|---:|---:|"]
    for row in t["rows"]:
        lines.append(f"| {row['backend']} | {row['names']} | {row['seconds']:.2f} | {row['names_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SIZES, default="real")
    ap.add_argument("--names", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_tiny_configs()
    teacher_arch, student_arch, depth = SIZES[args.size]
    with tempfile.TemporaryDirectory(prefix="pkd-text-encoder-") as tmp:
        root = Path(tmp)
        make_run(root, teacher_arch, student_arch, depth, args.classes)
        start = time.perf_counter()
        export_run(root / "run", root / "bundle", ExportOptions(head="both", text_encoder=True, parity_images=16))
        export_s = round(time.perf_counter() - start, 1)
        entry = read_json(root / "bundle" / "manifest.json")["text_encoder"]
        files_mb = {k: round((root / "bundle" / f).stat().st_size / 2**20, 1) for k, f in entry["files"].items()}
        timing = time_text_encoder(str(root / "bundle"), args.names, args.threads, "cpu")
    report = {"teacher": teacher_arch, "student": student_arch, "export_s": export_s, "files_mb": files_mb,
              "gates": entry["parity"], "text_encoder": timing,
              "command": " ".join(["python benchmarks/text_encoder.py", *sys.argv[1:]])}
    write_report(report, args.out or RESULTS / f"text_encoder-{args.size}.json", f"text_encoder-{args.size}",
                 markdown)


if __name__ == "__main__":
    main()
