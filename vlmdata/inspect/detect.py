"""What a path given to `vlmdata inspect` holds: a normalised dataset, token shards, or a rejects file.

Example:
    >>> target = detect("out/shards")  # doctest: +SKIP
    >>> target.kind, target.metadata["chat_template"]  # doctest: +SKIP
    ('shards', 'gemma3')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlmdata.errors import FatalError
from vlmdata.folders import METADATA_FILE, PROCESSOR_DIR, REJECTS_FILE

NORMALISED, SHARDS, REJECTS = "normalised", "shards", "rejects"
DESCRIPTIONS = {NORMALISED: "normalised dataset", SHARDS: "token shards", REJECTS: "rejects file"}
REJECT_KEYS = {"source", "id", "stage", "reason"}


@dataclass(frozen=True)
class Target:
    """A path to inspect, and where its parts are.

    Attributes:
        kind: NORMALISED, SHARDS or REJECTS.
        path: the folder (or the rejects file) given.
        data_files: the Arrow files of a dataset folder, in row order; empty for a rejects file.
        rejects_file: the rejects file given, or the folder's own one if it has one.
        metadata: the folder's `vlmdata.json`, or {} when it has none.
    """

    kind: str
    path: Path
    data_files: tuple[Path, ...] = ()
    rejects_file: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]

    @property
    def processor_dir(self) -> Path:
        return self.path / PROCESSOR_DIR


def detect(path: str | Path) -> Target:
    """Finds what `path` holds from its files and column names, reading no rows.

    Raises:
        FatalError: the path is none of the three.
    """
    path = Path(path)
    if path.is_file():
        return Target(REJECTS, path, rejects_file=_checked_rejects_file(path))
    if not path.is_dir():
        raise FatalError(f"{str(path)!r} does not exist.")
    rejects = path / REJECTS_FILE
    rejects_file = rejects if rejects.is_file() else None
    if not (path / "state.json").is_file():
        if rejects_file is not None:
            return Target(REJECTS, path, rejects_file=_checked_rejects_file(rejects_file))
        raise FatalError(f"{str(path)!r} is not a normalised dataset, token shards or a folder with {REJECTS_FILE}.")
    data_files = _data_files(path)
    columns = set(_schema(data_files[0]).names)
    metadata = _metadata(path)
    if {"input_ids", "labels"} <= columns:
        return Target(SHARDS, path, data_files, rejects_file, metadata)
    if "messages" in columns:
        return Target(NORMALISED, path, data_files, rejects_file, metadata)
    raise FatalError(
        f"{str(path)!r} holds a dataset with columns {', '.join(sorted(columns))}, "
        "neither a normalised dataset (messages) nor token shards (input_ids, labels)."
    )


def input_data(target: Target) -> Target | None:
    """The normalised dataset that token shards were made from, when it is still where `vlmdata.json` says.

    A relative path is tried from the working folder, then from the shard folder's parent, where it usually
    sits beside the shards.
    """
    recorded = target.metadata.get("arguments", {}).get("data")
    if not recorded:
        return None
    candidates = [Path(recorded)]
    if not Path(recorded).is_absolute():
        candidates.append(target.path.parent / recorded)
    for candidate in candidates:
        try:
            found = detect(candidate)
        except FatalError:
            continue
        if found.kind == NORMALISED:
            return found
    return None


def _data_files(folder: Path) -> tuple[Path, ...]:
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = tuple(folder / entry["filename"] for entry in state["_data_files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FatalError(f"Cannot read the dataset state of {str(folder)!r}: {error}") from None
    missing = [str(file) for file in files if not file.is_file()]
    if not files or missing:
        raise FatalError(f"{str(folder)!r} is incomplete: missing {', '.join(missing) or 'data files'}.")
    return files


def _schema(file: Path) -> pa.Schema:
    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).schema
    except (OSError, pa.ArrowInvalid) as error:
        raise FatalError(f"Cannot read {str(file)!r} as Arrow: {error}") from None


def _metadata(folder: Path) -> dict[str, Any]:
    file = folder / METADATA_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise FatalError(f"{str(file)!r} is not valid JSON: {error}") from None


def _checked_rejects_file(file: Path) -> Path:
    # The first line is enough to tell a rejects file from any other file passed by mistake.
    try:
        with open(file, encoding="utf-8") as lines:
            first = next((line for line in lines if line.strip()), "")
        record = json.loads(first) if first else {}
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise FatalError(f"{str(file)!r} is not a rejects file (JSON lines): {error}") from None
    if first and not (isinstance(record, dict) and REJECT_KEYS <= set(record)):
        raise FatalError(f"{str(file)!r} is not a rejects file: its lines need {', '.join(sorted(REJECT_KEYS))}.")
    return file
