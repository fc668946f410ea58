"""The tokenizer of an open_clip model spec: CLIP's byte-pair tokenizer, or a Hugging Face tokenizer read offline
(beside the weights file, else from the hub cache), and a digest of what it makes of text (a tuned teacher's prompts
are only valid with the tokenizer they were tuned with)."""

from __future__ import annotations

import warnings
from pathlib import Path

from promptkd_edge.errors import PkdError, first_line
from promptkd_edge.models.openclip import hub_reachable, register_tiny_configs
from promptkd_edge.models.spec import SCHEMAS, ModelSpec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what marks a folder as a Hugging Face tokenizer


def hf_tokenizer_name(spec: ModelSpec | str) -> str | None:
    """The Hugging Face tokenizer an open_clip architecture reads text with (`text_cfg.hf_tokenizer_name`: every
    SigLIP/SigLIP2 config of open_clip 3.3 has one), else None (CLIP's BPE, or a schema open_clip resolves)."""
    import open_clip

    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.arch.startswith(SCHEMAS):
        return None  # open_clip reads these from the hub repo / the local folder itself
    register_tiny_configs()
    name = (open_clip.get_model_config(spec.arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    return str(name) if name else None


def local_tokenizer_dir(spec: ModelSpec) -> Path | None:
    """The folder beside a weights file (`ARCH:/dir/open_clip_model.safetensors`) when it holds tokenizer files,
    as a downloaded hub repo of the model does; else None."""
    if not (spec.pretrained and spec.is_file):
        return None
    folder = Path(spec.pretrained).expanduser().parent
    return folder if any((folder / f).is_file() for f in TOKENIZER_FILES) else None


def load_tokenizer(spec: ModelSpec | str):
    """open_clip's tokenizer for `spec`. A Hugging Face tokenizer (SigLIP, SigLIP2, ...) needs `transformers` and
    its files: from the weights file's folder when they are there, else `text_cfg.hf_tokenizer_name` from the hub
    cache (or the hub, when reachable); offline without them, one line says what to pass."""
    import open_clip

    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    register_tiny_configs()
    name = hf_tokenizer_name(spec)
    if name is None and not spec.arch.startswith(SCHEMAS):
        return open_clip.get_tokenizer(spec.arch)  # CLIP's BPE
    if name is None:  # hf-hub: / local-dir: name their tokenizer in their own open_clip_config.json
        try:
            return open_clip.get_tokenizer(spec.arch)
        except (OSError, ValueError, ImportError) as e:
            raise PkdError(f"cannot load the tokenizer of {spec.arch}: {first_line(e, with_type=False)} (offline: "
                           "pass local-dir:/path/to/the/downloaded/repo)") from None
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise PkdError(f"{spec.arch} reads text with the Hugging Face tokenizer {name}, which needs transformers: "
                       "pip install 'promptkd-edge[siglip]'") from None
    from open_clip.tokenizer import HFTokenizer

    text_cfg = (open_clip.get_model_config(spec.arch) or {}).get("text_cfg", {})
    folder = local_tokenizer_dir(spec)
    offline = folder is None and not Path(name).is_dir() and not hub_reachable()
    kwargs = {"local_files_only": True} if offline else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HFTokenizer(str(folder or name), context_length=text_cfg.get("context_length", 77),
                               tokenizer_mode=text_cfg.get("tokenizer_mode"),
                               **text_cfg.get("tokenizer_kwargs", {}), **kwargs)
    except (OSError, ValueError) as e:
        if folder is None and (offline or not hub_reachable()):
            raise PkdError(f"the tokenizer of {spec.arch} ({name}) is not cached and the model hub is unreachable "
                           f"(offline); download {name}'s tokenizer files ({', '.join(TOKENIZER_FILES)}, ...) into "
                           f"the folder of the weights file and pass {spec.arch}:/that/folder/"
                           "open_clip_model.safetensors") from None
        raise PkdError(f"cannot load the tokenizer of {spec.arch} from {folder or name}: "
                       f"{first_line(e, with_type=False)}") from None


# Strings a tokenizer's digest tokenizes: case, punctuation, digits, accents, CJK, emoji and a long name.
_DIGEST_PROBE = ("a photo of a Golden Retriever.", "an image of the 2CV (Citroën), 1948-1990!", "façade naïve café",
                 "狗 猫 の写真", "dog \U0001f415 emoji", "x" * 300)


def tokenizer_digest(tokenizer) -> str:
    """sha256 that identifies what a tokenizer turns text into: its vocabulary and merges (the Hugging Face
    tokenizer's whole definition, or CLIP's byte-pair tables), its context length and the ids it gives a fixed set
    of probe strings (cleaning and case included). Two tokenizers with one digest give a teacher the same tokens."""
    import hashlib
    import json

    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    backend = getattr(inner, "backend_tokenizer", None)
    if backend is not None:  # its definition, less the padding/truncation state a call leaves behind
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        tables = json.dumps(definition, sort_keys=True)
    elif hasattr(tokenizer, "encoder") and hasattr(tokenizer, "bpe_ranks"):  # open_clip's SimpleTokenizer
        tables = json.dumps([sorted(tokenizer.encoder.items()),
                             sorted((" ".join(pair), rank) for pair, rank in tokenizer.bpe_ranks.items())])
    else:
        tables = type(tokenizer).__name__
    ids = tokenizer(list(_DIGEST_PROBE))
    record = {"tables": hashlib.sha256(tables.encode()).hexdigest(),
              "context_length": getattr(tokenizer, "context_length", None), "probe": ids.tolist()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
