"""Which stages of a recipe are done: each output folder's `vlmdata.json` keeps the settings it was made with.

A stage's settings are its command's resolved options (the recipe's values and every default), less those
that change how it runs but never what it writes. `vlmdata run` stores them, with their hash, in the output's
`vlmdata.json` under "recipe" once the stage is complete; the next run skips the stage when the hash is the
same, and otherwise says which settings changed.

Example:
    >>> settings = stage_settings({"lora_r": 16, "quiet": True, "sources": ("a.parquet",)})
    >>> settings
    {'lora_r': 16, 'sources': ['a.parquet']}
    >>> len(fingerprint(settings))
    64
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmdata.folders import METADATA_FILE, PARTIAL_SUFFIX

RECORD_KEY = "recipe"
TRAIN_PROGRESS = ("loss.jsonl", "checkpoints")
# The output is the same whatever these are: how many processes where, whether a bar is drawn, what to do with
# an existing folder.
VOLATILE = frozenset({"overwrite", "quiet", "num_proc", "engine", "ray_address", "num_workers", "log_rows", "resume",
                      "resume_from"})


def stage_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a stage's output, from its command's resolved options, in JSON form."""
    kept = {name: value for name, value in options.items() if name not in VOLATILE}
    template = options.get("chat_template")
    if isinstance(template, str) and os.path.isfile(template):  # an edited template file makes other shards
        kept["chat_template_sha256"] = hashlib.sha256(Path(template).read_bytes()).hexdigest()
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A hash of the settings that any change to them changes."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def why_stale(out_dir: str | Path, stage: str, settings: Mapping[str, Any]) -> str | None:
    """Why `stage` must run: None when `out_dir` holds its complete output, made with these settings.

    Every stage writes `vlmdata.json` last, so a folder with that file is complete.
    """
    # Imported here: arrow_folder imports datasets, which the command line would otherwise load just to start.

    path = Path(out_dir) / METADATA_FILE
    if not path.is_file():
        # convert and tokenize build OUT.partial and rename it when done: one left over means a killed run.
        partial = Path(out_dir).with_name(Path(out_dir).name + PARTIAL_SUFFIX)
        if partial.exists():
            return f"its output is not complete ({partial} was left by an interrupted run)"
        return "its output is not complete" if Path(out_dir).exists() else "it has not run yet"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{path} cannot be read"
    if metadata.get("stage") != stage:
        return f"{out_dir} holds the output of another stage"
    record = metadata.get(RECORD_KEY) or {}
    if record.get("fingerprint") == fingerprint(settings):
        return None
    if "settings" not in record:
        return "its output was not made by a recipe"
    return f"its settings changed ({_differences(record['settings'], settings)})"


def may_replace(out_dir: str | Path, stage: str) -> bool:
    """Whether a run may replace `out_dir`: it is absent or empty, or holds an output of `stage`.

    A folder of anything else (a typo in the recipe, a folder of the user's) is never deleted.
    """
    folder = Path(out_dir)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return True
    try:
        return json.loads((folder / METADATA_FILE).read_text(encoding="utf-8")).get("stage") == stage
    except (OSError, ValueError, AttributeError):
        # Training writes vlmdata.json last; an interrupted run leaves its loss log and checkpoints.
        return stage == "train" and any((folder / name).exists() for name in TRAIN_PROGRESS)


def record_settings(out_dir: str | Path, settings: Mapping[str, Any]) -> None:
    """Adds the settings and their hash to the complete output's `vlmdata.json`."""
    path = Path(out_dir) / METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata[RECORD_KEY] = {"fingerprint": fingerprint(settings), "settings": dict(settings)}
    # Replaced in one step: a kill while writing must not leave a folder that reads as made elsewhere.
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    os.replace(scratch, path)


def _differences(before: Mapping[str, Any], now: Mapping[str, Any], shown: int = 3) -> str:
    changed = [name for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
    parts = [f"{name}: {_show(before.get(name))} -> {_show(now.get(name))}" for name in changed[:shown]]
    if len(changed) > shown:
        parts.append(f"and {len(changed) - shown} more")
    return ", ".join(parts)


def _show(value: Any) -> str:
    return json.dumps(value)
