"""The message schema: turns a reader's record into one normalised conversation, or says why it cannot.

The normalised form keeps the conversation's text and the position of every media part, and moves the media
payloads out of the messages into one ordered list per kind (`vlmdata.modalities`): the k-th image part of
the conversation, in reading order, is ``media["image"][k]``; likewise for audio. `NORMALISED_FEATURES` is
the normalised dataset convert writes and tokenize reads.

Example:
    >>> conversation = normalise({
    ...     "messages": [
    ...         {"role": "user", "content": "What is this?"},
    ...         {"role": "assistant", "content": "A bee."},
    ...     ],
    ...     "images": ["bee.jpg"],
    ... })
    >>> conversation.messages[0]["content"]
    [{'type': 'image', 'text': None}, {'type': 'text', 'text': 'What is this?'}]
    >>> conversation.images
    [{'path': 'bee.jpg'}]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasets

from vlmdata.errors import RowError
from vlmdata.media.loader import ADDRESS_KEYS
from vlmdata.modalities import KINDS, MODALITIES, Modality, modality

ROLES = ("system", "user", "assistant", "tool")
# Role names other formats use for the same thing.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "model": "assistant", "function": "tool"}

MESSAGES_FEATURE = datasets.List(
    {
        "role": datasets.Value("string"),
        "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
    }
)
# The columns of the normalised dataset: messages, one column per modality in reading order, id, source.
NORMALISED_FEATURES = datasets.Features(
    {
        "messages": MESSAGES_FEATURE,
        **{modality.column: datasets.List(modality.feature) for modality in MODALITIES},
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
)


def undecoded_features(features: datasets.Features) -> datasets.Features:
    """`features` with each media column it has read as stored (images as {bytes, path}, not PIL images):
    what `vlmdata.modalities.processor_messages` takes."""
    as_stored = {
        modality.column: datasets.List(modality.undecoded_feature)
        for modality in MODALITIES
        if modality.column in features
    }
    return datasets.Features({**features, **as_stored})



def check_assistant_content(messages: list[dict[str, Any]]) -> None:
    """Refuses a conversation whose assistant turns are all empty: it would train nothing but end-of-turn
    tokens. One empty turn among others is kept, as the conversation had it.

    Raises:
        RowError: no assistant turn holds text or media.
    """
    def holds_something(part: dict[str, Any]) -> bool:
        return part.get("type") != "text" or bool((part.get("text") or "").strip())

    replies = [message for message in messages if message["role"] == "assistant"]
    if replies and not any(holds_something(part) for message in replies for part in message["content"]):
        raise RowError(f"every assistant turn is empty ({len(replies)} of them)")


@dataclass
class Conversation:
    """One conversation in normalised form.

    Attributes:
        messages: ``[{"role": str, "content": [{"type": str, "text": str | None}]}]``; media parts carry no payload.
        media: for each kind (`vlmdata.modalities.KINDS`), the payload of each part of that kind in reading
            order, e.g. ``{"image": [{"path": "a.jpg"}, {"image": PIL}], "audio": []}``.
    """

    messages: list[dict[str, Any]]
    media: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.media["image"]

    @property
    def audios(self) -> list[dict[str, Any]]:
        return self.media["audio"]


def normalise(record: dict[str, Any]) -> Conversation:
    """Normalises one record of the extended OpenAI message format.

    Args:
        record: a row with ``messages`` and optionally media columns (each modality's `source_columns`:
            ``images``/``image``, ``audios``/``audio``).

    Returns:
        The conversation, with every media part's payload in ``media``.

    Raises:
        RowError: the row cannot be used; the message says which message or part and why.
    """
    messages = record.get("messages")
    if messages is None:
        raise RowError("the row has no messages")
    if not isinstance(messages, (list, tuple)):
        raise RowError(f"messages is a {type(messages).__name__}, expected a list")
    if not messages:
        raise RowError("messages is empty")

    parsed = [_parse_message(i, message) for i, message in enumerate(messages)]
    for kind in MODALITIES:
        _fill_from_column(parsed, kind, _media_column(record, kind))
    if not any(message["role"] == "assistant" for message in parsed):
        raise RowError("the conversation has no assistant message")
    check_assistant_content(parsed)

    conversation = Conversation(messages=[])
    for message in parsed:
        content = []
        for part in message["content"]:
            if part["type"] == "text":
                content.append({"type": "text", "text": part["text"]})
            else:
                content.append({"type": part["type"], "text": None})
                # The part's own options (a video's "num_frames") join its payload, wherever that came from.
                options = part.get("options")
                payload = {**part["payload"], **options} if options else part["payload"]
                conversation.media[part["type"]].append(payload)
        conversation.messages.append({"role": message["role"], "content": content})
    return conversation


def _parse_message(position: int, message: Any) -> dict[str, Any]:
    where = f"message {position}"
    if not isinstance(message, dict):
        raise RowError(f"{where} is a {type(message).__name__}, expected an object with role and content")
    message = _drop_nulls(message)
    role = message.get("role")
    if role is None:
        raise RowError(f"{where} has no role")
    if not isinstance(role, str):
        raise RowError(f"{where}: role is a {type(role).__name__}, expected a string")
    role = ROLE_ALIASES.get(role.strip().lower(), role.strip().lower())
    if role not in ROLES:
        raise RowError(f"{where}: unknown role {message['role']!r} (expected one of {', '.join(ROLES)})")

    content = message.get("content", [])
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    elif isinstance(content, dict):
        content = [content]
    elif not isinstance(content, (list, tuple)):
        raise RowError(f"{where}: content is a {type(content).__name__}, expected a string or a list of parts")
    parts = [_parse_part(f"{where}, part {i}", part) for i, part in enumerate(content)]
    return {"role": role, "content": parts}


def _parse_part(where: str, part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise RowError(f"{where} is a {type(part).__name__}, expected an object with a type")
    part = _openai_part_to_extended(_drop_nulls(part))
    kind = part.get("type") or _infer_type(where, part)
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise RowError(f"{where}: text is {_describe(text)}, expected a string")
        return {"type": "text", "text": text}
    if kind not in KINDS:
        expected = f"text, {', '.join(KINDS[:-1])} or {KINDS[-1]}"
        raise RowError(f"{where}: unsupported part type {kind!r} (expected {expected})")

    payload = {key: part[key] for key in modality(kind).payload_keys if key in part}
    if len(payload) > 1:
        raise RowError(f"{where}: {kind} part has several sources ({', '.join(payload)}); give exactly one")
    index = part.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise RowError(f"{where}: {kind} index is {_describe(index)}, expected an integer")
    options = {key: part[key] for key in modality(kind).option_keys if key in part}
    return {"type": kind, "payload": payload or None, "index": index, "where": where, "options": options}


def _openai_part_to_extended(part: dict[str, Any]) -> dict[str, Any]:
    """Maps OpenAI's own part shapes (image_url, input_audio) onto the extended format's keys."""
    kind = part.get("type")
    if kind == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        key = "base64" if isinstance(url, str) and url.startswith("data:") else "url"
        return {"type": "image", key: url}
    if kind == "input_audio":
        value = part.get("input_audio")
        data = value.get("data") if isinstance(value, dict) else value
        return {"type": "audio", "base64": data}
    return part


def _infer_type(where: str, part: dict[str, Any]) -> str | None:
    """The type of a part that states none: text, the kind whose own key it has ({"audio": ...}), or the kind
    that takes bare addresses ({"path": "a.jpg"} is an image)."""
    if "text" in part:
        return "text"
    named = [modality.kind for modality in MODALITIES if modality.kind in part]
    if len(named) > 1:
        raise RowError(f"{where}: the part has no type and holds {' and '.join(named)}; give its type")
    if named:
        return named[0]
    if any(key in part for key in ADDRESS_KEYS):
        return next(modality.kind for modality in MODALITIES if modality.takes_bare_addresses)
    return None


def _media_column(record: dict[str, Any], modality: Modality) -> list[Any]:
    for name in modality.source_columns:
        value = record.get(name)
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        return [modality.payload_from_column_value(v) for v in values if v is not None]
    return []


def _fill_from_column(messages: list[dict[str, Any]], modality: Modality, column: list[dict[str, Any]]) -> None:
    """Gives each payload-less media part its media from the row's column.

    Parts with an ``index`` (the llava-instruct-mix layout) take that entry; the other bare parts take the
    entries no index claimed, in order. Entries still unclaimed are placed at the start of the first user
    message, so that every image of the row is used.
    """
    kind = modality.kind
    parts = [p for m in messages for p in m["content"] if p["type"] == kind]
    bare = [p for p in parts if p["payload"] is None]
    claimed = set()
    for part in bare:
        if part["index"] is not None:
            if not 0 <= part["index"] < len(column):
                raise RowError(
                    f"{part['where']}: {kind} index {part['index']} is out of range "
                    f"(the {modality.column} column has {len(column)})"
                )
            part["payload"] = column[part["index"]]
            claimed.add(part["index"])
    unclaimed = [entry for i, entry in enumerate(column) if i not in claimed]
    in_order = [p for p in bare if p["index"] is None]
    if len(in_order) > len(unclaimed):
        raise RowError(
            f"{len(bare)} {kind} parts have no {kind} of their own but the {modality.column} column "
            f"has {len(column)}"
        )
    for part, entry in zip(in_order, unclaimed):
        part["payload"] = entry
    leftovers = unclaimed[len(in_order):]
    if not leftovers:
        return
    first_user = next((m for m in messages if m["role"] == "user"), None)
    if first_user is None:
        raise RowError(f"{len(leftovers)} {kind}(s) in the column but no user message to place them in")
    placed = [{"type": kind, "payload": entry, "index": None, "where": "column"} for entry in leftovers]
    first_user["content"][:0] = placed


def _drop_nulls(mapping: dict[str, Any]) -> dict[str, Any]:
    # Arrow adds every key seen in any row to every row, with null values, when it merges schemas.
    return {key: value for key, value in mapping.items() if value is not None}


def _describe(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"
