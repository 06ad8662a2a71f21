"""What a kind of media declares once, so that no stage branches on "image" or "audio" itself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from vlmdata.media import MediaLoader
from vlmdata.media.loader import ADDRESS_KEYS


class Modality(ABC):
    """One kind of media besides text: its names, its storage, and what each stage does with its items.

    A subclass sets the class attributes and implements `load` and `processor_part`; the registry
    (`vlmdata.modalities.MODALITIES`) holds one instance of each.

    Attributes:
        kind: the part type, e.g. "image"; a part's own payload key has the same name (``{"image": ...}``).
        column: the normalised dataset's column of the stored items, e.g. "images".
        source_columns: the columns of a source row that give bare parts their media, the first present wins,
            e.g. ("images", "image").
        feature: the `datasets` feature of one stored item in the normalised dataset.
        takes_bare_addresses: a part with no type and only an address (path, url or base64) is of this kind.
        item: how messages name one stored item, e.g. "image" or "clip".
        label: how inspect names the stored items, e.g. "images" or "audio clips".
        pictures: the stored items are encoded pictures ({bytes, path}): inspect reads their sizes from the
            file headers and shows them as thumbnails.
        option_keys: the keys of a content part that set how its own media is loaded (a video's "num_frames");
            they travel with its payload, also when the payload comes from the row's column.
    """

    kind: str
    column: str
    source_columns: tuple[str, ...]
    feature: Any
    takes_bare_addresses: bool = False
    item: str
    label: str
    pictures: bool = False
    option_keys: tuple[str, ...] = ()

    @property
    def payload_keys(self) -> tuple[str, ...]:
        """The keys of a content part that hold its media: its own key, then the address keys."""
        return (self.kind, *ADDRESS_KEYS)

    @property
    def undecoded_feature(self) -> Any:
        """The feature that reads a stored item as it is stored, for `processor_part`."""
        return self.feature

    def payload_from_column_value(self, value: Any) -> dict[str, Any]:
        """The payload of a bare part from one entry of a source column.

        A string names the media (a URL, a data: URI or a path); raw bytes are the encoded media; anything else
        (a PIL image, {bytes, path}, {array, sampling_rate}) is the media itself.
        """
        if isinstance(value, str):
            if value.startswith(("http://", "https://")):
                return {"url": value}
            if value.startswith("data:"):
                return {"base64": value}
            return {"path": value}
        if isinstance(value, (bytes, bytearray)):
            return {self.kind: {"bytes": bytes(value), "path": None}}
        return {self.kind: value}

    @abstractmethod
    def load(self, payload: dict[str, Any], base_dir: str | None, loader: MediaLoader) -> dict[str, Any]:
        """Loads one part's payload (convert) and returns the item as the normalised dataset stores it.

        Raises:
            RowError: the payload is missing, unreachable or not valid media of this kind.
        """

    def taken_by(self, family) -> bool:
        """Whether the model family (`vlmdata.models.registry.Family`) takes parts of this kind."""
        return self.kind in family.modalities

    @abstractmethod
    def processor_part(self, stored: dict[str, Any], position: int, processor) -> dict[str, Any]:
        """The processor's content part (tokenize) for the stored item at `position` of the row's column.

        Args:
            stored: the item as `undecoded_feature` reads it.
            position: its position in the row's column, which error messages name.
            processor: the `transformers` processor that will read the part.

        Raises:
            RowError: the item cannot be given to this processor.
        """

    def __repr__(self) -> str:
        return f"<modality {self.kind}>"

