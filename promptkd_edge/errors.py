"""The one exception type for problems the user can fix (bad input, missing file, mismatch)."""


class PkdError(Exception):
    """A user-facing problem: the CLI prints its message as one line and exits with code 2."""


def first_line(e: BaseException, with_type: bool = True) -> str:
    """One line for an error raised by a library: 'Type: first line of its message' (or without the type);
    the type alone when the message is empty."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text.splitlines()[0]}" if with_type else text.splitlines()[0]
