"""The rows the page shows, one card each: chosen at random (`n`, `seed`) or by id, and read alone.

Example:
    >>> cards = build_cards(detect("out/shards"), n=4, seed=0)  # doctest: +SKIP
    >>> [span.kind for span in cards[0].spans][:3]  # doctest: +SKIP
    ['masked', 'media', 'masked']
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from vlmdata.errors import FatalError
from vlmdata.inspect.columns import count_rows, find_ids, find_keys, rows_at
from vlmdata.inspect.detect import REJECTS, SHARDS, Target, input_data
from vlmdata.inspect.images import Thumbnail, thumbnail
from vlmdata.inspect.tokens import TRAINED, Span, has_closing_token, image_length, media_token_names, token_spans
from vlmdata.inspect.videos import VideoStrip, strip
from vlmdata.modalities import KINDS, MODALITIES
from vlmdata.models.registry import FAMILIES

# The kinds whose items the cards show as thumbnails, and the columns that hold them.
PICTURES = [modality for modality in MODALITIES if modality.pictures]
PICTURE_COLUMNS = [modality.column for modality in PICTURES]
# What a card shows of a row's input media: its pictures, and its videos as strips of frames.
SHOWN_COLUMNS = [*PICTURE_COLUMNS, "videos"]


@dataclass
class Card:
    """One sample as the page shows it.

    Attributes:
        position: the row's position in the dataset, or its line number in a rejects file.
        unit: what `position` counts: "row" or "line".
        id, source: where the row came from.
        details: (label, value) pairs shown under the title: tokens, stage, reason, media counts...
        thumbnails: the row's pictures (its images).
        videos: the row's videos, each a strip of its sampled frames.
        messages: a normalised row's conversation: (role, [(part type, text)]); media parts have their kind
            and number in place of text ("image 2").
        spans: a shard row's tokens.
        note: what could not be shown, and why.
    """

    position: int
    id: str
    source: str
    details: list[tuple[str, str]] = field(default_factory=list)
    thumbnails: list[Thumbnail] = field(default_factory=list)
    videos: list[VideoStrip] = field(default_factory=list)
    messages: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    note: str | None = None
    unit: str = "row"


def choose(total: int, n: int, seed: int) -> list[int]:
    """`n` positions out of `total` drawn with `seed`, in dataset order (all of them when `n >= total`)."""
    return sorted(random.Random(seed).sample(range(total), min(n, total)))


def build_cards(target: Target, n: int = 16, seed: int = 0, ids: list[str] | None = None) -> list[Card]:
    """The cards of the chosen rows: `ids` when given (in that order), else `n` rows drawn with `seed`.

    Raises:
        FatalError: an id of `ids` is not in the data.
    """
    if target.kind == REJECTS:
        return _reject_cards(target, n, seed, ids)
    positions = find_ids(target.data_files, ids) if ids else choose(count_rows(target.data_files), n, seed)
    if target.kind == SHARDS:
        return _shard_cards(target, positions)
    rows = rows_at(target.data_files, positions, ["messages", *SHOWN_COLUMNS, "id", "source"])
    return [_normalised_card(position, rows[position]) for position in positions]


def _thumbnails(row: dict[str, Any]) -> list[Thumbnail]:
    return [thumbnail(item) for modality in PICTURES for item in row.get(modality.column) or []]


def _strips(row: dict[str, Any]) -> list[VideoStrip]:
    return [strip(video) for video in row.get("videos") or []]


def _normalised_card(position: int, row: dict[str, Any]) -> Card:
    counts = dict.fromkeys(KINDS, 0)
    messages = []
    for message in row["messages"] or []:
        parts = []
        for part in message["content"] or []:
            kind = part["type"]
            if kind in counts:
                counts[kind] += 1
                parts.append((kind, f"{kind} {counts[kind]}"))
            else:
                parts.append((kind, part.get("text") or ""))
        messages.append((message["role"], parts))
    details = [(modality.label, str(counts[modality.kind])) for modality in MODALITIES]
    return Card(position, str(row["id"]), str(row["source"]), details, _thumbnails(row), _strips(row), messages)


def _shard_cards(target: Target, positions: list[int]) -> list[Card]:
    tokenizer = _tokenizer(target)
    family = FAMILIES.get(target.metadata.get("model", {}).get("family", ""))
    media = media_token_names(tokenizer, family.media_tokens if family else ())
    item_tokens = None if not media or has_closing_token(media) else image_length(_processor(target))
    rows = rows_at(target.data_files, positions, ["input_ids", "labels", "length", "id", "source"])
    cards = []
    for position in positions:
        row = rows[position]
        spans = token_spans(row["input_ids"], row["labels"], tokenizer, media, item_tokens)
        trained = sum(span.tokens for span in spans if span.kind == TRAINED)
        details = [("tokens", str(row["length"])), ("trained", str(trained))]
        cards.append(Card(position, str(row["id"]), str(row["source"]), details, spans=spans))
    _add_input_images(target, cards)
    return cards


def _tokenizer(target: Target):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(target.processor_dir))
    except Exception as error:  # transformers raises many kinds; all mean the saved processor is unusable
        raise FatalError(f"Cannot load the tokenizer saved in {str(target.processor_dir)!r}: {error}") from None


def _processor(target: Target):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(target.processor_dir))
    except Exception:  # without the processor the page still shows, only with adjacent images in one chip
        return None


def _add_input_images(target: Target, cards: list[Card]) -> None:
    # Shards keep pixel tensors in each family's own layout (patches, tiles), not pictures: the images shown are
    # the input data's originals, found by the row's (source, id).
    source = input_data(target)
    if source is None:
        for card in cards:
            card.note = "images not shown: the input data recorded in vlmdata.json was not found"
        return
    positions = find_keys(source.data_files, {(card.source, card.id) for card in cards})
    rows = rows_at(source.data_files, positions.values(), SHOWN_COLUMNS)
    for card in cards:
        position = positions.get((card.source, card.id))
        if position is None:
            card.note = f"images not shown: row not found in the input data {str(source.path)!r}"
        else:
            card.thumbnails = _thumbnails(rows[position])
            card.videos = _strips(rows[position])


def _reject_cards(target: Target, n: int, seed: int, ids: list[str] | None) -> list[Card]:
    with open(target.rejects_file, encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    if ids:
        by_id = {str(record["id"]): number for number, record in reversed(list(enumerate(records)))}
        missing = [row_id for row_id in ids if row_id not in by_id]
        if missing:
            raise FatalError(f"No reject has the id {', '.join(repr(row_id) for row_id in missing)}.")
        chosen = [by_id[row_id] for row_id in ids]
    else:
        chosen = choose(len(records), n, seed)
    cards = []
    for number in chosen:
        record = records[number]
        details = [("stage", str(record["stage"])), ("reason", str(record["reason"]))]
        cards.append(Card(number + 1, str(record["id"]), str(record["source"]), details, unit="line"))
    return cards
