"""Peak memory and step time of teacher tuning (`pkd teacher`) against the number of classes: every step runs
the text tower over all classes, which is what runs out of memory with the official code (ImageNet, ViT-L/14).

    python benchmarks/teacher_memory.py --size tiny                        # CPU: peak RSS growth per step
    python benchmarks/teacher_memory.py --size real --device cuda --classes 100,1000 --precision bf16

Each configuration runs in a fresh process (so CPU peaks do not mix): `--text-chunk 0` is one pass over all
classes (the official way), `--text-chunk N` is N classes per pass with activation checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import write_report  # noqa: E402

SIZES = {"tiny": ("pkd-tiny-teacher", 6, 2), "real": ("ViT-L-14", 9, 9)}  # arch, vision depth, text depth


def measure(size: str, classes: int, chunk: int, device: str, precision: str, batch: int, steps: int) -> dict:
    """One configuration, in this process: peak memory and median step time of `steps` training steps."""
    import torch

    from promptkd_edge.models.openclip import load_clip
    from promptkd_edge.models.teacher import Teacher, TeacherConfig
    from promptkd_edge.train.teacher import frozen_text_targets, teacher_losses

    arch, vision_depth, text_depth = SIZES[size]
    dev = torch.device(device)
    clip = load_clip(arch, device=dev)
    teacher = Teacher(clip, TeacherConfig(spec=arch, vision_depth=vision_depth, text_depth=text_depth)).to(dev)
    names = [f"object number {i}" for i in range(classes)]
    zs_text = frozen_text_targets(teacher, names, ["a photo of a {}."])
    opt = torch.optim.SGD([teacher.vision.prompts, teacher.text.prompts], lr=1e-3, momentum=0.9)
    size_px = clip.preprocess.size
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, saved = [], {}

    def pack(t: torch.Tensor) -> torch.Tensor:  # what autograd keeps for backward, counted once per storage
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    for step in range(steps):
        x = torch.randn(batch, 3, *size_px, device=dev)
        y = torch.randint(0, classes, (batch,), device=dev)
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None), \
                torch.autograd.graph.saved_tensors_hooks(pack if step == 0 else (lambda v: v), lambda v: v):
            losses, _ = teacher_losses(teacher, x, y, names, zs_text, chunk, 0 < chunk < classes)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    row = {"classes": classes, "text_chunk": chunk, "checkpointing": 0 < chunk < classes, "batch": batch,
           "step_seconds_median": sorted(times)[len(times) // 2],
           "saved_activations_gib": round(sum(saved.values()) / 2**30, 4)}
    if dev.type == "cuda":
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    else:
        row["peak_rss_growth_gib"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 2**20, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--classes", default="10,100,1000")
    parser.add_argument("--chunks", default="0,64", help="0 = all classes in one pass")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "classes,chunk": run one, print JSON
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.one:
        classes, chunk = (int(v) for v in args.one.split(","))
        print(json.dumps(measure(args.size, classes, chunk, args.device, args.precision, args.batch, args.steps)))
        return
    rows = []
    for classes in (int(c) for c in args.classes.split(",")):
        for chunk in (int(c) for c in args.chunks.split(",")):
            cmd = [sys.executable, __file__, "--size", args.size, "--device", args.device, "--precision",
                   args.precision, "--batch", str(args.batch), "--steps", str(args.steps),
                   "--one", f"{classes},{chunk}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                oom = "out of memory" in proc.stderr.lower()
                rows.append({"classes": classes, "text_chunk": chunk, "error": "out of memory" if oom else
                             proc.stderr.strip().splitlines()[-1][:200]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    report = {"benchmark": "teacher_memory", "size": args.size, "teacher": SIZES[args.size][0],
              "device": args.device, "precision": args.precision, "batch": args.batch, "steps": args.steps,
              "results": rows}
    write_report(report, args.out, f"teacher_memory-{args.size}-{args.device.split(':')[0]}", markdown)


def markdown(report: dict) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_cores']} cores)"
    memory = "peak GPU memory (GiB)" if report["device"].startswith("cuda") else "peak RSS growth (GiB)"
    lines = [f"# Teacher tuning memory: {report['teacher']} ({report['size']})", "",
             f"{report['date']}, {where}, torch {m['torch']}, {report['device']} {report['precision']}, batch "
             f"{report['batch']}, median of {report['steps']} steps. Command: `python benchmarks/{report['command']}`",
             "Saved activations: the bytes autograd keeps for backward in one step (allocator-independent).", "",
             f"| classes | text pass | saved activations (GiB) | {memory} | step (s) |", "|---|---|---|---|---|"]
    for r in report["results"]:
        how = "all at once" if not r["text_chunk"] else f"chunks of {r['text_chunk']}" + (
            ", checkpointed" if r.get("checkpointing") else "")
        mem = r.get("peak_gpu_memory_gib", r.get("peak_rss_growth_gib", r.get("error")))
        step = f"{r['step_seconds_median']:.3f}" if "step_seconds_median" in r else "-"
        lines.append(f"| {r['classes']} | {how} | {r.get('saved_activations_gib', '-')} | {mem} | {step} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
