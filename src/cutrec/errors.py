"""The one exception type for user mistakes: the CLI prints its message on one line and exits non-zero."""


class CutrecError(ValueError):
    """A user-facing error. The message names the bad value and says how to fix it."""
