"""Text from users' files (class names, image paths, names inside a bundle someone else made) shown on a terminal.

rich reads `[...]` as markup: a class named `[/bold] cat` would end a style that was never opened (MarkupError) and
a path holding `[red]` would print as another name. Control characters (an ESC sequence in a file name, a newline
in a class name) would move the cursor or break a table line. `shown` escapes the markup and makes control
characters visible as `\\xNN` escapes; `--json` output keeps the exact strings.
"""

from __future__ import annotations

import re
from typing import Any

# C0, DEL and C1 controls, and the bidirectional overrides that make text display in another order than it is
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: Any) -> str:
    """`text` with every control character (C0, DEL, C1, newlines and tabs too; bidi overrides) written as an escape
    (`\\x1b`, `\\u202e`)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        str(text))


_TAG_AT = re.compile(r"\[[a-z#/@][^[]*?]")  # where rich's markup parser sees a tag (rich.markup.RE_TAGS)


def shown(text: Any) -> str:
    """`text` for rich markup: control characters visible, and printed exactly as written.

    rich.markup.escape is not enough: rich also drops the backslash of a `\\[` that is not a tag. So every `[` is
    escaped, with the backslashes before it doubled where rich sees a tag (it halves them there) and kept where it
    does not. Put no markup tag right after the result: a trailing backslash would escape it.
    """
    s = visible(text)
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        j = i
        while j < n and s[j] == "\\":
            j += 1
        k = j - i  # backslashes before s[j]
        if j == n:
            out.append("\\" * k)
            break
        if s[j] == "[":
            out.append("\\" * (2 * k + 1 if _TAG_AT.match(s, j) else k + 1) + "[")
        else:
            out.append("\\" * k + s[j])
        i = j + 1
    return "".join(out)
