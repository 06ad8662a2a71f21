"""The two kinds of failure the pipeline knows.

A `RowError` concerns one row: the row is recorded in the rejects file and the run goes on (or stops, with
`--strict`). A `FatalError` concerns the whole run (an unreadable source, an unknown format): the command
prints its message, one sentence, and exits non-zero.
"""


class RowError(Exception):
    """A row cannot be used; the message is the reason written to the rejects file."""


class FatalError(Exception):
    """The run cannot go on; the message is shown to the user as it is."""


def unexpected(error: Exception) -> str:
    """The reason of a row lost to an error nobody foresaw, the same at every stage.

    Example:
        >>> unexpected(KeyError("type"))
        "unexpected KeyError: 'type'"
    """
    return f"unexpected {type(error).__name__}: {error}"
