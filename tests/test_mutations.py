"""Named mutations of the package, each of which at least one test must catch.

Each mutation copies promptkd_edge/ into a temporary folder, replaces an exact text (found exactly once) and runs
the tests named for it in a subprocess whose PYTHONPATH puts the mutated copy before the repository: the run must
fail. A probe plugin records which promptkd_edge the subprocess imported, so a mutant that was not really used
cannot pass for caught. Add a mutation with one line in MUTATIONS.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent


class Mutation(NamedTuple):
    name: str
    file: str  # relative to promptkd_edge/
    old: str  # occurs exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids, relative to the repository
    noconftest: bool = False  # True where the tests need nothing from tests/conftest.py (no torch import: faster)


TRT = "runtime/tensorrt_backend.py"
RUN_PATH = "tests/test_tensorrt.py::test_backend_run_path"
RUNTIME = "tests/test_tensorrt_runtime.py::"
DEVICE_1 = RUNTIME + "test_device_1_from_a_thread_whose_current_device_is_0"
BUILD = "export/tensorrt_build.py"
BUILD_FLAGS = "tests/test_tensorrt_build_flags.py::"
GATE = "tests/test_engine_gate.py::"
DS = "export/deepstream.py"
DS_TESTS = "tests/test_deepstream.py::"
FRAME = "tests/test_frame_input.py::"
PIPE = "tests/test_predict_files.py::"
FALLBACK = "export/int8_fallback.py"
FALLBACK_TESTS = "tests/test_int8_fallback.py::"
REGISTRY = "tests/test_backend_registry.py::"
EXPORT_CLI = "tests/test_export_cli.py::"

MUTATIONS = [
    Mutation("no sync before outputs are read", TRT, 'cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")', "None", (RUN_PATH,), True),  # noqa: E501
    Mutation("pageable host copy", TRT, "staging.ctypes.data, x.nbytes, h2d, stream)", "x.ctypes.data, x.nbytes, h2d, stream)", (RUN_PATH,), True),  # noqa: E501
    Mutation("stream 0 in execute_async_v3", TRT, "execute_async_v3(int(self._stream))", "execute_async_v3(0)", (RUN_PATH,), True),  # noqa: E501
    Mutation("no profile switch", TRT, "ctx.set_optimization_profile_async(profile, int(self._stream))", "pass", (RUNTIME + "test_profiles_with_a_gap",), True),  # noqa: E501
    Mutation("no cudaSetDevice in stage", TRT, "self._use_device()\n            x = self._checked(batch)\n            cudart", "x = self._checked(batch)\n            cudart", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in run", TRT, "self._use_device()\n            x = self._checked(batch)\n            shapes", "x = self._checked(batch)\n            shapes", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in run_staged", TRT, "self._use_device()\n            self._set_shapes(", "self._set_shapes(", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in synchronize", TRT, "self._use_device()\n            cuda_check(self._cudart,", "cuda_check(self._cudart,", (DEVICE_1,), True),  # noqa: E501
    Mutation("no cudaSetDevice in close", TRT, "return\n            self._use_device()", "return", (DEVICE_1,), True),
    Mutation("grown buffer freed under queued work", TRT, 'cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")\n            del pool[name]', "del pool[name]", (RUNTIME + "test_buffer_growth_and_staged_runs",), True),  # noqa: E501
    Mutation("TF32 left on", BUILD, "        config.clear_flag(trt.BuilderFlag.TF32)", "        pass", (BUILD_FLAGS + "test_plans_are_built_without_tf32",)),  # noqa: E501
    Mutation("trtexec script without --noTF32", BUILD, 'args.append("--noTF32")', "pass", (BUILD_FLAGS + "test_plans_are_built_without_tf32",)),  # noqa: E501
    Mutation("engine cache not keyed by GPU model", BUILD, '"gpu": gpu["name"], "sm": gpu["sm"]', '"sm": gpu["sm"]', (BUILD_FLAGS + "test_engine_cache_is_keyed_by_gpu_model_not_only_sm",)),  # noqa: E501
    Mutation("Q without zero point taken as UINT8", "export/trt_graph.py", "return _output_dtype(node) or TensorProto.INT8", "return _output_dtype(node) or TensorProto.UINT8", (BUILD_FLAGS + "test_quantize_without_zero_point_is_int8_as_tensorrt_parses_it",)),  # noqa: E501
    Mutation("gate batch outside the profiles", "export/gate_batches.py", "        return min(max(preferred, lo), hi)", "        return preferred", (GATE + "test_plan_batches_cover_each_image_once_inside_the_profiles", GATE + "test_gate_runs_every_profile_in_batches_it_takes")),  # noqa: E501
    Mutation("gate runs only the first profile that holds a batch", "export/plan.py", "return engine.run(batch, profile=profile)", "return engine.run(batch)", (GATE + "test_a_broken_second_profile_fails_the_gate",)),  # noqa: E501
    Mutation("doctor does not check plans", "bench/plan_check.py", 'check_plan_compatible(r, trt, out["gpu"])', "pass", (GATE + "test_doctor_checks_each_plan_against_this_tensorrt_and_gpu",)),  # noqa: E501
    Mutation("DeepStream takes a --head both plan", DS, "    if others:\n", "    if False and others:\n", (DS_TESTS + "test_a_bundle_with_embeddings_is_refused_for_what_nvinfer_would_make_of_it",)),  # noqa: E501
    Mutation("DeepStream classifier with the detector's gie id", DS, 'DEFAULT_GIE_IDS = {"primary": 1, "secondary": 2}', 'DEFAULT_GIE_IDS = {"primary": 1, "secondary": 1}', (DS_TESTS + "test_a_secondary_classifier_has_its_own_gie_id",)),  # noqa: E501
    Mutation("tuned teacher loads with another tokenizer", "models/teacher.py", "if config.tokenizer_sha256 and tokenizer_digest(", "if False and tokenizer_digest(", ("tests/test_teacher_families.py::test_pkd_teacher_on_siglip_like_trains",)),  # noqa: E501
    Mutation("draft decode without a passing record", "runtime/preprocess.py", '    return ("draft" if DECODE_GATES["draft"] in passed else "exact"), notes', '    return "draft", notes', ("tests/test_decode_choice.py::test_a_failed_or_missing_record_keeps_the_exact_path",)),  # noqa: E501
    Mutation("exact_preprocess ignored", "runtime/classifier.py", "exact=exact_preprocess,", "exact=False,", ("tests/test_decode_choice.py::test_exact_preprocess_opts_out",)),  # noqa: E501
    Mutation("BGR frames not reversed", "runtime/preprocess.py", "return a[..., ::-1]", "return a", (FRAME + "test_bgr_arrays_on_a_crop_bundle_equal_rgb_reversed",)),  # noqa: E501
    Mutation("frame resize gate always passes", "export/frame.py", 'if all(f["passed"] for k, f in measured.items() if k.startswith(f"{method} on ")):', "if True:", (FRAME + "test_gate_refuses_a_resize_that_fails_with_the_measured_numbers",)),  # noqa: E501
    Mutation("pipeline degraded to a loop", "runtime/pipeline.py", "            if len(pending) > AHEAD:", "            if len(pending) > 0:", (PIPE + "test_the_next_batch_is_decoded_while_the_backend_runs",)),  # noqa: E501
    Mutation("pipeline leaves its threads running", "runtime/pipeline.py", "pool.shutdown(wait=True, cancel_futures=True)", "pool.shutdown(wait=False, cancel_futures=True)", (PIPE + "test_a_bad_image_in_a_later_batch_raises_its_line_and_stops_every_worker",)),  # noqa: E501
    Mutation("pipeline out of order", "runtime/pipeline.py", "return _assemble(start, [f.result() for f in futures], frames)", 'return _assemble(start, [f.result() for f in __import__("concurrent.futures").futures.as_completed(futures)], frames)', (PIPE + "test_pipelined_batches_keep_the_input_order_over_many_chunks",)),  # noqa: E501
    Mutation("DeepStream scales bilinear for bicubic", DS, '"bicubic": 2}', '"bicubic": 1}', (DS_TESTS + "test_nvinfer_scales_with_the_bundles_interpolation_on_the_gpu",)),  # noqa: E501
    Mutation("INT8 quantizes the attention pool", "export/bundle.py", "INPUT_NAME, [*float_nodes, *extra], target=", "INPUT_NAME, [*keep, *extra], target=", ("tests/test_student_families.py::test_int8_leaves_the_attention_pool_float[pkd-tiny-map-vit]",)),  # noqa: E501
    Mutation("slim drops the node metadata", "export/graph.py", "            onnx.helper.set_metadata_props(node, dict(metadata[node.name]))", "            pass", ("tests/test_student_families.py::test_slim_keeps_what_finds_the_attention_pool",)),  # noqa: E501
    Mutation("TensorRT INT8 quantizes the attention pool", "export/plan.py", "INPUT_NAME, float_nodes, method=options.calibration_method", "INPUT_NAME, keep, method=options.calibration_method", ("tests/test_student_families.py::test_tensorrt_int8_graph_leaves_the_attention_pool_float[pkd-tiny-map-vit]",)),  # noqa: E501
    Mutation("INT8 fallback never runs", FALLBACK, 'if before["passed"]:', "if True:", (FALLBACK_TESTS + "test_the_node_behind_an_outlier_is_kept_float_and_the_graph_then_agrees",)),  # noqa: E501
    Mutation("INT8 fallback keeps the least sensitive first", FALLBACK, "(error[name], candidates.index(name)))", "(error[name], candidates.index(name)), reverse=True)", (FALLBACK_TESTS + "test_the_node_behind_an_outlier_is_kept_float_and_the_graph_then_agrees",)),  # noqa: E501
    Mutation("INT8 fallback's float copy keeps quantized weights", FALLBACK, "            node.input[k] = original\n", "            pass\n", (FALLBACK_TESTS + "test_float_nodes_copy_computes_what_the_fp32_graph_does",)),  # noqa: E501
    Mutation("INT8 fallback does not bisect", FALLBACK, "    while high - low > 1:", "    while False:", (FALLBACK_TESTS + "test_as_few_nodes_as_reach_the_target_and_never_past_the_budget",)),  # noqa: E501
    Mutation("INT8 fallback past its budget", FALLBACK, "order[:budget]", "order", (FALLBACK_TESTS + "test_as_few_nodes_as_reach_the_target_and_never_past_the_budget",)),  # noqa: E501
    Mutation("resume check reads the stored config raw", "train/distill_setup.py", "    stored = stored_config(run)\n", '    stored = DistillConfig.from_dict(read_json(run.config, "run config")["config"])\n', ("tests/test_cli.py::test_resume_a_run_written_before_the_schedule_field",)),  # noqa: E501
    Mutation("export ignores --no-int8-fallback", "export/bundle.py", "progress) if options.int8_fallback else None", "progress) if True else None", (FALLBACK_TESTS + "test_export_keeps_the_projector_float_where_int8_would_fail_its_gate",)),  # noqa: E501
    Mutation("auto measures one kind's CPU options only", "runtime/backends.py", "options = [o for kind in KINDS.values() if kind.auto_cpu is not None for o in kind.auto_cpu(bundle, opts)]", "options = [o for kind in KINDS.values() if kind.auto_cpu is not None for o in kind.auto_cpu(bundle, opts)][:1]", (REGISTRY + "test_auto_tries_the_gpu_kinds_in_order_then_measures_every_cpu_option",)),  # noqa: E501
    Mutation("a GPU kind's failure ends auto", "runtime/backends.py", '            opts.notes.append(f"{kind.label} not used: {e}")\n            continue', "            raise", (REGISTRY + "test_auto_tries_the_gpu_kinds_in_order_then_measures_every_cpu_option",)),  # noqa: E501
    Mutation("TensorRT plans loaded as dicts again", "runtime/backends.py", "return TensorRTBackend(bundle.path / engine.file, engine, device_id=opts.device_id)", "return TensorRTBackend(bundle.path / engine.file, engine.to_dict(), device_id=opts.device_id)", (REGISTRY + "test_the_tensorrt_kind_hands_the_manifests_entries_to_the_backend",)),  # noqa: E501
    Mutation("formats reads the runtime (upward import)", "formats/run.py", "from promptkd_edge.errors import PkdError\n", "from promptkd_edge.errors import PkdError\nif False:\n    import promptkd_edge.runtime.bundle  # noqa: F401\n", ("tests/test_layering.py::test_every_import_follows_the_documented_layering",)),  # noqa: E501
    Mutation("content digest spells bf16 as fp16", "formats/run.py", '"BF16": "torch.bfloat16"', '"BF16": "torch.float16"', ("tests/test_nothing_lost_training.py::test_the_content_digest_read_without_torch_is_the_one_torch_gave",)),  # noqa: E501
    Mutation("bench rows only for kinds it knew", "bench/backends.py", "    return {**BACKENDS, **{k: BackendSpec(k, k, \"bundle\") for k in KINDS if k not in covered}}", "    return dict(BACKENDS)", (REGISTRY + "test_a_new_kind_is_benched_without_a_runner_of_its_own",)),  # noqa: E501
    Mutation("export options without their operation ignored", "cli/export.py", "        if orphans and not given:", "        if False:", (EXPORT_CLI + "test_an_option_without_its_operation_is_one_line",)),  # noqa: E501
    Mutation("--triton-max-batch ignored", "cli/export.py", 'p["triton_max_batch"] if p["triton_max_batch"] is not None else max_batch)', "max_batch)", (EXPORT_CLI + "test_the_triton_and_deepstream_batch_sizes_go_each_to_its_own_record",)),  # noqa: E501
]

PROBE = '''
import os, sys


def pytest_sessionfinish(session, exitstatus):
    module = sys.modules.get("promptkd_edge")
    with open(os.environ["PKD_MUTANT_PROBE"], "w") as f:
        f.write(getattr(module, "__file__", "") or "")
'''


def _run(copy_root: Path, tests: tuple[str, ...], probe: Path, noconftest: bool) -> subprocess.CompletedProcess:
    """pytest on `tests` with the copy first on the path; run from the copy's folder (`python -m` puts the working
    directory first on sys.path: the repository's own promptkd_edge would shadow the copy)."""
    (copy_root / "pkd_mutant_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy_root), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "PKD_MUTANT_PROBE": str(probe)}
    args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "pkd_mutant_probe", *(["--noconftest"] if noconftest else [])]
    return subprocess.run([sys.executable, "-m", "pytest", *args, *(str(REPO / t) for t in tests)], cwd=copy_root,
                          env=env, capture_output=True, text=True, timeout=600)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "mutant"
    shutil.copytree(REPO / "promptkd_edge", root / "promptkd_edge", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _imported_copy(root: Path, probe: Path, run: subprocess.CompletedProcess) -> None:
    assert probe.is_file(), run.stdout[-2000:] + run.stderr[-2000:]
    imported = Path(probe.read_text())
    assert imported.is_relative_to(root), f"the tests imported {imported}, not the mutated copy under {root}"


class Result(NamedTuple):
    root: Path
    probe: Path
    run: subprocess.CompletedProcess | None
    problem: str | None = None  # why the mutant could not be made


def _mutant(mutation: Mutation, where: Path) -> Result:
    """The copy with `mutation` applied, run on its tests."""
    root = _copy(where)
    target = root / "promptkd_edge" / mutation.file
    text = target.read_text()
    if text.count(mutation.old) != 1:
        return Result(root, where / "imported.txt", None,
                      f"{mutation.name}: the text to mutate occurs {text.count(mutation.old)}x in {mutation.file}")
    target.write_text(text.replace(mutation.old, mutation.new))
    return Result(root, where / "imported.txt", _run(root, mutation.tests, where / "imported.txt", mutation.noconftest))


def _control(noconftest: bool, where: Path) -> Result:
    """The unmutated copy on every test the mutations of this kind name."""
    root = _copy(where)
    tests = tuple(dict.fromkeys(t for m in MUTATIONS if m.noconftest == noconftest for t in m.tests))
    return Result(root, where / "imported.txt", _run(root, tests, where / "imported.txt", noconftest))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Result]:
    """Every mutant's run and the controls', two or more subprocesses at a time (each is mostly imports and a
    small fixture: one per core keeps the file's wall time down)."""
    jobs = {m.name: (_mutant, m) for m in MUTATIONS}
    jobs.update({f"control-{kind}": (_control, kind) for kind in sorted({m.noconftest for m in MUTATIONS})})
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {name: pool.submit(fn, arg, tmp_path_factory.mktemp("mutant")) for name, (fn, arg) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name.replace(" ", "-") for m in MUTATIONS])
def test_mutation_is_caught(mutation: Mutation, results):
    result = results[mutation.name]
    assert result.problem is None, result.problem
    run = result.run
    _imported_copy(result.root, result.probe, run)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    assert run.returncode != 0 and re.search(r"\b\d+ failed\b", summary), \
        f"mutation '{mutation.name}' survived {list(mutation.tests)}: {summary}"


@pytest.mark.parametrize("noconftest", sorted({m.noconftest for m in MUTATIONS}))
def test_unmutated_copy_passes_the_mutation_tests(results, noconftest):
    """The control: the same harness on an unmutated copy passes, so a mutant's failure is the mutation's."""
    result = results[f"control-{noconftest}"]
    _imported_copy(result.root, result.probe, result.run)
    assert result.run.returncode == 0, result.run.stdout[-3000:] + result.run.stderr[-2000:]
