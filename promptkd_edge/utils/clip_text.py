"""What CLIP's tokenizer makes of a text before its vocabulary: open_clip's cleaning and its split into words,
numbers and punctuation runs. No torch; ftfy and regex from the [text] extra, with a stand-in key without them."""

from __future__ import annotations

import html
import unicodedata

from promptkd_edge.errors import PkdError

# open_clip's split of cleaned text into words, numbers and punctuation runs (whitespace only separates)
WORDS = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


def imports():
    """ftfy and regex (the [text] extra), or one line naming the extra."""
    try:
        import ftfy
        import regex
    except ImportError:
        raise PkdError("the text encoder needs ftfy and regex: pip install 'promptkd-edge[text]'") from None
    return ftfy, regex


def clean_text(text: str, clean: str = "lower") -> str:
    """Text as open_clip cleans it before splitting: ftfy's fix_text, HTML entities unescaped twice, runs of
    whitespace made one space, lower case (clean="lower"); "canonicalize" (SigLIP) also drops punctuation."""
    ftfy, _ = imports()
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if clean == "canonicalize":  # big_vision's: underscores read as spaces, ASCII punctuation dropped, lower case
        import string

        text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    text = " ".join(text.split())
    return text.lower() if clean == "lower" else text


def text_key(text: str) -> tuple[str, ...]:
    """What CLIP's tokenizer (clean="lower") makes of `text` before the context cut, without its vocabulary.

    With ftfy and regex (the [text] extra; open_clip brings them): the words, numbers and punctuation runs of the
    cleaned text. Two texts then have the same key exactly when they have the same token ids (a word's byte-pair
    tokens are a function of the word and spell it back), but for the special tokens' own text. Without them (a
    core install): NFKC, casefold and runs of whitespace as one space, a stand-in that catches case, Unicode forms
    and spacing, not HTML entities or spacing around punctuation (and casefold is a little stricter than lower)."""
    try:
        _, regex = imports()
    except PkdError:
        return (" ".join(unicodedata.normalize("NFKC", text).casefold().split()),)
    return tuple(regex.findall(WORDS, clean_text(text)))
