"""A Triton Inference Server model repository entry from a bundle: ONNX Runtime (model.onnx) or TensorRT (a plan).

    REPO/<name>/config.pbtxt        platform, max_batch_size, I/O, dynamic batching, instance group, and
                                    `version_policy { specific { versions: [ N ] } }`: the one version served
    REPO/<name>/N/model.onnx        (or model.plan, the bundle's plan for this GPU and TensorRT)
    REPO/<name>/N/labels.txt        class names, one per line, in class-id order (`label_filename: "N/labels.txt"`)
    REPO/.<name>.lock               held while an export writes the entry (flock; the file stays)

Triton's batch dimension is implicit: dims leave it out and `max_batch_size` bounds it. A plan with several
optimization profiles lists them all in `instance_group { profile: [...] }`: without that list Triton's TensorRT
backend uses profile 0 only, and every batch outside it fails. Triton then picks, per batch, the listed profile
whose range holds it; so every batch from 1 to `max_batch_size` must lie in some profile (the dynamic batcher can
form any of them), which is checked here.

Replacing an entry. Labels and dims belong to the model as much as the graph does, so everything of one export
lives in its version folder (Triton resolves `label_filename` inside the model folder, subfolders allowed) and the
config names exactly that version. A new export writes version N+1 completely under a hidden name (`.N+1.tmp-PID`:
Triton ignores version folders that are not numbers), renames it to N+1 (still not served: the config names N),
then replaces config.pbtxt atomically: that rename is the switch. Triton in POLL mode sees either the old config
with version N or the new one with N+1, never a model beside another export's labels; EXPLICIT and NONE modes read
the repository only when told to or at start, and see the same two states. A failure or a kill at any point
leaves the old entry exactly as it was; what an interrupted export left (a hidden version, or a complete version
the config never named) is removed by the next one, which says so, under the lock, so it can only be dead. The
version served before is removed after the switch (Triton keeps a loaded model in memory, and a reload that fails
keeps the loaded one), so an entry at rest holds one version. Swapping whole model folders by rename was not chosen:
Triton polls every sub-folder of the repository, hidden ones included, so a staging folder there would be seen
as a model. An entry from an older promptkd-edge (one config, version 1, labels.txt beside it, no version
policy: Triton serves the highest version) is first pinned to the version it serves, then replaced the same way.
A folder that is not an entry we wrote (no config.pbtxt, another platform, files we do not write) is refused
unless `overwrite`: then its files are removed after the switch.

A plan entry says in config.pbtxt, as `#` comments (protobuf's text format skips them; Triton reads nothing
else from them), which TensorRT release and GPU built the plan: Triton's tensorrt_backend deserializes it with
the TensorRT its own release ships, and a plan loads only on the TensorRT release that built it and on GPUs of
that compute capability, so the serving Triton release must ship that TensorRT. The last comment line,
`# pkd-plan: {json}`, is the plan's record (TensorRT, compute capability, GPU, precision, profiles), which
`pkd doctor --bundle ENTRY` checks against the TensorRT and GPU of the machine it runs on.

Names go into config.pbtxt as protobuf text-format strings (quotes, backslashes and control characters escaped);
the model name must be one Triton serves (model_repository_manager.cc: not empty or blank, no '/' or '..') and
equals the folder name, which Triton requires.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from promptkd_edge.errors import PkdError
from promptkd_edge.formats.classes import labels_text
from promptkd_edge.formats.manifest import EngineEntry, ModelEntry, TensorInfo
from promptkd_edge.formats.plan_record import plan_record_line
from promptkd_edge.runtime.bundle import open_bundle
from promptkd_edge.utils.files import atomic_path, exclusive_lock, write_bytes, write_text
from promptkd_edge.utils.text import visible

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}
PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")
CONFIG = "config.pbtxt"
LABELS = "labels.txt"
VERSION_FILES = ("model.onnx", "model.plan", LABELS)  # what a version folder of ours holds
STAGING = re.compile(r"\.(\d+)\.tmp-\d+")  # a version being written (not a number: Triton ignores it)
LOCK_TIMEOUT_S = 60.0


def pbtxt_string(text: str) -> str:
    """`text` as a protobuf text-format string literal: quotes, backslashes and control characters escaped (octal),
    everything else as UTF-8, which protobuf's text parser (Triton's) reads back unchanged."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    body = "".join(escapes.get(c) or (f"\\{ord(c):03o}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text)
    return f'"{body}"'


def check_model_name(name: str) -> str:
    """`name` when Triton can serve a model of that name from a folder of that name, else a PkdError: Triton
    refuses an empty or blank name and one with '/' or '..'; control characters (no folder, URL or log keeps them)
    are refused here too."""
    problem = ("is empty" if not name else "is blank" if not name.strip() else "holds '/'" if "/" in name
               else "holds '..'" if ".." in name
               else "holds a control character" if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name)
               else None)
    if problem:
        raise PkdError(f"Triton cannot serve a model named {name!r}: the name {problem}; choose one with "
                       "--triton-name")
    return name


def _tensor(entry: TensorInfo, kind: str, labels: str | None = None, frames: bool = False) -> str:
    """One input/output entry; `frames`: a frame graph's input, whose height and width are dynamic (-1: Triton
    takes any, and its dynamic batcher batches requests of one shape together)."""
    dims = [-1 if frames and not isinstance(d, int) else d for d in entry.shape[1:]]
    if any(not isinstance(d, int) for d in dims):
        raise PkdError(f"{kind} {entry.name} has a dynamic dimension besides the batch: {entry.shape}")
    if entry.dtype not in TRITON_TYPES:
        raise PkdError(f"{kind} {entry.name} has dtype {entry.dtype}, which Triton's config cannot name here")
    lines = [f"    name: {pbtxt_string(entry.name)}", f"    data_type: {TRITON_TYPES[entry.dtype]}",
             f"    dims: [ {', '.join(str(d) for d in dims)} ]"]
    if labels:
        lines.append(f"    label_filename: {pbtxt_string(labels)}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def _sm(compute_capability: str | None) -> str:
    return "sm_" + str(compute_capability or "?").replace(".", "")


def plan_comment(plan: EngineEntry) -> str:
    """config.pbtxt's `#` lines for a plan entry: what built the plan, what the serving Triton must ship, and the
    plan's record (formats/plan_record.py). Values from the manifest are escaped: a comment ends at a newline."""
    version, gpu, sm = visible(plan.tensorrt or "?"), visible(plan.gpu or "?"), visible(_sm(plan.compute_capability))
    lines = [f"model.plan: a TensorRT {version} {visible(plan.precision)} plan built on {gpu} ({sm}).",
             "Triton's tensorrt backend deserializes it with the TensorRT of its own release, and a plan loads only",
             "on the TensorRT release that built it and on GPUs of that architecture: serve this entry with a Triton",
             f"release that ships TensorRT {version} (Triton's release notes name each container's TensorRT), on",
             f"{sm}; else rebuild the plan on the serving machine with `pkd export BUNDLE --trt` and write this",
             "entry again. `pkd doctor --bundle ENTRY_FOLDER` checks it against the machine it runs on."]
    return "".join(f"# {line}\n" for line in lines) + plan_record_line(plan)


def config_pbtxt(model: ModelEntry, name: str, platform: str, max_batch: int, gpu: bool,
                 profiles: int = 0, version: int = 1, plan: EngineEntry | None = None) -> str:
    """The config.pbtxt text for a bundle's model (protobuf text format, Triton's ModelConfig) served as `version`
    (its labels in that version's folder); `profiles` > 0 lists a plan's optimization profiles 0..profiles-1 in the
    instance group; `plan` (a tensorrt_plan entry's) heads it with `plan_comment`."""
    preferred = [b for b in (4, 8, 16, 32) if b <= max_batch] or [max_batch]
    inputs = ",\n".join(_tensor(i, "input", frames=model.input_format == "frame") for i in model.inputs)
    outputs = ",\n".join(_tensor(o, "output", labels=f"{version}/{LABELS}" if o.name == "logits" else None)
                         for o in model.outputs)
    indexes = ", ".join('"' + str(i) + '"' for i in range(profiles))  # ModelInstanceGroup.profile: strings
    listed = f"\n    profile: [ {indexes} ]" if profiles else ""
    return ((plan_comment(plan) if plan is not None else "")
            + f"name: {pbtxt_string(check_model_name(name))}\nplatform: {pbtxt_string(platform)}\n"
            f"max_batch_size: {max_batch}\nversion_policy {{ specific {{ versions: [ {version} ] }} }}\n"
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: 500\n}}\n"
            f"instance_group [\n  {{\n    count: 1\n    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}{listed}\n  }}\n]\n")


def plan_batch_limit(profiles: list[list[int]], requested: int | None) -> int:
    """The max_batch_size a plan with these (min, opt, max) profiles serves: `requested` (default: the largest
    profile max), capped at that max; a PkdError when some batch from 1 to it lies in no profile."""
    largest = max(p[2] for p in profiles)
    limit = min(requested or largest, largest)
    uncovered = [b for b in range(1, limit + 1) if not any(lo <= b <= hi for lo, _, hi in profiles)]
    if uncovered:
        shown = ", ".join(map(str, uncovered[:6])) + (", ..." if len(uncovered) > 6 else "")
        ranges = ", ".join(f"{lo}..{hi}" for lo, _, hi in profiles)
        fix = f" or pass --triton-max-batch {uncovered[0] - 1}" if uncovered[0] > 1 else ""
        raise PkdError(f"batch {shown} lies in none of the plan's profiles ({ranges}), but Triton's dynamic batcher "
                       f"may form it up to max_batch_size {limit}: rebuild the plan with --trt-profile covering "
                       f"1..{limit}{fix}")
    return limit


def write_repository(bundle_dir: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None,
                     backend: str = "onnxruntime", max_batch: int | None = None, gpu: bool = True,
                     engine: str | None = None, overwrite: bool = False,
                     note: Callable[[str], None] | None = None) -> Path:
    """Write `repo/<name>` for the bundle, or switch an entry we wrote to a new version of it (module docstring);
    returns the model folder. `overwrite` replaces a folder we did not write; `note` hears what was cleaned up.

    backend "onnxruntime" serves model.onnx; "tensorrt" serves the bundle's plan `engine` (default: its only one),
    with all its profiles listed; its largest profile batch bounds `max_batch_size`.
    """
    if max_batch is not None and max_batch < 1:
        raise PkdError("--triton-max-batch must be >= 1")
    bundle = open_bundle(bundle_dir)
    name = check_model_name(name if name is not None else bundle.path.name.replace("-", "_"))
    folder = Path(repo) / name
    profiles, plan = 0, None
    if backend == "onnxruntime":
        source, target, platform = bundle.model_path, "model.onnx", "onnxruntime_onnx"
        limit = max_batch or 32
    elif backend == "tensorrt":
        engines = [e for e in bundle.engines if engine in (None, e.file)]
        if len(engines) != 1:
            have = ", ".join(e.file for e in bundle.engines) or "none"
            raise PkdError(f"choose one TensorRT plan of {bundle.path} (it has: {have}); plans are built with "
                           "`pkd export BUNDLE --trt` on the serving machine")
        plan = record = engines[0]
        source, target, platform = bundle.path / record.file, "model.plan", "tensorrt_plan"
        limit = plan_batch_limit(record.profiles, max_batch)
        profiles = len(record.profiles)
        gpu = True
    else:
        raise PkdError(f"unknown Triton backend '{backend}'; choose onnxruntime or tensorrt")
    config_pbtxt(bundle.model, name, platform, limit, gpu, profiles, plan=plan)  # refused before any write
    labels = labels_text(bundle.class_names, f"bundle {bundle.path}")  # one name a line: refused before any write
    if folder.exists() and not folder.is_dir():
        raise PkdError(f"{folder} is a file, not a Triton model folder: move it away or choose another --triton-name")
    lock = folder.parent / f".{name}.lock"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(lock, LOCK_TIMEOUT_S) as held:
            if not held:
                raise PkdError(f"cannot lock {lock}: another `pkd export --triton` is writing {folder}, or "
                               f"{folder.parent} is read-only")
            _switch(folder, lambda version: config_pbtxt(bundle.model, name, platform, limit, gpu, profiles, version,
                                                         plan),
                    source, target, labels, overwrite, note or (lambda _: None))
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, "")
        raise PkdError(f"cannot write the Triton entry {folder}: {e.strerror or e} ({code or type(e).__name__} on "
                       f"{e.filename or folder}); the entry is left as it was") from None
    return folder


@dataclass
class _Entry:
    """What a model folder holds, as far as an export is concerned."""

    config: bytes | None = None
    served: list[int] | None = None  # the versions its config names; None: no version policy (the highest)
    versions: list[int] = field(default_factory=list)  # numeric folders holding only VERSION_FILES
    leftovers: list[Path] = field(default_factory=list)  # what an interrupted export left
    foreign: list[str] = field(default_factory=list)  # what we did not write

    @property
    def ours(self) -> bool:
        return not self.foreign


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()  # atomic_path's temp


def _inspect(folder: Path) -> _Entry:
    entry = _Entry()
    if not folder.is_dir():
        return entry
    for child in sorted(folder.iterdir()):
        if child.name == CONFIG and child.is_file():
            entry.config = child.read_bytes()
            text = entry.config.decode("utf-8", "replace")
            platform = re.search(r'^platform:\s*"([^"]*)"', text, re.M)
            if platform is None or platform.group(1) not in PLATFORMS:
                entry.foreign.append(f"{CONFIG} names platform {platform.group(1) if platform else 'none'}")
            pinned = re.search(r"version_policy\s*:?\s*\{\s*specific\s*:?\s*\{\s*versions\s*:\s*\[([\d,\s]*)\]",
                               text)
            entry.served = [int(v) for v in re.findall(r"\d+", pinned.group(1))] if pinned else None
        elif STAGING.fullmatch(child.name) and child.is_dir() or _is_temp(child):
            entry.leftovers.append(child)
        elif child.name == LABELS and child.is_file():
            pass  # beside config.pbtxt: an entry of an older promptkd-edge
        elif child.name.isdigit() and not child.name.startswith("0") and child.is_dir() and all(
                f.is_file() and (f.name in VERSION_FILES or _is_temp(f)) for f in child.iterdir()):
            entry.versions.append(int(child.name))
        else:
            entry.foreign.append(child.name)
    if entry.config is None and (entry.versions or entry.foreign):
        entry.foreign.insert(0, f"no {CONFIG}")
    return entry


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _switch(folder: Path, config_for: Callable[[int], str], source: Path, target: str, labels: str,
            overwrite: bool, note: Callable[[str], None]) -> None:
    """Under the entry's lock: write the next version beside the served one and switch config.pbtxt to it."""
    entry = _inspect(folder)
    if not entry.ours and not overwrite:
        raise PkdError(f"{folder} is not a Triton entry written by pkd export ({'; '.join(entry.foreign[:3])}): "
                       "choose another --triton-name, or pass --overwrite to replace it")
    for path in entry.leftovers:
        _remove(path)
        note(f"removed {path}, left by an interrupted `pkd export --triton`")
    served = entry.served if entry.served is not None else entry.versions[-1:]
    if entry.ours:
        for orphan in (v for v in entry.versions if v not in served):  # renamed in, never switched to
            _remove(folder / str(orphan))
            note(f"removed version {orphan} of {folder}: never served, left by an interrupted export")
    taken = [int(c.name) for c in folder.iterdir() if c.name.isdigit()] if folder.is_dir() else []  # ours or not
    version = max([*taken, *(entry.served or [])], default=0) + 1
    old_config = entry.config
    pinned = entry.ours and entry.config is not None
    stage = folder / f".{version}.tmp-{os.getpid()}"
    made_folder = not folder.exists()
    switched = False
    try:
        if pinned and entry.served is None and served:  # an older entry: Triton serves its highest version
            write_bytes(folder / CONFIG, old_config.rstrip(b"\n")
                        + f"\nversion_policy {{ specific {{ versions: [ {served[0]} ] }} }}\n".encode())
        stage.mkdir(parents=True)
        with atomic_path(stage / target) as tmp:
            shutil.copyfile(source, tmp)
        write_text(stage / LABELS, labels)
        if pinned:  # the new version lands unserved; the config's rename switches to it
            os.rename(stage, folder / str(version))
            write_text(folder / CONFIG, config_for(version))
        else:  # a new entry (or one replaced with overwrite): the config names a version not there yet
            write_text(folder / CONFIG, config_for(version))
            os.rename(stage, folder / str(version))
        switched = True
    finally:
        if not switched:  # leave the old entry as it was
            shutil.rmtree(stage, ignore_errors=True)
            if pinned:
                shutil.rmtree(folder / str(version), ignore_errors=True)
            if old_config is not None and (folder / CONFIG).read_bytes() != old_config:
                write_bytes(folder / CONFIG, old_config)
            elif old_config is None:
                (folder / CONFIG).unlink(missing_ok=True)
            if made_folder:
                shutil.rmtree(folder, ignore_errors=True)
    for child in folder.iterdir():  # after the switch: the version served before, a replaced entry's files
        if child.name not in (CONFIG, str(version)):
            try:
                _remove(child)
            except OSError as e:  # the new version serves; this only costs disk
                note(f"{folder} serves version {version}, but {child} could not be removed ({e.strerror}): "
                     "remove it by hand")
                continue
            if not entry.ours:
                note(f"removed {child} of the replaced entry (--overwrite)")
