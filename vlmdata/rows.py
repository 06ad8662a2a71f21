"""What flows between the stages of `convert`: rows as readers find them, and rejected rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


def storable_text(text: str) -> str:
    """`text` as Arrow can store it: a name that is not UTF-8 on disk reaches Python with surrogates
    ('bad\\udcff.png'), which are kept as a visible escape ('bad\\\\udcff.png') rather than costing the row.

    Example:
        >>> storable_text("bad\\udcff.png")
        'bad\\\\udcff.png'
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class RawRow:
    """One row as a reader found it, before normalisation.

    Attributes:
        id: the row's key, stable across runs (the row's own id, or "<file>:<index>").
        source: where the row came from: a file path, or a dataset id with its split.
        record: the row's fields, e.g. ``{"messages": [...], "images": [...]}``. ``None`` when the reader could
            not parse the row, in which case ``error`` says why.
        base_dir: the folder that relative media paths in this row resolve against.
        error: why the reader could not produce the row (bad JSON, a missing zip member...).
    """

    id: str
    source: str
    record: dict[str, Any] | None
    base_dir: str | None = None
    error: str | None = None


@dataclass
class Reject:
    """A row that was not written, and why: one line of the rejects file."""

    source: str
    id: str
    stage: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)
