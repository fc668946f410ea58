"""The teacher's text tower in the bundle, so a device turns new class names into class vectors without torch.

`pkd export RUN --head embeddings|both --text-encoder` writes:
- `text/encoder.onnx`: token ids [N, L] int64 (L from 2 to the context) -> unit vectors [N, D] float32. The
  stage-I prompted tower where the run's teacher is a `pkd teacher` run (its learned prompts as constants), the
  plain tower otherwise, ending in end-of-text pooling, the projection and the L2 norm: the vectors `pkd classes`
  computes for the same names.
- `text/encoder.fp16.onnx`: the same in FP16 (LayerNorm, Softmax and the norm kept FP32), for GPUs.
- `text/merges.txt.gz`: the tokenizer's byte-pair merges (runtime/tokenizer.py reads them, torch-free).
- `manifest["text_encoder"]`: files, tokenizer (special tokens, context length, cleaning), the sentence a class
  name goes into, and its parity gate against `pkd classes` on the run's class names (FP32: max |delta| <= 1e-4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from promptkd_edge.errors import PkdError
from promptkd_edge.models.class_vectors import compute_class_vectors
from promptkd_edge.models.prompted_text import PromptedTextTower, check_text_tower, text_pooling, text_tower
from promptkd_edge.models.teacher import DEFAULT_TEMPLATE, Teacher
from promptkd_edge.runtime.tokenizer import HF_TYPE
from promptkd_edge.utils.progress import NullProgress, Progress

TEXT_DIR = "text"
FILES = {"fp32": "text/encoder.onnx", "fp16": "text/encoder.fp16.onnx"}
MERGES_FILE = "text/merges.txt.gz"
HF_TOKENIZER_FILE = "text/tokenizer.json"  # a Hugging Face tokenizer's (SigLIP's), read by `tokenizers` on the device
INPUT, OUTPUT = "tokens", "text_embeddings"
THRESHOLDS = {"fp32": {"max_abs_diff": 1e-4}, "fp16": {"max_abs_diff": 5e-3, "min_cosine": 0.9999}}


class TextEncoder(nn.Module):
    """Token ids [N, L] -> unit text vectors, as `Teacher.class_text_features` computes them. L may be anything from
    2 to the context: under CLIP's causal mask, tokens after the last end token change nothing, so the runtime
    cuts a batch after its longest text (a class name is ~10 tokens of 77)."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher
        # the plain tower through the same code with no prompts (depth 0 equals open_clip's encode_text), which,
        # unlike encode_text, takes fewer positions than the context
        self.tower = teacher.text if teacher.prompted else PromptedTextTower(teacher.model, None, 1, 0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower.forward_tokens(tokens, trim=False).float(), dim=-1)


def trims(model: nn.Module) -> bool:
    """Whether the tower pools at the end token under a causal mask (then a batch may be cut after its longest)."""
    tower = text_tower(model)
    return tower.attn_mask is not None and text_pooling(tower)[0] in ("argmax", "eos")


def sentence_of(teacher: Teacher, template: str) -> str:
    """The sentence a class name goes into (underscores in names read as spaces)."""
    return f"{teacher.text.prefix} {{}}." if teacher.prompted else template


def tokenizer_spec(teacher: Teacher) -> tuple[list[tuple[str, str]] | str, dict[str, Any]]:
    """(what the tokenizer file holds: CLIP's merges in rank order, or a Hugging Face tokenizer's tokenizer.json
    text; the manifest's tokenizer entry) of the teacher's open_clip tokenizer."""
    from open_clip import tokenizer as oc

    tok = teacher.clip.tokenizer()
    cleaners = {oc._clean_lower: "lower", oc._clean_whitespace: "whitespace", oc._clean_canonicalize: "canonicalize"}
    clean = cleaners.get(getattr(tok, "clean_fn", None))
    if isinstance(tok, oc.HFTokenizer):
        return _hf_tokenizer_spec(teacher, tok, clean)
    if not isinstance(tok, oc.SimpleTokenizer) or getattr(tok, "reduction_fn", None) is not None:
        raise PkdError(f"--text-encoder ships CLIP's byte-pair tokenizer or a Hugging Face tokenizer.json; "
                       f"{teacher.spec} uses {type(tok).__name__}, which the runtime cannot reproduce")
    if clean not in ("lower", "whitespace"):
        raise PkdError(f"--text-encoder: {teacher.spec}'s tokenizer cleans text in a way the runtime does not "
                       "reproduce (only open_clip's 'lower' and 'whitespace')")
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    special = [tok.decoder[i] for i in tok.all_special_ids]
    return merges, {"type": "clip-bpe", "merges": MERGES_FILE, "special_tokens": special,
                    "context_length": int(tok.context_length), "clean": clean}


def _hf_tokenizer_spec(teacher: Teacher, tok, clean: str | None) -> tuple[str, dict[str, Any]]:
    """open_clip's HFTokenizer in its default mode: the fast tokenizer's tokenizer.json and how it is called."""
    hf = tok.tokenizer
    backend = getattr(hf, "backend_tokenizer", None)
    why = ("its tokenizer mode " + repr(tok.tokenizer_mode) if tok.tokenizer_mode else
           "it strips the separator token" if tok.strip_sep_token else
           "it is not a fast (tokenizers) tokenizer" if backend is None else
           "its text cleaning is not open_clip's lower, whitespace or canonicalize" if clean is None else
           "it has no padding token" if hf.pad_token_id is None else None)
    if why:
        raise PkdError(f"--text-encoder: the runtime cannot reproduce {teacher.spec}'s Hugging Face tokenizer "
                       f"({why})")
    special = [t for t in (hf.pad_token, hf.eos_token) if t is not None]
    return backend.to_str(), {"type": HF_TYPE, "merges": HF_TOKENIZER_FILE, "special_tokens": special,
                              "context_length": int(tok.context_length), "clean": clean,
                              "pad_id": int(hf.pad_token_id), "end_id": hf.eos_token_id,
                              "padding_side": str(hf.padding_side)}


def _write_tokenizer(data: list[tuple[str, str]] | str, spec: dict[str, Any], out: Path) -> None:
    from promptkd_edge.runtime.tokenizer import write_merges

    if spec["type"] == HF_TYPE:
        (out / spec["merges"]).write_text(data, encoding="utf-8")
    else:
        write_merges(data, out / spec["merges"])


def export_text_encoder(teacher: Teacher, names: list[str], template: str, out: Path, *, opset: int,
                        progress: Progress | None = None) -> dict[str, Any]:
    """Write the text encoder (FP32 and FP16), the tokenizer's merges, gate both against `pkd classes` on
    `names`; returns the manifest's `text_encoder` entry."""
    from promptkd_edge.export.onnx_export import export_module
    from promptkd_edge.export.precision import to_fp16
    from promptkd_edge.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from promptkd_edge.runtime.tokenizer import cut_after_longest, load_bundle_tokenizer

    progress = progress or NullProgress()
    template = template if not teacher.prompted else DEFAULT_TEMPLATE
    check_text_tower(teacher.model)
    data, tokenizer = tokenizer_spec(teacher)
    tokenizer["cut_after_longest_end"] = trims(teacher.model)
    (out / TEXT_DIR).mkdir(parents=True, exist_ok=True)
    _write_tokenizer(data, tokenizer, out)
    tok = load_bundle_tokenizer(out, tokenizer)  # what the device reads, so the gate covers it
    sentence = sentence_of(teacher, template)
    tokens = tok([sentence.format(n.replace("_", " ")) for n in names])
    if tokenizer["cut_after_longest_end"]:
        tokens = cut_after_longest(tokens, tok.end_id)  # as the runtime feeds it
    reference = compute_class_vectors(teacher, names, template).vectors.numpy()  # what `pkd classes` writes

    progress.note(f"exporting the teacher's text tower ({'prompted' if teacher.prompted else 'zero-shot'}, "
                  f"context {tokenizer['context_length']})")
    encoder = TextEncoder(teacher.float().eval())
    context = tokenizer["context_length"]
    # a batch of 2 and a length below the context: 1 and the full context would be specialised into the graph
    example = torch.from_numpy(np.repeat(tok(["x"])[:, :max(3, context // 2)], 2, axis=0))
    export_module(encoder, out / FILES["fp32"], example, INPUT, [OUTPUT], opset=opset, max_length=context)
    to_fp16(out / FILES["fp32"], out / FILES["fp16"], [], use_modelopt=False)
    gates = []
    for precision, file in FILES.items():
        backend = OnnxRuntimeBackend(out / file, providers="cpu", precision=precision)
        try:
            got = np.concatenate([backend.run(tokens[i:i + 64])[OUTPUT] for i in range(0, len(tokens), 64)])
        finally:
            backend.close()
        gates.append(compare_vectors(reference, got, precision))
    params = sum(p.numel() for n, p in teacher.named_parameters() if not n.startswith(("vision", "model.visual")))
    return {"files": dict(FILES), "input": INPUT, "output": OUTPUT, "tokenizer": tokenizer, "sentence": sentence,
            "names_read_with_spaces": True, "prompted": teacher.prompted, "teacher": teacher.spec,
            "dim": int(reference.shape[1]), "parameters": int(params), "parity": gates}


def compare_vectors(reference: np.ndarray, got: np.ndarray, precision: str) -> dict[str, Any]:
    """The text encoder's gate: its vectors against `pkd classes`' for the same names."""
    diff = float(np.abs(reference - got).max())
    cosine = float(np.min(np.sum(reference * got, axis=1) / (np.linalg.norm(reference, axis=1)
                                                              * np.linalg.norm(got, axis=1))))
    thresholds = THRESHOLDS[precision]
    failures = []
    if diff > thresholds["max_abs_diff"]:
        failures.append(f"max |delta| {diff:.2e} > {thresholds['max_abs_diff']:g}")
    if "min_cosine" in thresholds and cosine < thresholds["min_cosine"]:
        failures.append(f"min cosine {cosine:.6f} < {thresholds['min_cosine']}")
    return {"target": "onnxruntime-cpu", "precision": precision, "reference": "pkd classes", "names": len(reference),
            "max_abs_diff": diff, "min_cosine": cosine, "thresholds": thresholds, "failures": failures,
            "passed": not failures}
