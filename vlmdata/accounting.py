"""Keeping every row accounted for: the rejects file, the counts by reason, `--strict`, and length statistics."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from vlmdata.errors import FatalError
from vlmdata.rows import Reject


class RejectLog:
    """Writes rejected rows to a JSON-lines file and counts them by reason; with `strict`, the first one stops the run.

    Example:
        >>> with RejectLog(folder / "rejects.jsonl") as rejects:  # doctest: +SKIP
        ...     rejects.add(Reject("data.jsonl", "data.jsonl:7", "read", "line 7: invalid JSON"))
        >>> rejects.by_reason  # doctest: +SKIP
        Counter({'read: line N: invalid JSON': 1})
    """

    def __init__(self, path: str | Path, strict: bool = False):
        self.path = Path(path)
        self.strict = strict
        self.by_reason: Counter[str] = Counter()
        self._file = None

    def __enter__(self) -> "RejectLog":
        # A reason may quote text with no UTF-8 form (a lone surrogate from JSON): it is written escaped,
        # which JSON reads back as the same text, rather than stopping the run.
        self._file = open(self.path, "w", encoding="utf-8", errors="backslashreplace")
        return self

    def __exit__(self, *exc_info) -> None:
        self._file.close()

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def add(self, reject: Reject) -> None:
        """Records one rejected row, or raises FatalError naming it when the run is strict."""
        if self.strict:
            raise FatalError(f"row {reject.id} of {reject.source} was rejected ({reject.stage}): {reject.reason}")
        self._file.write(json.dumps(reject.to_dict(), ensure_ascii=False) + "\n")
        self.by_reason[f"{reject.stage}: {reason_category(reject.reason)}"] += 1


def reason_category(reason: str) -> str:
    """Groups reasons that differ only in names, URLs, paths and numbers, for the summary's rejects-by-reason
    table: ten thousand rows pointing at one dead server make one line there, not ten thousand.

    Example:
        >>> reason_category("image 2: cannot read 'a/b.jpg': no such file")
        "image N: cannot read '…': no such file"
        >>> reason_category("image 0: GET http://host:8000/cat.png failed: 404 Not Found")
        'image N: GET … failed: N Not Found'
    """
    reason = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    reason = re.sub(r"\b[a-z][a-z0-9+.-]*://[^\s,;)]+", "…", reason, flags=re.IGNORECASE)
    reason = re.sub(r"(?<![\w.])/[^\s,;)]+", "…", reason)
    return re.sub(r"\d+", "N", reason)


PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def length_percentiles(lengths: Counter) -> dict[str, int]:
    """p50, p90, p99, min and max of a histogram of lengths (nearest rank); {} when it is empty.

    A histogram, so that memory grows with the number of distinct lengths, not of rows.

    Example:
        >>> length_percentiles(Counter({10: 5, 20: 4, 90: 1}))
        {'p50': 10, 'p90': 20, 'p99': 90, 'min': 10, 'max': 90}
    """
    total = sum(lengths.values())
    if not total:
        return {}
    ordered = sorted(lengths.items())
    result, seen, wanted = {}, 0, list(PERCENTILES)
    for length, count in ordered:
        seen += count
        while wanted and seen >= wanted[0][1] * total:
            result[wanted.pop(0)[0]] = length
    result["min"], result["max"] = ordered[0][0], ordered[-1][0]
    return result
