"""The kinds of media besides text, each declared once (`Modality`), and the steps of the stages that go
through all of them: normalising a row's parts, loading their media (convert), and handing the stored items
to the processor (tokenize).

Adding a kind means adding its module beside `image.py`, `video.py` and `audio.py`, and its line in `MODALITIES`.

Example:
    >>> [(modality.kind, modality.column) for modality in MODALITIES]
    [('image', 'images'), ('video', 'videos'), ('audio', 'audios')]
    >>> modality("audio").label
    'audio clips'
"""

from __future__ import annotations

from typing import Any

from vlmdata.errors import RowError, unexpected
from vlmdata.media import MediaLoader
from vlmdata.modalities.audio import AUDIO
from vlmdata.modalities.base import Modality
from vlmdata.modalities.image import IMAGE
from vlmdata.modalities.video import VIDEO

# Reading order: the normalised dataset's columns, convert's loading and every summary follow it.
MODALITIES: tuple[Modality, ...] = (IMAGE, VIDEO, AUDIO)
KINDS = tuple(modality.kind for modality in MODALITIES)
_BY_KIND = {modality.kind: modality for modality in MODALITIES}

__all__ = ["KINDS", "MODALITIES", "MediaError", "Modality", "load_media", "media_counts", "modality",
           "processor_messages"]


def modality(kind: str) -> Modality:
    """The modality of `kind` ("image", "audio").

    Raises:
        KeyError: no modality has that kind.
    """
    if kind not in _BY_KIND:
        raise KeyError(f"no modality {kind!r} (known: {', '.join(KINDS)})")
    return _BY_KIND[kind]


class MediaError(RowError):
    """A row's media item could not be loaded.

    Attributes:
        kind: the kind of the item, which convert records as the reject's stage.
    """

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def load_media(conversation, base_dir: str | None, loader: MediaLoader) -> dict[str, list[dict[str, Any]]]:
    """Loads every media payload of a normalised conversation, kind by kind in `MODALITIES` order.

    Args:
        conversation: a `vlmdata.schema.Conversation`.
        base_dir: the folder the row's relative paths resolve against (`RawRow.base_dir`).
        loader: the process's `MediaLoader`.

    Returns:
        The stored items by column: ``{"images": [...], "audios": [...]}``, every column present.

    Raises:
        MediaError: an item cannot be loaded. Its reason names the item ("image 0: cannot decode image ...");
            an error no loader foresaw (a decoder's own bug) is "unexpected KeyError: ...", so that it costs the
            row, not the run.
    """
    columns = {}
    for modality in MODALITIES:
        stored = []
        for position, payload in enumerate(conversation.media[modality.kind]):
            try:
                stored.append(modality.load(payload, base_dir, loader))
            except RowError as error:
                raise MediaError(modality.kind, f"{modality.kind} {position}: {error}") from error
            except Exception as error:
                raise MediaError(modality.kind, unexpected(error)) from error
        columns[modality.column] = stored
    return columns


def media_counts(record: dict[str, Any]) -> dict[str, int]:
    """How many items of each kind a normalised record holds, by column: ``{"images": 2, "audios": 0}``."""
    return {modality.column: len(record.get(modality.column) or []) for modality in MODALITIES}


def processor_messages(
    row: dict[str, Any], family, processor, video_as_images: bool = False
) -> tuple[list[dict], dict[str, int]]:
    """A normalised row's messages in the processor's format, each media part holding its stored item.

    Args:
        row: a row of the normalised dataset, its media columns read with each modality's
            `undecoded_feature` (images as {bytes, path}); columns it lacks count as empty.
        family: the model family (`vlmdata.models.registry.Family`): parts of a kind it does not take are refused.
        processor: the `transformers` processor the messages are for.
        video_as_images: for a family that takes images but no video, hand each video as its frames, one image
            part each, in order; a family that takes videos is given them as videos all the same.

    Returns:
        The messages, and the number of items used, by column: ``{"images": 1, "audios": 0}``.

    Raises:
        RowError: a part of a kind the family does not take, a part without its item, an item that cannot be
            decoded, items no part uses, or images beside videos for a family whose forward cannot take both.
    """
    stored = {modality.kind: row.get(modality.column) or [] for modality in MODALITIES}
    used = dict.fromkeys(KINDS, 0)
    messages = []
    for message in row["messages"]:
        content = []
        for part in message["content"]:
            kind = part["type"]
            if kind == VIDEO.kind and video_as_images and not VIDEO.taken_by(family) and IMAGE.taken_by(family):
                content += _video_frames(stored[kind], used[kind])
                used[kind] += 1
            elif kind in KINDS:
                content.append(_processor_part(_BY_KIND[kind], stored[kind], used[kind], family, processor))
                used[kind] += 1
            else:
                content.append({"type": "text", "text": part.get("text") or ""})
        messages.append({"role": message["role"], "content": content})
    unmatched = [modality for modality in MODALITIES if used[modality.kind] != len(stored[modality.kind])]
    if unmatched:
        parts = " and ".join(f"{used[modality.kind]} {modality.kind}" for modality in unmatched)
        items = " and ".join(f"{len(stored[modality.kind])} {modality.column}" for modality in unmatched)
        raise RowError(f"{parts} parts but {items}")
    if used[IMAGE.kind] and used[VIDEO.kind] and not family.images_beside_videos:
        raise RowError("images and videos in one row, which this model family's forward cannot take together")
    return messages, {modality.column: used[modality.kind] for modality in MODALITIES}


def _processor_part(modality: Modality, stored: list, position: int, family, processor) -> dict[str, Any]:
    kind = modality.kind
    if not modality.taken_by(family):
        article = "an" if kind[0] in "aeiou" else "a"
        hint = " (--video-as-images hands its frames as images)" if kind == VIDEO.kind and IMAGE.taken_by(family) else ""
        raise RowError(f"{article} {kind} part, but this model family takes no {kind}{hint}")
    if position >= len(stored):
        raise RowError(f"{kind} part {position} has no {modality.item} in the {modality.column} column")
    return modality.processor_part(stored[position], position, processor)


def _video_frames(stored: list, position: int) -> list[dict[str, Any]]:
    if position >= len(stored):
        raise RowError(f"video part {position} has no video in the videos column")
    return VIDEO.image_parts(stored[position], position)
