"""Compact pixel storage: the resized uint8 pixels, with the processor's rescale and normalise replayed on load.

Image processors resize in uint8 and only then rescale and normalise, elementwise and per channel: every float
in `pixel_values` is one of 256 values per channel. Storing the uint8 code of each value (a quarter of the
float32 bytes) and a 256-entry table per channel loses nothing, provided the table holds exactly the floats
the processor computes. So the table is made by the image processor's own `rescale_and_normalize` applied to
the codes 0..255, and every row encoded from floats is checked: a value the table cannot reproduce bit for bit
makes that row fall back to float32. Zeros are the one exception worth handling: Pixtral and Mllama pad images
and tiles with 0.0 after normalising, which no code gives, so exact zeros are kept as runs of flat positions.
(Most processors can hand over their uint8 pixels directly, which are the codes: see `vlmdata.processor_call`.)

Where the channel of a value sits depends on the family: a `[images, 3, H, W]` axis for most, the leading factor
of the flattened patch for Qwen2-VL (`[patches, 3 * 2 * 14 * 14]`). `PixelCodec.find` tries the possible places
on the probe rows and keeps the one that reproduces them.

Qwen2-VL and Qwen2.5-VL also store every still image twice: their processor repeats each frame
`temporal_patch_size` times inside every patch (`[patches, 3 * T * 14 * 14]`, laid out `[patches, 3, T, 14, 14]`)
so that images and videos share one layout. `fold_frames` keeps one frame of each patch when they all repeat,
and `repeat_frames` rebuilds the full patches on load.

`PixelStorage` is the whole representation of one pixel tensor in the shards: its codec, the folded frames, the
runs of padding zeros and the float32 fallback of a row the codes cannot reproduce. The shards and the collator
ask it to encode, rebuild and decode, and see nothing of the codec.

Example:
    >>> codec = PixelCodec.find(processor.image_processor, [probe["pixel_values"]])  # doctest: +SKIP
    >>> codes, zeros = codec.encode(pixels)  # uint8 codes and runs of zeros; None when not exact  # doctest: +SKIP
    >>> np.array_equal(codec.decode(codes, zeros), pixels)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import datasets
import numpy as np
import torch

CODES = 256
# The columns beside a pixel tensor's codes: the runs of padding zeros, and a fallback row's float32 values.
ZEROS_SUFFIX = "_zeros"
FLOAT_SUFFIX = "_float"


@dataclass(frozen=True)
class PixelCodec:
    """Maps uint8 codes to the processor's floats and back.

    Attributes:
        table: `table[c][u]` is the float the processor makes of value `u` in channel `c` (one row when all
            channels share it).
        channel_axis: the axis of the (viewed) array that holds the channel; None with a single table row.
        split_last: view the last axis as `[channels, rest]` first (channels lead a flattened patch).
    """

    table: tuple[tuple[float, ...], ...]
    channel_axis: int | None = None
    split_last: bool = False

    @classmethod
    def find(cls, image_processor, samples: list[np.ndarray]) -> "PixelCodec | None":
        """The codec that reproduces every sample exactly, or None when the processor allows none."""
        table = _processor_table(image_processor)
        if table is None or not samples:
            return None
        if all(row == table[0] for row in table):
            candidates = [cls((table[0],))]
        else:
            ndim = samples[0].ndim
            candidates = [cls(table, axis) for axis in range(1, ndim) if samples[0].shape[axis] == len(table)]
            if samples[0].shape[-1] % len(table) == 0:
                candidates.append(cls(table, ndim - 1, split_last=True))
        for codec in candidates:
            if all(codec.encode(sample) is not None for sample in samples):
                return codec
        return None

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The uint8 codes of `values` (same shape) and the `[start, stop)` runs of flat positions holding
        padding zeros, or None if the table does not reproduce every other value exactly."""
        values = np.asarray(values, dtype=np.float32)
        view = self._view(values)
        if view is None:
            return None
        codes = np.zeros(view.shape, dtype=np.uint8)
        found = np.zeros(view.shape, dtype=bool)
        for channel, row in enumerate(self._tables()):
            where = self._channel(channel)
            codes[where], found[where] = _lookup(row, view[where])
        missing = ~found.reshape(-1)
        if not missing.any():
            return codes.reshape(values.shape), np.zeros((0, 2), np.int64)
        flat = values.reshape(-1)
        if np.any(flat[missing] != 0) or np.any(np.signbit(flat[missing])):
            return None
        return codes.reshape(values.shape), _runs(missing)

    def decode(self, codes: np.ndarray, zero_runs: np.ndarray | None = None) -> np.ndarray:
        """The float32 values of `codes` with `zero_runs` zeroed: exactly what the processor returned."""
        codes = np.asarray(codes, dtype=np.uint8)
        view = self._view(codes)
        values = np.empty(view.shape, dtype=np.float32)
        for channel, row in enumerate(self._tables()):
            where = self._channel(channel)
            values[where] = row[view[where]]
        values = values.reshape(-1)
        if zero_runs is not None:
            for start, stop in np.asarray(zero_runs, dtype=np.int64).reshape(-1, 2):
                values[start:stop] = 0.0
        return values.reshape(codes.shape)

    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        """`decode` for a tensor of codes without zero runs, on the tensor's own device (a GPU, in training).

        The table holds the same float32 values as `decode`'s, so the result is the same bit for bit.
        """
        table = torch.tensor(self.table, dtype=torch.float32, device=codes.device)
        index = codes.to(torch.int32)
        if self.split_last:
            index = index.reshape(*index.shape[:-1], len(self.table), -1)
        if self.channel_axis is not None:
            # One flat table of channels x 256: a value's index is its code plus 256 times its channel.
            shape = [1] * index.ndim
            shape[self.channel_axis] = len(self.table)
            index = index + (torch.arange(len(self.table), dtype=torch.int32, device=codes.device) * CODES).reshape(shape)
        return torch.index_select(table.reshape(-1), 0, index.reshape(-1)).reshape(codes.shape)

    def to_dict(self) -> dict:
        return {"table": [list(row) for row in self.table], "channel_axis": self.channel_axis, "split_last": self.split_last}

    @classmethod
    def from_dict(cls, data: dict) -> "PixelCodec":
        return cls(tuple(tuple(row) for row in data["table"]), data["channel_axis"], data["split_last"])

    def _tables(self) -> list[np.ndarray]:
        return [np.asarray(row, dtype=np.float32) for row in self.table]

    def _view(self, array: np.ndarray) -> np.ndarray | None:
        if self.split_last:
            if array.ndim == 0 or array.shape[-1] % len(self.table):
                return None
            array = array.reshape(*array.shape[:-1], len(self.table), -1)
        if self.channel_axis is not None and (array.ndim <= self.channel_axis or array.shape[self.channel_axis] != len(self.table)):
            return None
        return array

    def _channel(self, channel: int) -> tuple:
        if self.channel_axis is None:
            return (Ellipsis,)
        return (slice(None),) * self.channel_axis + (channel,)


def _lookup(row: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The code of each value in `row` (a table row), and whether the value is there at all."""
    # Rescale then normalise is affine in the code, so arithmetic finds the code of almost every value at once;
    # a sorted search settles the few it misses (float rounding one code off, padding zeros, values not there).
    step = (row[-1] - row[0]) / (len(row) - 1)
    if not np.isfinite(step) or step == 0:
        return _search(row, values)
    guess = np.nan_to_num(np.rint((values - row[0]) / step), nan=0.0)
    codes = np.clip(guess, 0, len(row) - 1).astype(np.intp)
    found = _same_bits(row[codes], values)
    missed = ~found
    if missed.any():
        codes[missed], found[missed] = _search(row, values[missed])
    return codes.astype(np.uint8), found


def _search(row: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(row, kind="stable")
    ordered = row[order]
    position = np.clip(np.searchsorted(ordered, values), 0, len(row) - 1)
    return order[position], _same_bits(ordered[position], values)


def _same_bits(table_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    # NaN never equals, so it is refused; -0.0 == 0.0, but not bit for bit.
    return (table_values == values) & (np.signbit(table_values) == np.signbit(values))


def _runs(mask: np.ndarray) -> np.ndarray:
    """The `[start, stop)` pairs of the runs of True in a flat mask, as int64 `[k, 2]`."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.view(np.int8), [0]))))
    return edges.reshape(-1, 2).astype(np.int64)


def _processor_table(image_processor) -> tuple[tuple[float, ...], ...] | None:
    """The processor's rescale + normalise of the codes 0..255 in each channel, or None if it has none."""
    rescale_and_normalize = getattr(image_processor, "rescale_and_normalize", None)
    if rescale_and_normalize is None:
        return None
    mean = getattr(image_processor, "image_mean", None)
    channels = len(mean) if isinstance(mean, (list, tuple)) else 3
    codes = torch.arange(CODES, dtype=torch.uint8).repeat(channels, 1)[None, :, None, :]  # [1, C, 1, 256]
    try:
        values = rescale_and_normalize(
            codes,
            image_processor.do_rescale,
            image_processor.rescale_factor,
            image_processor.do_normalize,
            image_processor.image_mean,
            image_processor.image_std,
        )
    except Exception:  # a processor with another pipeline: its pixels stay float32
        return None
    values = torch.as_tensor(values).float()[0, :, 0, :]
    return tuple(tuple(float(value) for value in row) for row in values.tolist())


def fold_frames(codes: np.ndarray, channels: int, frames: int) -> np.ndarray | None:
    """`[patches, channels * frames * rest]` pixels as `[patches, channels * rest]`, the first of each patch's
    `frames` frames, or None when the frames are not all the same (a video)."""
    patches, size = codes.shape
    if size % (channels * frames):
        return None
    rest = size // (channels * frames)
    view = codes.reshape(patches * channels, frames, rest)
    # Compared as the widest words a frame's bytes divide into: a quarter of the comparisons for uint8 codes.
    width = next(width for width in (8, 4, 2, 1) if rest * codes.itemsize % width == 0)
    words = view.view(f"u{width}") if codes.flags.c_contiguous and width > codes.itemsize else view
    if not all(np.array_equal(words[:, 0], words[:, frame]) for frame in range(1, frames)):
        return None
    return np.ascontiguousarray(view[:, 0]).reshape(patches, size // frames)


def repeat_frames(folded: np.ndarray | torch.Tensor, channels: int, frames: int) -> np.ndarray | torch.Tensor:
    """The inverse of `fold_frames`: every patch's frame repeated `frames` times (an array, or a tensor on
    any device)."""
    patches = folded.shape[0]
    view = folded.reshape(patches, channels, 1, -1)
    shape = (patches, channels, frames, view.shape[-1])
    full = view.expand(shape) if isinstance(folded, torch.Tensor) else np.broadcast_to(view, shape)
    return full.reshape(patches, -1)


@dataclass(frozen=True, kw_only=True)
class PixelStorage:
    """How one pixel tensor is stored: uint8 codes of the processor's table, one frame per patch where the
    processor repeats frames, padding zeros as runs of flat positions, and float32 for a row the codes cannot
    reproduce.

    A tensor `name` has three columns: `name` (the codes), `name_zeros` (the runs) and `name_float` (the
    fallback values; empty for every row stored as codes).

    Attributes:
        codec: the table that turns codes into the processor's floats.
        dtype: the torch dtype of the processor's pixels (`torch.float32`), which decoding gives back.
        repeated_frames: how many times each patch repeats one frame in the processor's output (Qwen2-VL's
            still images, `[patches, frame_channels * repeated_frames * rest]`); each patch is stored with one
            frame and repeated on rebuilding. 1 when the frames are not folded.
        frame_channels: the channels leading each patch, with `repeated_frames` > 1.
    """

    codec: PixelCodec
    dtype: str
    repeated_frames: int = 1
    frame_channels: int = 0

    @classmethod
    def find(
        cls, image_processor, samples: list[np.ndarray], tail: tuple[int, ...], dtype: str, fold: bool = True
    ) -> "PixelStorage | None":
        """The storage that reproduces every probe sample exactly, or None when the processor allows none.

        Args:
            image_processor: the processor's image processor, whose rescale/normalise table makes the codec.
            samples: the pixel tensors of the probe rows, as float32.
            tail: the fixed dimensions after the first, `()` when they vary.
            dtype: the torch dtype the processor returns them in.
            fold: store one of repeated frames where every sample repeats them; False for videos, whose frames
                differ (a still video would otherwise fold and every moving one fall back to float32).
        """
        codec = PixelCodec.find(image_processor, samples)
        if codec is None:
            return None
        folding = _repeated_frames(image_processor, codec, tail, samples) if fold else {}
        return cls(codec=codec, dtype=dtype, **folding)

    @property
    def folded(self) -> bool:
        return self.repeated_frames > 1

    def stored_tail(self, tail: tuple[int, ...]) -> tuple[int, ...]:
        """The fixed dimensions after the first of the codes column, given the processor's."""
        return (*tail[:-1], tail[-1] // self.repeated_frames) if tail else ()

    def describe(self) -> str:
        """How the pixels are stored, in words, for the metadata file."""
        folded = f", one of {self.repeated_frames} repeated frames per patch" if self.folded else ""
        return "uint8 codes + rescale/normalise table" + folded

    def features(self, name: str) -> dict[str, Any]:
        """The `datasets` features of the columns beside the codes."""
        return {
            name + ZEROS_SUFFIX: datasets.List(datasets.Value("int64")),
            name + FLOAT_SUFFIX: datasets.List(datasets.Value("float32")),
        }

    def empty_columns(self, name: str) -> dict[str, np.ndarray]:
        """The columns beside the codes of a row without this tensor."""
        return {name + ZEROS_SUFFIX: np.zeros(0, np.int64), name + FLOAT_SUFFIX: np.zeros(0, np.float32)}

    def encode(self, name: str, values: np.ndarray, no_codes: np.ndarray, folded: bool = False) -> dict[str, np.ndarray]:
        """A row's pixel columns: its codes in the processor's shape (one frame per patch where folded), or
        `no_codes` in their place for a row kept as float32.

        Args:
            values: the processor's float32 pixels, or its uint8 pixels (asked for unnormalised: they are the codes).
            no_codes: the codes column of a row that has none.
            folded: `values` are uint8 codes with one frame per patch already.
        """
        if values.dtype == np.uint8:
            encoded = values, np.zeros((0, 2), np.int64)
        else:
            encoded = self.codec.encode(values)
        if encoded is not None and self.folded and not folded:
            encoded = self._fold(*encoded)
        if encoded is None:  # not reproducible from codes (or frames that differ): this row keeps its float32 values
            floats = self.codec.decode(values) if values.dtype == np.uint8 else values  # the processor's floats
            return {name: no_codes, **self.empty_columns(name), name + FLOAT_SUFFIX: floats.reshape(-1)}
        codes, zero_runs = encoded
        return {name: codes, name + ZEROS_SUFFIX: zero_runs.reshape(-1), name + FLOAT_SUFFIX: np.zeros(0, np.float32)}

    def fallback(self, row: dict[str, Any], name: str) -> np.ndarray | None:
        """The row's pixels kept as float32 (flat), or None when the row has codes."""
        floats = row[name + FLOAT_SUFFIX]
        return np.asarray(floats, dtype=np.float32) if len(floats) else None

    def rebuild(self, row: dict[str, Any], name: str, codes: np.ndarray, decode: bool = True) -> np.ndarray:
        """A row's pixels from its stored codes (reshaped as stored): the processor's values as float32, or with
        `decode` False the codes themselves, unless the row has padding zeros, which no code holds."""
        zero_runs = row[name + ZEROS_SUFFIX]
        if not decode and not len(zero_runs):
            return codes
        if self.folded:
            codes = repeat_frames(codes.reshape(len(codes), -1), self.frame_channels, self.repeated_frames)
        return self.codec.decode(codes, zero_runs)

    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        """The processor's tensor, in its dtype, from codes as `rebuild(..., decode=False)` leaves them (one row's,
        or several rows' concatenated), on the codes' own device."""
        if self.folded:
            codes = repeat_frames(codes, self.frame_channels, self.repeated_frames)
        return self.codec.decode_tensor(codes).to(getattr(torch, self.dtype[6:]))

    def mergeable(self, tensors: Sequence[torch.Tensor | None], adds_padding: bool) -> list[torch.Tensor | None]:
        """Rows' rebuilt pixels made ready to merge into one tensor: left as codes only if every row has codes and
        merging adds no padding, else every row's codes decoded.

        A padding 0 among codes would decode to the value of code 0, not to the processor's 0.0, and codes cannot
        be merged with floats.
        """
        present = [tensor for tensor in tensors if tensor is not None]
        codes = [tensor.dtype == torch.uint8 for tensor in present]
        if not any(codes) or (all(codes) and not adds_padding):
            return list(tensors)
        return [
            self.decode_tensor(tensor) if tensor is not None and tensor.dtype == torch.uint8 else tensor
            for tensor in tensors
        ]

    def _fold(self, codes: np.ndarray, zero_runs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The codes with one frame per patch, or None when this row's frames differ (a video, say)."""
        folded = None if len(zero_runs) else fold_frames(codes, self.frame_channels, self.repeated_frames)
        return None if folded is None else (folded, zero_runs)


def _repeated_frames(
    image_processor, codec: PixelCodec, tail: tuple[int, ...], samples: list[np.ndarray]
) -> dict[str, int]:
    """`repeated_frames` and `frame_channels` for pixels stored with one frame per patch, else none.

    Qwen2-VL's image processor repeats each still image `temporal_patch_size` times, so that its patches
    (`[patches, 3 * T * P * P]`, laid out `[patches, 3, T, P, P]`) have the layout of a video's: storing one
    frame halves the pixels. Taken only when every probe row repeats its frames exactly.
    """
    frames = getattr(image_processor, "temporal_patch_size", 1) or 1
    mean = getattr(image_processor, "image_mean", None)
    channels = len(mean) if isinstance(mean, (list, tuple)) else 3
    if not isinstance(frames, int) or frames < 2 or len(tail) != 1:
        return {}
    for sample in samples:
        encoded = codec.encode(sample)
        if encoded is None or len(encoded[1]) or fold_frames(encoded[0], channels, frames) is None:
            return {}
    return {"repeated_frames": frames, "frame_channels": channels}
