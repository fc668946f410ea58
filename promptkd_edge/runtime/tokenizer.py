"""CLIP's byte-pair tokenizer without torch: what open_clip's `SimpleTokenizer` does, read from a bundle.

Text is cleaned as open_clip cleans it (ftfy's `fix_text`, HTML entities unescaped twice, runs of whitespace made one
space, lower case), split into words, numbers and punctuation runs, each word's UTF-8 bytes mapped to printable
characters and merged by rank into vocabulary entries; `[start] tokens... [end]` is cut to the context length
(the last kept token becoming [end]) and padded with 0. The vocabulary is the bundle's `text/merges.txt.gz`: one
merge per line in rank order, after which the ids are the 256 byte symbols, the same 256 ending a word (`</w>`),
one id per merge, then the special tokens.

Needs `ftfy` and `regex` (pip install 'promptkd-edge[text]'), both pure Python or with wheels for Jetson.

Teachers with a Hugging Face tokenizer (SigLIP, SigLIP2: open_clip's HFTokenizer) ship its `text/tokenizer.json`
instead, read by the `tokenizers` library alone (pip install 'promptkd-edge[siglip]'; no torch, no transformers):
`HfTokenizer` cleans as open_clip does, then pads and truncates to the context as transformers asks the same
library to. `load_bundle_tokenizer` picks the class from the manifest's tokenizer entry (`type`).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from promptkd_edge.errors import PkdError
from promptkd_edge.utils.clip_text import WORDS, clean_text, imports

WORD_END = "</w>"
CLEANERS = ("lower", "whitespace")
HF_CLEANERS = ("lower", "whitespace", "canonicalize")  # open_clip's get_clean_fn names
HF_TYPE = "hf-tokenizers"


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """Byte -> a printable character: printable Latin-1 bytes stand for themselves, the other 68 are shifted past
    255, so no byte maps to whitespace or a control character. The order (printable first) is the vocabulary's."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ClipTokenizer:
    """Token ids [N, context_length] (int64) of texts, exactly as open_clip's tokenizer for CLIP models."""

    def __init__(self, merges: Sequence[tuple[str, str]], special_tokens: Sequence[str] = ("<start_of_text>",
                 "<end_of_text>"), context_length: int = 77, clean: str = "lower"):
        if clean not in CLEANERS:
            raise PkdError(f"unknown text cleaning '{clean}'; this tokenizer knows {', '.join(CLEANERS)}")
        if len(special_tokens) < 2:
            raise PkdError("a CLIP tokenizer needs at least the start and end tokens")
        _, regex = imports()
        symbols = list(byte_symbols().values())
        vocab = symbols + [s + WORD_END for s in symbols] + ["".join(m) for m in merges] + list(special_tokens)
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.special_tokens = list(special_tokens)
        self.start_id, self.end_id = self.ids[special_tokens[0]], self.ids[special_tokens[1]]
        self.context_length, self.clean = int(context_length), clean
        specials = "|".join(regex.escape(t) for t in special_tokens)
        self._split = regex.compile(specials + "|" + WORDS, regex.IGNORECASE)
        self._words: dict[str, list[int]] = {}

    @classmethod
    def load(cls, merges_file: str | os.PathLike, *, special_tokens: Sequence[str], context_length: int,
             clean: str) -> ClipTokenizer:
        try:
            lines = gzip.decompress(Path(merges_file).read_bytes()).decode("utf-8").splitlines()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise PkdError(f"cannot read the tokenizer's merges {merges_file}: {e}") from None
        merges = [tuple(line.split(" ")) for line in lines if line]
        if any(len(m) != 2 for m in merges):
            raise PkdError(f"{merges_file} is not a merges file (two symbols per line)")
        return cls(merges, special_tokens, context_length, clean)

    def cleaned(self, text: str) -> str:
        return clean_text(text, self.clean)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start/end tokens and not cut."""
        out: list[int] = []
        symbols = byte_symbols()
        for word in self._split.findall(self.cleaned(text)):
            if word in self.special_tokens:
                out.append(self.ids[word])
                continue
            if word not in self._words:
                self._words[word] = [self.ids[p] for p in self._merge("".join(symbols[b] for b in word.encode()))]
            out += self._words[word]
        return out

    def _merge(self, word: str) -> list[str]:
        """Byte-pair merges of one word, lowest rank first, until no adjacent pair is a merge."""
        parts = [*word[:-1], word[-1] + WORD_END]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:], strict=False)}
            best = min(pairs, key=lambda p: self.ranks.get(p, len(self.ranks)))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), context_length] int64: start, tokens, end (cut to fit, ending in end), zeros."""
        return self.tokenize(texts)[0]

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(the token ids of `__call__`, the indices of the texts that were cut to fit the context)."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        cut = []
        for i, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.end_id
                cut.append(i)
            out[i, :len(ids)] = ids
        return out, cut


class HfTokenizer:
    """Token ids [N, context_length] (int64) of texts, exactly as open_clip's HFTokenizer (default mode): open_clip's
    cleaning, then the tokenizer.json's own pipeline with its special tokens, cut and padded to the context."""

    def __init__(self, tokenizer_json: str, *, context_length: int, clean: str, pad_id: int,
                 end_id: int | None = None, padding_side: str = "right"):
        if clean not in HF_CLEANERS:
            raise PkdError(f"unknown text cleaning '{clean}'; this tokenizer knows {', '.join(HF_CLEANERS)}")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise PkdError("this text encoder's tokenizer needs the tokenizers package: "
                           "pip install 'promptkd-edge[siglip]'") from None
        self.tok = Tokenizer.from_str(tokenizer_json)
        self.context_length, self.clean, self.end_id = int(context_length), clean, end_id
        self.tok.enable_truncation(max_length=self.context_length)  # longest_first, right: transformers' call
        self.tok.enable_padding(direction=padding_side, pad_id=int(pad_id), length=self.context_length,
                                pad_token=self.tok.id_to_token(int(pad_id)) or "")

    @classmethod
    def load(cls, file: str | os.PathLike, **kwargs) -> HfTokenizer:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PkdError(f"cannot read the tokenizer {file}: {e}") from None
        try:
            return cls(text, **kwargs)
        except Exception as e:  # the tokenizers library's parse errors
            if isinstance(e, PkdError):
                raise
            raise PkdError(f"{file} is not a tokenizers tokenizer.json: {str(e).splitlines()[0]}") from None

    def cleaned(self, text: str) -> str:
        return clean_text(text, self.clean)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.tokenize(texts)[0]

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """(the token ids [N, context_length], the indices of the texts that were cut to fit the context)."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        if not texts:
            return out, []
        encodings = self.tok.encode_batch([self.cleaned(t) for t in texts])
        for i, enc in enumerate(encodings):
            out[i] = enc.ids
        return out, [i for i, enc in enumerate(encodings) if enc.overflowing]


def load_bundle_tokenizer(root: str | os.PathLike, spec: dict) -> ClipTokenizer | HfTokenizer:
    """The tokenizer a bundle's text encoder entry names (`type` clip-bpe, the default, or hf-tokenizers)."""
    file = Path(root) / spec["merges"]  # the vocabulary file: merges.txt.gz, or tokenizer.json
    if spec.get("type", "clip-bpe") == HF_TYPE:
        return HfTokenizer.load(file, context_length=spec["context_length"], clean=spec["clean"],
                                pad_id=spec["pad_id"], end_id=spec.get("end_id"),
                                padding_side=spec.get("padding_side", "right"))
    return ClipTokenizer.load(file, special_tokens=spec["special_tokens"], context_length=spec["context_length"],
                              clean=spec["clean"])


def cut_after_longest(tokens: np.ndarray, end_id: int) -> np.ndarray:
    """A batch [N, context] cut after the last end token of its longest text (at least start and end kept)."""
    ends = (tokens == end_id).argmax(axis=1)
    return np.ascontiguousarray(tokens[:, :max(2, int(ends.max()) + 1)])


def write_merges(merges: Sequence[tuple[str, str]], path: str | os.PathLike) -> None:
    """The merges in rank order, one `a b` line each, gzip (mtime 0: the same merges give the same bytes)."""
    data = "\n".join(f"{a} {b}" for a, b in merges).encode("utf-8")
    Path(path).write_bytes(gzip.compress(data, mtime=0))
