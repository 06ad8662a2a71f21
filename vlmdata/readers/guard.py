"""The guard around every reader's per-row code, the same as the one around converting a row.

A reader meets rows nobody foresaw; whatever goes wrong while it builds one row must cost that row, recorded
with its reason, never the run.
"""

from __future__ import annotations

from typing import Callable

from vlmdata.errors import FatalError, unexpected
from vlmdata.rows import RawRow


def guarded_row(build: Callable[[], RawRow], key: str, where: str, source: str, base_dir: str | None) -> RawRow:
    """The row `build` makes, or, when it raises anything but `FatalError`, a row with the error instead.

    Args:
        build: makes the row.
        key: the row's id should `build` fail ("<file name>:<position>").
        where: the row's position in words, the start of the error ("line 7", "row 3").
        source: where the row came from.
        base_dir: what the row's relative media paths resolve against.

    Example:
        >>> guarded_row(lambda: {}["messages"], "a.jsonl:1", "line 1", "a.jsonl", None).error
        "line 1: unexpected KeyError: 'messages'"
    """
    try:
        return build()
    except FatalError:  # a problem with the whole source, which must stop the run
        raise
    except Exception as exc:
        return RawRow(key, source, None, base_dir, f"{where}: {unexpected(exc)}")
