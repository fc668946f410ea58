"""The one exception type for problems the user can fix (bad input, missing file, mismatch)."""


class PkdError(Exception):
    """A user-facing problem: the CLI prints its message as one line and exits with code 2."""
