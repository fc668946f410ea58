"""INT8 float fallback: keep float the few quantized nodes that cost an INT8 graph its agreement.

Some students lose top-1 agreement under INT8 although no one node is to blame: measured on ViT-B-16-SigLIP2
(benchmarks/int8_float_nodes.py), every weight product costs a little and the gate sees the sum. Where the INT8
graph disagrees with the FP32 graph it was quantized from on the calibration images, each quantized node is measured
alone, by how much the logits' squared error shrinks when that one node computes in float (its Q/DQ pairs taken out
of the INT8 graph, its float weight put back); the nodes are then kept float in that order, as few as reach the
target, never more than a quarter of them (NNCF's accuracy-aware quantization and TensorRT's per-layer precision
fallback do the same). The INT8 graph is then quantized again by ONNX Runtime with those nodes excluded.

The selection sees the calibration images only; the parity gate that follows measures the result on its own images.
The target is the gate's own rule with each threshold tightened by half of what it leaves (top-1 agreement 99.5 %
for INT8's 99 %, embedding cosine 0.995 for its 0.99), as the calibration set is a sample too. A graph that already
meets it is left as it was, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from promptkd_edge.export import parity as gate
from promptkd_edge.export.gate_run import run_for_gate
from promptkd_edge.export.precision import QUANTIZED_OPS
from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
from promptkd_edge.utils.progress import NullProgress, Progress

MAX_FLOAT_FRACTION = 0.25  # of the quantized nodes: past that INT8 has lost what it was for
SENSITIVITY_IMAGES = 64  # of the calibration images, for the per-node measurement
BATCH = 16

Outputs = dict[str, np.ndarray]


def target_thresholds(precision: str = "int8") -> dict[str, float]:
    """The gate's thresholds for `precision`, each moved half-way to perfect agreement."""
    return {k: (v + 1.0) / 2 if k in ("top1_agreement", "min_cosine") else v / 2
            for k, v in gate.THRESHOLDS[precision].items()}


def quantized_nodes(qdq) -> list[str]:
    """Nodes of an INT8 QDQ graph that compute on quantized inputs (a DequantizeLinear feeds their first input)."""
    producer = {o: n for n in qdq.graph.node for o in n.output}
    return [n.name for n in qdq.graph.node if n.op_type in QUANTIZED_OPS and n.input
            and getattr(producer.get(n.input[0]), "op_type", "") == "DequantizeLinear"]


def with_float_nodes(qdq, fp32, names: set[str]):
    """A copy of the QDQ graph `qdq` in which the nodes `names` compute in float: each input read through a
    DequantizeLinear is read from before its QuantizeLinear (activations) or from `fp32`'s float tensor (weights,
    which `fp32`, the graph `qdq` was quantized from, holds under the same node name)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    producer = {o: n for n in model.graph.node for o in n.output}
    have = {i.name for i in model.graph.initializer} | set(producer)
    originals = {n.name: n for n in fp32.graph.node}
    floats = {i.name: i for i in fp32.graph.initializer}
    for node in model.graph.node:
        if node.name not in names:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                continue
            original = originals[node.name].input[k]
            node.input[k] = original
            if original not in have:
                model.graph.initializer.append(floats[original])
                have.add(original)
    return model


class _Runner:
    """ONNX Runtime on CPU over in-memory graphs: their outputs (and `extra` inner tensors) on fixed inputs."""

    def __init__(self, inputs: np.ndarray, outputs: Callable[[Outputs], Outputs], extra: dict[str, str] | None):
        self.inputs, self.outputs, self.extra = inputs, outputs, extra or {}

    @staticmethod
    def load(path: str | os.PathLike):
        import onnx

        return onnx.load(str(path))

    def run(self, model, count: int | None = None) -> Outputs:
        backend = OnnxRuntimeBackend(model, providers="cpu", precision="int8", extra_outputs=self.extra)
        try:
            return self.outputs(run_for_gate(backend, self.inputs[:count], BATCH, NullProgress(), "int8 fallback"))
        finally:
            backend.close()


def _figures(reference: Outputs, got: Outputs) -> dict[str, Any]:
    """The gate's figures, with its pass/fail judged against `target_thresholds()`."""
    return gate.compare(reference, got, "int8", "int8 fallback", "calibration images", thresholds=target_thresholds())


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: figures[k] for k in ("top1_agreement_beyond_ties", "min_cosine", "cosine_of", "passed")}


def _said(figures: dict[str, Any]) -> str:
    return f"top-1 agreement {figures['top1_agreement_beyond_ties']:.2%}, {figures['cosine_of']} cosine " \
           f"{figures['min_cosine']:.4f}"


def float_fallback(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray,
                   requantize: Callable[[Sequence[str]], Any], outputs: Callable[[Outputs], Outputs],
                   extra_outputs: dict[str, str] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Measure the INT8 graph `dst` against the FP32 graph `src` on `calibration` (model-ready inputs) and, where it
    misses `target_thresholds()`, keep its most sensitive nodes float: `requantize(extra_float_nodes)` writes `dst`
    again. Returns what was measured and done (the manifest's `conversion.float_fallback`).

    `outputs` completes a graph's outputs (by name) into what the gate compares (`logits`, and `embeddings` when
    known); `extra_outputs` {name: tensor} reads inner tensors too (the embeddings inside a logits-only graph)."""
    progress = progress or NullProgress()
    runner = _Runner(calibration, outputs, extra_outputs)
    fp32 = runner.load(src)  # also where the float weights come from
    reference = runner.run(fp32)
    qdq = runner.load(dst)
    before = _figures(reference, runner.run(qdq))
    report: dict[str, Any] = {"target": target_thresholds(), "images": int(len(calibration)),
                              "before": _summary(before), "nodes": []}
    if before["passed"]:
        return {**report, "needed": False}
    candidates = quantized_nodes(qdq)
    budget = max(1, int(MAX_FLOAT_FRACTION * len(candidates)))
    progress.note(f"int8 against fp32 on the calibration images: {_said(before)}, short of the fallback's target "
                  f"({'; '.join(before['failures'])}); measuring what each of its {len(candidates)} quantized nodes "
                  "costs")
    order = _by_sensitivity(runner, reference["logits"], qdq, fp32, candidates, progress)
    kept = _fewest_that_pass(runner, reference, qdq, fp32, order[:budget], progress)
    requantize(kept)
    after = _figures(reference, runner.run(runner.load(dst)))
    report.update(needed=True, nodes=kept, candidates=len(candidates), budget=budget, after=_summary(after),
                  reached=after["passed"])
    progress.note(f"int8: {len(kept)} of {len(candidates)} quantized nodes kept float; on the calibration images "
                  f"now {_said(after)}"
                  + ("" if after["passed"] else f" (the most allowed, {budget}, did not reach the target)"))
    return report


def _by_sensitivity(runner: _Runner, reference: np.ndarray, qdq, fp32, candidates: list[str],
                    progress: Progress) -> list[str]:
    """`candidates`, the one whose float computation shrinks the logits' squared error most first."""
    count = min(SENSITIVITY_IMAGES, len(runner.inputs))
    update = progress.task("int8: per-node sensitivity", len(candidates))
    error = {}
    for i, name in enumerate(candidates):
        got = runner.run(with_float_nodes(qdq, fp32, {name}), count)["logits"]
        error[name] = float(np.mean((got.astype(np.float64) - reference[:count]) ** 2))
        update(i + 1)
    return sorted(candidates, key=lambda name: (error[name], candidates.index(name)))


def _fewest_that_pass(runner: _Runner, reference: Outputs, qdq, fp32, order: list[str],
                      progress: Progress) -> list[str]:
    """The shortest prefix of `order` whose float computation meets the target (doubling, then bisecting), or all
    of `order` when none does."""
    passed: dict[int, bool] = {}

    def passes(k: int) -> bool:
        if k not in passed:
            figures = _figures(reference, runner.run(with_float_nodes(qdq, fp32, set(order[:k]))))
            passed[k] = figures["passed"]
            progress.note(f"int8: {k} node{'s' if k > 1 else ''} float -> {_said(figures)}")
        return passed[k]

    low, k = 0, 1  # low: a prefix known to fall short
    while k < len(order) and not passes(k):
        low, k = k, min(2 * k, len(order))
    if not passes(k):
        return order[:k]
    high = k
    while high - low > 1:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    return order[:high]
