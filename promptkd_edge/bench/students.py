"""Students by family, measured: each architecture's student as the package builds it (random weights), timed by
`pkd bench`'s harness on every backend asked, in one table with published zero-shot top-1, ratios to a reference
architecture and a Pareto plot (benchmarks/students.py runs it; its docstring says what is measured).

An architecture no family covers (models/towers.py), or one that fails to build or export, is a row with its
one-line reason, never an error.
"""

from __future__ import annotations

import gc
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from promptkd_edge.bench.backends import BACKENDS, BackendSpec
from promptkd_edge.bench.harness import BenchConfig, measure
from promptkd_edge.bench.markdown import _md_table, _where_it_ran
from promptkd_edge.bench.plot import _DPI, can_plot
from promptkd_edge.bench.record import Environment
from promptkd_edge.bench.tables import DASH, finite, fmt, machine
from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.utils import files
from promptkd_edge.utils.progress import Progress

TINY_REFERENCE = "pkd-tiny-student"
REFERENCE = "ViT-B-16"  # the ratios' denominator: the paper's student
DEFAULT_STUDENTS = ("ViT-B-16", "ViT-B-32", "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP2-B", "ViT-B-16-SigLIP2",
                    "ViT-B-32-SigLIP2-256", "PE-Core-S-16-384", "EVA02-B-16", "convnext_base")
ZERO_SHOT = Path(__file__).with_name("zero_shot_imagenet.json")  # published top-1 per architecture, with its source


def architecture_list(target: str) -> list[str] | None:
    """The architectures of a `pkd bench` target that names several (a comma list), else None."""
    if "," not in target or Path(target).expanduser().exists():
        return None
    archs = [a.strip() for a in target.split(",") if a.strip()]
    if len(set(archs)) != len(archs):
        raise PkdError(f"'{target}' names an architecture twice")
    return archs


def tiny_archs() -> list[str]:
    """The package's tiny student architectures, one per family it registers (teachers and quickgelu twins left
    out): a family added to the package is benchmarked by `--tiny` without a change here."""
    from promptkd_edge.models.openclip import list_architectures

    return [a for a in list_architectures()
            if a.startswith("pkd-tiny-") and "teacher" not in a and not a.endswith("-quickgelu")]


def cpu_backends() -> list[BackendSpec]:
    """Every backend bench/backends.py offers on a CPU (`auto` needs a bundle: not for an architecture)."""
    return [s for s in BACKENDS.values() if not s.cuda_only and s.kind != "auto"]


def zero_shot_facts(path: Path) -> dict[str, dict[str, Any]]:
    """arch -> {"tag", "imagenet_top1" (fraction or None), "source" or "reason"} from the cited JSON."""
    if not path.is_file():
        return {}
    return files.read_json(path).get("architectures", {})


def adaptation_of(arch: str) -> tuple[str | None, str | None]:
    """(family, what its students train) for `arch`, or (None, why no student can be built) before any weights."""
    from promptkd_edge.models.openclip import list_architectures
    from promptkd_edge.models.towers import family_of, supported_families

    if arch not in list_architectures():
        return None, f"'{arch}' is not an open_clip architecture (`pkd models` lists them)"
    families = supported_families()
    family = family_of(arch)
    if family is None or family not in families:
        return None, f"no student adaptation covers the {arch} image tower (families: {', '.join(families)})"
    return family, families[family]


def bench_arch(arch: str, cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """One architecture's entry: its family, model facts, compute rows and unavailable backends, or the reason
    no row could be timed. Never raises for the architecture's sake: a failure is its row's reason."""
    started = time.perf_counter()
    entry: dict[str, Any] = {"arch": arch, "family": None, "adaptation": None, "reason": None, "model": None,
                             "results": [], "unavailable": [], "seconds": None}
    _bench_into(entry, cfg, progress)
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


def _bench_into(entry: dict[str, Any], cfg: BenchConfig, progress: Progress | None) -> None:
    arch = entry["arch"]
    family, text = adaptation_of(arch)
    if family is None:
        entry["reason"] = text
        return
    entry["family"], entry["adaptation"] = family, text
    try:
        report = measure(replace(cfg, target=arch), progress)
    except Exception as e:  # noqa: BLE001 - one architecture that cannot be built must not lose the others
        entry["reason"] = f"could not be built: {first_line(e, with_type=not isinstance(e, PkdError))}"
        return
    finally:
        gc.collect()
    entry["model"] = report.models[0]
    entry["environment"] = report.environment.to_dict()
    entry["results"] = [r.to_dict() for r in report.results if r.mode == "compute"]
    entry["unavailable"] = [{"backend": u["backend"], "reason": u["reason"]} for u in report.unavailable]
    if not entry["results"]:
        entry["reason"] = "no backend ran it: " + "; ".join(f"{u['backend']}: {u['reason']}"
                                                            for u in entry["unavailable"])


def rows(entries: list[dict], facts: dict[str, dict], reference: str) -> list[dict]:
    """The table: one row per (architecture, backend) that ran, one per architecture that did not; each with
    p50 / images/s per batch, parameters, GFLOP/image, peak RSS, zero-shot top-1 and p50 ratios to `reference`
    on the same backend and batch."""
    ref = {(r["backend"], r["batch"]): r["p50_ms"] for e in entries if e["arch"] == reference for r in e["results"]}
    out = []
    for e in entries:
        fact = facts.get(e["arch"], {})
        base = {"arch": e["arch"], "family": e["family"] or "no student adaptation", "tag": fact.get("tag"),
                "zero_shot_top1": fact.get("imagenet_top1"),
                "params_m": (e["model"] or {}).get("params_m"),
                "gflops_per_image": (e["model"] or {}).get("gflops_per_image")}
        by_backend: dict[str, list[dict]] = {}
        for r in e["results"]:
            by_backend.setdefault(r["backend"], []).append(r)
        if not by_backend:
            out.append({**base, "backend": None, "precision": None, "batches": {}, "peak_rss_mib": None,
                        "reason": e["reason"]})
        for backend, timed in by_backend.items():
            batches = {}
            for r in sorted(timed, key=lambda r: r["batch"]):
                ref_p50 = ref.get((backend, r["batch"]))
                batches[str(r["batch"])] = {
                    "p50_ms": r["p50_ms"], "images_per_s": r["images_per_s"],
                    "p50_vs_reference": round(r["p50_ms"] / ref_p50, 3) if finite(ref_p50) and ref_p50 else None}
            peaks = [r["peak_rss_mib"] for r in timed if finite(r.get("peak_rss_mib"))]
            out.append({**base, "backend": backend, "precision": timed[0]["precision"], "batches": batches,
                        "peak_rss_mib": max(peaks) if peaks else None, "reason": None})
    return out


def pareto(points: list[tuple[str, float, float]]) -> list[str]:
    """The names on the Pareto front of (name, latency, accuracy): no other point is at least as fast and at least
    as accurate and strictly better in one; fastest first."""
    front = [n for n, lat, acc in points
             if not any(lat2 <= lat and acc2 >= acc and (lat2 < lat or acc2 > acc) for _, lat2, acc2 in points)]
    latency = {n: lat for n, lat, _ in points}
    return sorted(front, key=lambda n: latency[n])


def fronts(table: list[dict], batch: int) -> dict[str, list[str]]:
    """backend -> its Pareto front of batch-`batch` p50 against zero-shot top-1 (architectures with both)."""
    out: dict[str, list[str]] = {}
    for backend in dict.fromkeys(r["backend"] for r in table if r["backend"]):
        points = [(r["arch"], r["batches"][str(batch)]["p50_ms"], r["zero_shot_top1"]) for r in table
                  if r["backend"] == backend and str(batch) in r["batches"] and finite(r["zero_shot_top1"])
                  and finite(r["batches"][str(batch)].get("p50_ms"))]
        out[backend] = pareto(points)
    return out


def write_pareto_plot(table: list[dict], env: Environment, batch: int, fronts_: dict[str, list[str]],
                      path: Path) -> Path:
    """One panel per backend: batch-`batch` p50 latency (log) against published zero-shot top-1; the Pareto
    front joined; architectures without a published top-1 as open markers on the bottom edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(fronts_) or ["(none ran)"]
    cols = min(2, len(backends))
    nrows = math.ceil(len(backends) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.6 * nrows + 0.8), dpi=_DPI, squeeze=False)
    tops = [r["zero_shot_top1"] * 100 for r in table if finite(r["zero_shot_top1"])]
    low = (min(tops) - 3) if tops else 0.0
    try:
        for ax, backend in zip(axes.flat, backends, strict=False):
            timed = [r for r in table if r["backend"] == backend and str(batch) in r["batches"]]
            for r in timed:
                x = r["batches"][str(batch)]["p50_ms"]
                known = finite(r["zero_shot_top1"])
                y = r["zero_shot_top1"] * 100 if known else low
                ax.plot([x], [y], marker="o", linestyle="none", color="C0" if known else "0.5",
                        markerfacecolor="C0" if known else "none", markersize=6)
                ax.annotate(r["arch"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize="x-small")
            front = [next(r for r in timed if r["arch"] == a) for a in fronts_.get(backend, [])]
            if front:
                ax.plot([r["batches"][str(batch)]["p50_ms"] for r in front],
                        [r["zero_shot_top1"] * 100 for r in front], color="C3", linewidth=1.2, label="Pareto front")
                ax.legend(loc="upper left", fontsize="small", frameon=False)
            ax.set_title(backend, fontsize="medium")
            ax.set_xscale("log")
            ax.set_xlabel(f"p50 latency at batch {batch}, ms (log)")
            ax.set_ylabel("zero-shot ImageNet top-1, % (published)")
            ax.grid(alpha=0.3, which="both")
            if timed and not tops:
                ax.text(0.5, 0.95, "no published top-1 for these architectures", ha="center", va="top",
                        transform=ax.transAxes, fontsize="small")
        for ax in list(axes.flat)[len(backends):]:
            ax.axis("off")
        flags = " ".join(env.cpu_flags or []) or "no speed flags"
        fig.suptitle(f"Students on {machine(env)}, {env.threads} threads ({flags}); random weights; open markers: "
                     "no published top-1", fontsize="small")
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI)
    finally:
        plt.close(fig)
    return path


def _top1(v: Any) -> str:
    return f"{100 * v:.1f}" if finite(v) else DASH


def _ratio(v: Any) -> str:
    return f"{v:.2f}×" if finite(v) else DASH


def markdown(report: dict) -> str:
    """The report for people: where it ran, the table, the ratios to the reference, the fronts, the gaps."""
    env = Environment.from_dict(report["environment"])
    batches = [str(b) for b in report["settings"]["batch_sizes"]]
    ref = report["reference"]
    out = [f"# Students by family on {machine(env)}", "",
           f"{report['created']} · random weights, {report['settings']['classes']} classes · compute only (a batch "
           f"already in place) · warm-up calls: {report['settings']['warmup']}, then at least "
           f"{report['settings']['iterations']} timed calls per figure · zero-shot top-1: the best pretrained tag's "
           f"published figure ({report['zero_shot_source'] or 'no source'})", "", "## Where it ran", "",
           *_where_it_ran(env), ""]
    head = ["arch", "family", "backend", "precision", *[f"p50 ms b{b}" for b in batches],
            *[f"img/s b{b}" for b in batches], *[f"p50 / {ref} b{b}" for b in batches], "params M", "GFLOP/img",
            "peak RSS MiB", "top-1 %", "tag"]
    body = []
    for r in report["table"]:
        if r["backend"] is None:
            body.append([r["arch"], r["family"], f"not measured: {r['reason']}", *[DASH] * (len(head) - 5),
                         _top1(r["zero_shot_top1"]), r["tag"] or DASH])
            continue
        cells = [r["batches"].get(b, {}) for b in batches]
        body.append([r["arch"], r["family"], r["backend"], r["precision"], *[fmt(c.get("p50_ms")) for c in cells],
                     *[fmt(c.get("images_per_s")) for c in cells], *[_ratio(c.get("p50_vs_reference")) for c in cells],
                     fmt(r["params_m"]), fmt(r["gflops_per_image"]), fmt(r["peak_rss_mib"]),
                     _top1(r["zero_shot_top1"]), r["tag"] or DASH])
    out += ["## Results", "", f"*p50 / {ref}* = this row's p50 over {ref}'s on the same backend and batch (below "
            "1: faster). Peak RSS: the process while that backend loaded and ran (the torch model included).", ""]
    out += _md_table(head, body, [i >= 4 for i in range(len(head))])
    out += ["", f"## Pareto front (batch {report['pareto_batch']} latency against top-1)", ""]
    out += [f"- **{b}:** {' → '.join(f) or 'no architecture with both figures'}" for b, f in report["pareto"].items()]
    missing = [f"- **{a}:** {f.get('reason') or 'not in the zero-shot file'}" for a, f in report["zero_shot"].items()
               if not finite(f.get("imagenet_top1"))]
    if missing:
        out += ["", "## No published top-1", "", *missing]
    gaps = [f"- **{u['arch']} · {u['backend']}:** {u['reason']}" for u in report["unavailable"]]
    if gaps:
        out += ["", "## Backends not measured", "", *gaps]
    out += ["", "## Command", "", "```", report["command"], "```", ""]
    return "\n".join(out)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "cpu"


def measure_students(archs: list[str], cfg: BenchConfig, *, reference: str, zero_shot: Path | None = None,
                     command: str = "", log=None, progress: Progress | None = None) -> dict[str, Any]:
    """Every architecture of `archs` on `cfg`'s backends and batches (its `target` is ignored): the report dict
    that write_students writes. `zero_shot`: the cited JSON of published top-1 figures; `log(line)`: a line per
    architecture (default: stderr); `progress`: the harness's bars."""
    import datetime as dt
    import sys

    from promptkd_edge.bench.environment import describe

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    facts = zero_shot_facts(zero_shot) if zero_shot else {}
    entries = []
    for arch in archs:
        log(f"[students] {arch} ...")
        entries.append(bench_arch(arch, cfg, progress))
        log(f"[students] {arch}: {entries[-1]['reason'] or 'measured'} ({entries[-1]['seconds']} s)")
    env = Environment.from_dict(describe(threads=cfg.threads, device=cfg.device))
    table = rows(entries, facts, reference)
    pareto_batch = min(cfg.batch_sizes)
    missing = f"not in {zero_shot.name}" if zero_shot else "no zero-shot file given"
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command,
        "environment": env.to_dict(), "reference": reference, "pareto_batch": pareto_batch,
        "settings": {"batch_sizes": sorted(set(cfg.batch_sizes)),
                     "backends": [b.name for b in cfg.backends or BACKENDS.values()], "warmup": cfg.warmup,
                     "iterations": cfg.iterations, "max_seconds": cfg.max_seconds, "classes": cfg.classes,
                     "threads": env.threads},
        "zero_shot_source": files.read_json(zero_shot).get("source") if zero_shot else None,
        "zero_shot": {a: facts.get(a, {"imagenet_top1": None, "reason": f"{a} is {missing}"}) for a in archs},
        "table": table, "pareto": fronts(table, pareto_batch),
        "unavailable": [{"arch": e["arch"], **u} for e in entries for u in e["unavailable"]],
        "architectures": entries,
    }


def write_students(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """students.json, students.md and (with matplotlib) students-pareto.png in `out`; the paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    if can_plot():
        written["png"] = write_pareto_plot(report["table"], Environment.from_dict(report["environment"]),
                                           report["pareto_batch"], report["pareto"], out / "students-pareto.png")
        report["plot"] = written["png"].name
    else:
        report["plot"] = None
        report["plot_reason"] = "matplotlib is not installed (pip install 'promptkd-edge[plot]')"
    written["json"], written["md"] = out / "students.json", out / "students.md"
    files.write_json(written["json"], report)
    files.write_text(written["md"], markdown(report))
    return written
