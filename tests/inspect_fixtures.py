"""Real data for the inspect tests: the bundled JSONL fixture plus hostile rows, converted and tokenized once per
test session with the tiny Gemma 3 checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.fixture_data import build_once
from tests.tokenize_fixtures import drawn_image, tiny_model
from vlmdata.convert import convert
from vlmdata.tokenize import tokenize

# Text that a browser would run if the page put it in as markup.
SCRIPT = "<script>document.body.setAttribute('data-pwned', 'script')</script>"
IMG_ONERROR = "<img src=x onerror=\"document.body.setAttribute('data-pwned', 'img')\">"
HOSTILE_ID = "<b>hostile</b> & <i>id</i>"
HOSTILE_REPLY = f"Plain <b>bold</b> & {SCRIPT} end."


@dataclass(frozen=True)
class InspectData:
    """The folders made from the fixtures.

    Attributes:
        normalised: the output of convert (with one rejected row in its rejects.jsonl).
        shards: the output of tokenize with the tiny gemma3 model (the audio row is rejected).
    """

    normalised: Path
    shards: Path


_built: dict[str, InspectData] = {}


def hostile_rows(folder: Path) -> list[dict]:
    """Rows whose text is markup, and one without an assistant message (rejected by convert)."""
    picture = drawn_image(folder / "picture.png", 80, 60, (200, 60, 30))
    return [
        {
            "id": HOSTILE_ID,
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": picture},
                                             {"type": "text", "text": f"Look: {SCRIPT} {IMG_ONERROR}"}]},
                {"role": "assistant", "content": HOSTILE_REPLY},
            ],
        },
        {"id": "unanswered", "messages": [{"role": "user", "content": "Is anyone there?"}]},
    ]


def inspect_data(tmp_path_factory) -> InspectData:
    """Builds the normalised dataset and the token shards once for the whole test session."""
    if "data" not in _built:
        root = build_once(tmp_path_factory)
        folder = tmp_path_factory.mktemp("inspect")
        extra = folder / "hostile.jsonl"
        extra.write_text("".join(json.dumps(row) + "\n" for row in hostile_rows(folder)), encoding="utf-8")
        normalised, shards = folder / "normalised", folder / "shards"
        convert([str(root / "jsonl" / "conversations.jsonl"), str(extra)], normalised, progress=False)
        tokenize(normalised, shards, model=str(tiny_model("gemma3")), progress=False)
        _built["data"] = InspectData(normalised, shards)
    return _built["data"]
