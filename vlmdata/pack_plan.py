"""Which rows share a packed sequence: a pack plan made from the shards' `length` column, before training.

The shards stay one row per sample; packing only decides, for an epoch, lists of row indices that are laid one
after the other in one sequence (`vlmdata.train.packing` builds them). The plan is best-fit-decreasing over
windows of rows: the rows are shuffled by the seed and the epoch, each window of `window` rows is placed longest
first, every row into the open pack it fills best, and packs that still have room stay open for the next window.
A pack holds at most `pack_length` language-model tokens and at most `media_budget` media tokens (the image,
video and audio soft tokens, which bound what the vision and audio encoders hold in memory at once).

Example:
    >>> plan = plan_packs(np.array([5, 3, 4, 2]), PackOptions(pack_length=8), seed=0)
    >>> sorted(sorted(pack) for pack in plan.packs)
    [[0, 1], [2, 3]]
    >>> plan.fill_ratio
    0.875
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlmdata.errors import FatalError

DEFAULT_PACK_LENGTH = 4096
DEFAULT_WINDOW = 1000


@dataclass(frozen=True)
class PackOptions:
    """How rows are packed.

    Attributes:
        pack_length: the most language-model tokens a pack holds.
        media_budget: the most media tokens a pack holds (None: no limit but `pack_length`).
        window: how many rows are placed together; larger windows fill packs better and plan more slowly.
    """

    pack_length: int = DEFAULT_PACK_LENGTH
    media_budget: int | None = None
    window: int = DEFAULT_WINDOW


@dataclass(frozen=True)
class PackPlan:
    """One epoch's packs, in the order they are trained.

    Attributes:
        packs: each pack's row indices.
        pack_tokens: each pack's number of tokens.
        pack_length: the room of every pack.
    """

    packs: list[list[int]]
    pack_tokens: list[int]
    pack_length: int

    @property
    def rows(self) -> int:
        return sum(len(pack) for pack in self.packs)

    @property
    def samples_per_pack(self) -> float:
        return self.rows / len(self.packs) if self.packs else 0.0

    @property
    def fill_ratio(self) -> float:
        """The share of the packs' room (`pack_length` each) that holds tokens."""
        return sum(self.pack_tokens) / (len(self.packs) * self.pack_length) if self.packs else 0.0

    def padding_fraction(self, batch_size: int = 1) -> float:
        """The share of padding when `batch_size` packs, in the plan's order, make a batch padded to its longest."""
        return padding_fraction(self.pack_tokens, batch_size)

    def summary(self, batch_size: int = 1) -> dict[str, float | int]:
        return {"packs": len(self.packs), "samples_per_pack": round(self.samples_per_pack, 3),
                "fill_ratio": round(self.fill_ratio, 4), "padding_fraction": round(self.padding_fraction(batch_size), 4)}


def padding_fraction(lengths: list[int] | np.ndarray, batch_size: int) -> float:
    """The share of padding when consecutive sequences of `lengths` are batched `batch_size` at a time, each
    batch padded to its longest."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return 0.0
    padded = sum(int(lengths[start:start + batch_size].max()) * len(lengths[start:start + batch_size])
                 for start in range(0, len(lengths), batch_size))
    return 1.0 - int(lengths.sum()) / padded


def plan_packs(lengths: np.ndarray, options: PackOptions, seed: int, epoch: int = 0,
               media: np.ndarray | None = None, row_ids: list[str] | None = None,
               groups: np.ndarray | None = None) -> PackPlan:
    """Every row in exactly one pack, deterministic per seed and epoch.

    Args:
        lengths: each row's token count (the shards' `length` column).
        media: each row's media token count, for `options.media_budget`.
        row_ids: the rows' ids, to name a row that fits in no pack.
        groups: a label per row; rows of different labels never share a pack (GLM-4.1V's videos and images).

    Raises:
        FatalError: a row is longer than the pack length, or holds more media tokens than the budget.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    media = np.zeros_like(lengths) if media is None else np.asarray(media, dtype=np.int64)
    _check_fits(lengths, media, options, row_ids)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    packs = []
    for group in (np.unique(groups) if groups is not None else [None]):
        members = order if group is None else order[np.asarray(groups)[order] == group]
        packs += _best_fit_decreasing(members, lengths, media, options)
    shuffled = [packs[index] for index in rng.permutation(len(packs))]
    return PackPlan(shuffled, [int(lengths[pack].sum()) for pack in shuffled], options.pack_length)


def _best_fit_decreasing(order: np.ndarray, lengths: np.ndarray, media: np.ndarray,
                         options: PackOptions) -> list[list[int]]:
    """The packs of the rows in `order`, window by window."""
    room_tokens: list[int] = []  # per open pack
    room_media: list[int] = []
    packs: list[list[int]] = []
    open_packs: list[int] = []  # indices into packs
    budget = options.media_budget if options.media_budget is not None else np.iinfo(np.int64).max
    for start in range(0, len(order), options.window):
        window = order[start:start + options.window]
        # Longest first; equal lengths keep their shuffled order (a stable sort).
        for row in window[np.argsort(-lengths[window], kind="stable")]:
            best = _best_fit(open_packs, room_tokens, room_media, lengths[row], media[row])
            if best is None:
                packs.append([])
                open_packs.append(len(packs) - 1)
                room_tokens.append(options.pack_length)
                room_media.append(budget)
                best = len(open_packs) - 1
            packs[open_packs[best]].append(int(row))
            room_tokens[best] -= int(lengths[row])
            room_media[best] -= int(media[row])
        # A pack that no row of any length left could still join is closed: the open list stays short.
        smallest = int(lengths[order[start + options.window:]].min()) if start + options.window < len(order) else 0
        keep = [index for index in range(len(open_packs)) if room_tokens[index] >= max(smallest, 1)]
        open_packs = [open_packs[index] for index in keep]
        room_tokens = [room_tokens[index] for index in keep]
        room_media = [room_media[index] for index in keep]
    return packs


def _best_fit(open_packs, room_tokens, room_media, length, media) -> int | None:
    """The open pack whose token room is smallest among those the row fits in."""
    best, best_room = None, None
    for index in range(len(open_packs)):
        if length <= room_tokens[index] and media <= room_media[index]:
            if best_room is None or room_tokens[index] < best_room:
                best, best_room = index, room_tokens[index]
                if best_room == length:
                    break
    return best


def _check_fits(lengths, media, options: PackOptions, row_ids) -> None:
    if options.pack_length < 1 or options.window < 1:
        raise FatalError(f"The pack length and the packing window must be at least 1 "
                         f"(got {options.pack_length} and {options.window}).")
    too_long = np.flatnonzero(lengths > options.pack_length)
    if len(too_long):
        row = int(too_long[0])
        raise FatalError(
            f"Row {_name(row, row_ids)} has {int(lengths[row])} tokens, more than the pack length "
            f"{options.pack_length} ({len(too_long)} such rows); raise --pack-length, or tokenize again with "
            f"--max-length {options.pack_length}."
        )
    if options.media_budget is not None:
        too_much = np.flatnonzero(media > options.media_budget)
        if len(too_much):
            row = int(too_much[0])
            raise FatalError(
                f"Row {_name(row, row_ids)} holds {int(media[row])} media tokens, more than the pack media budget "
                f"{options.media_budget} ({len(too_much)} such rows); raise --pack-media-budget."
            )


def _name(row: int, row_ids) -> str:
    return f"{row} ({row_ids[row]!r})" if row_ids is not None else str(row)


def media_token_counts(input_ids: pa.ChunkedArray | pa.Array, media_token_ids: set[int]) -> np.ndarray:
    """Each row's number of media tokens, from the shards' `input_ids` column, without building Python lists."""
    array = input_ids.combine_chunks() if isinstance(input_ids, pa.ChunkedArray) else input_ids
    offsets = array.offsets.to_numpy()
    is_media = pc.is_in(array.flatten(), value_set=pa.array(sorted(media_token_ids), type=array.type.value_type))
    cumulative = np.concatenate([[0], np.cumsum(is_media.to_numpy(zero_copy_only=False).astype(np.int64))])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]
