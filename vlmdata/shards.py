"""Writing and reading token shards (DESIGN.md section 3).

Each row holds `input_ids`, `labels`, `length`, `id`, `source`, and every other tensor the processor returned
for the row (pixel values, grids, type ids, masks, audio features...). What a family returns differs, so the
columns are found once per run by probing the processor (`probe_layout`) and described by a `TensorLayout`,
saved in `vlmdata.json` so that a reader can rebuild the exact tensors.

Storage. Numbers are stored as typed Arrow arrays, never Python lists, never float64:
- per-token tensors (shape `[1, L, ...]` in the processor's output, e.g. `token_type_ids`,
  `mm_token_type_ids`, `cross_attention_mask`) lose their batch dimension and are stored as `[L, ...]`, so
  truncation cuts them like `input_ids`;
- other tensors keep the processor's shape;
- a tensor whose dimensions after the first are the same for every image (Gemma 3's `[n, 3, H, W]`,
  Qwen2-VL's `[patches, 1176]`) is an `ArrayND` column with a free first dimension; one whose other
  dimensions vary (Pixtral's pixel values follow each image's size) is a flat list plus a `<name>_shape`
  column;
- pixel values are stored as uint8 codes with the processor's own rescale/normalise table
  (`vlmdata.pixels`): a quarter of float32, and rebuilt bit-identically. Each row is checked as it is
  encoded; a row the table cannot reproduce keeps its float32 values in `<name>_float` instead, and padding
  zeros go to `<name>_zeros`. Pixels of a processor without such a table, and other floats (audio
  features), are stored as float32, exactly what the processor computes. Qwen2-VL's pixels repeat each
  still image `temporal_patch_size` times inside every patch: when the probe rows do, each patch keeps one
  frame (`TensorSpec.repeated_frames`, half the bytes), and a row whose frames differ (a video) keeps its
  full pixels as float32 in `<name>_float`. Integers are stored as int32
  (checked to fit) and rebuilt with the processor's dtype.
A row without some tensor (a text-only row has no pixels) stores it empty (first dimension 0, or an empty
shape) and the reader leaves it out, as the processor does.

Example:
    >>> dataset = load_shards("out/shards")  # doctest: +SKIP
    >>> inputs = model_inputs(dataset[0], read_layout("out/shards"))  # doctest: +SKIP
    >>> sorted(inputs)  # doctest: +SKIP
    ['attention_mask', 'input_ids', 'labels', 'pixel_values', 'token_type_ids']
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.arrow_writer import TypedSequence

from vlmdata.errors import RowError
from vlmdata.pixels import PixelCodec, fold_frames, repeat_frames

METADATA_FILE = "vlmdata.json"
PROCESSOR_DIR = "processor"
# Outputs of the processor that are not stored: the attention mask of an unpadded row is all ones and is
# rebuilt by the reader; the assistant mask has become `labels`.
NOT_STORED = ("attention_mask", "assistant_masks")
ARRAY_TYPES = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
INT32 = np.iinfo(np.int32)
FLOAT_DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16", "torch.float64")


@dataclass(frozen=True)
class TensorSpec:
    """How one processor output is stored.

    Attributes:
        name: the processor's name for it (`pixel_values`).
        per_token: its second dimension runs along the tokens (stored without the batch dimension).
        storage: "list" (1-D), "array" (ArrayND, fixed dimensions after the first) or "flat" (values + shape).
        dtype: the torch dtype the processor returns, restored on reading (`torch.float32`).
        stored_dtype: the numpy dtype of the stored values.
        tail: the fixed dimensions after the first ("array" storage only).
        codec: for pixels stored as uint8 codes, the table that turns them back into the processor's floats.
        batched: its first dimension is the batch (one entry per row: per-token tensors, Mllama's
            `[1, images, tiles, ...]`), rather than the images or clips of the row (`[images, 3, H, W]`);
            batching pads the former for rows without it and concatenates the latter.
        repeated_frames: for pixels stored as codes whose patches repeat one frame that many times (Qwen2-VL's
            still images, `[patches, frame_channels * repeated_frames * rest]`): each patch is stored with one
            frame (`tail[-1] // repeated_frames` codes) and repeated on reading. 1 for every other tensor.
        frame_channels: the channels leading each patch, with `repeated_frames` > 1.
    """

    name: str
    per_token: bool
    storage: str
    dtype: str
    stored_dtype: str
    tail: tuple[int, ...] = ()
    codec: PixelCodec | None = None
    batched: bool = False
    repeated_frames: int = 1
    frame_channels: int = 0

    @property
    def stored_tail(self) -> tuple[int, ...]:
        """The fixed dimensions after the first of the stored column ("array" storage only)."""
        return (*self.tail[:-1], self.tail[-1] // self.repeated_frames) if self.tail else ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.repeated_frames == 1:  # the metadata of tensors that do not fold stays as it was
            del data["repeated_frames"], data["frame_channels"]
        return data

    def feature(self) -> dict[str, Any]:
        """The `datasets` feature(s) of this tensor's column(s)."""
        value = datasets.Value(self.stored_dtype)
        if self.storage == "array":
            shape = (None, *self.stored_tail)
            columns = {self.name: ARRAY_TYPES[len(shape)](shape=shape, dtype=self.stored_dtype)}
        elif self.storage == "list":
            columns = {self.name: datasets.List(value)}
        else:
            columns = {self.name: datasets.List(value), f"{self.name}_shape": datasets.List(datasets.Value("int32"))}
        if self.codec is not None:
            columns[f"{self.name}_zeros"] = datasets.List(datasets.Value("int64"))
            columns[f"{self.name}_float"] = datasets.List(datasets.Value("float32"))
        return columns


@dataclass(frozen=True)
class TensorLayout:
    """The stored tensors of a run, besides `input_ids` and `labels`."""

    tensors: tuple[TensorSpec, ...]

    def features(self) -> datasets.Features:
        """The shards' features, in a stable column order."""
        columns: dict[str, Any] = {
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "length": datasets.Value("int32"),
        }
        for spec in self.tensors:
            columns.update(spec.feature())
        columns["id"] = datasets.Value("string")
        columns["source"] = datasets.Value("string")
        return datasets.Features(columns)

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": [spec.to_dict() for spec in self.tensors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorLayout":
        specs = []
        for spec in data["tensors"]:
            codec = PixelCodec.from_dict(spec["codec"]) if spec.get("codec") else None
            specs.append(TensorSpec(**{**spec, "tail": tuple(spec["tail"]), "codec": codec}))
        return cls(tuple(specs))

    def pixel_storage(self) -> dict[str, str]:
        """How each floating point tensor is stored, for the metadata file."""
        def described(spec: TensorSpec) -> str:
            if spec.codec is None:
                return spec.stored_dtype
            folded = f", one of {spec.repeated_frames} repeated frames per patch" if spec.repeated_frames > 1 else ""
            return "uint8 codes + rescale/normalise table" + folded

        return {spec.name: described(spec) for spec in self.tensors if spec.dtype in FLOAT_DTYPES}


def probe_layout(outputs: list[dict[str, torch.Tensor]], image_processor=None) -> TensorLayout:
    """Finds how to store each tensor from the processor's outputs for a few different rows.

    Args:
        outputs: `apply_chat_template(..., return_tensors="pt")` results for rows with differently sized
            images (and numbers of images), so that dimensions that vary show up as varying.
        image_processor: the processor's image processor, whose rescale/normalise table lets pixel values
            be stored as uint8 codes; without it they are stored as float32.
    """
    names = sorted({name for output in outputs for name in output if name not in NOT_STORED and name != "input_ids"})
    specs = []
    for name in names:
        present = [output for output in outputs if name in output]
        per_token = all(_is_per_token(output[name], output["input_ids"]) for output in present)
        shapes = [tuple(_stored(output[name], per_token).shape) for output in present]
        tails = {shape[1:] for shape in shapes}
        ndim = len(shapes[0])
        dtype = present[0][name].dtype
        stored_dtype = "int32" if not dtype.is_floating_point and dtype != torch.bool else str(dtype)[6:]
        if dtype.is_floating_point:
            stored_dtype = "float32"
        if ndim == 1:
            storage, tail = "list", ()
        elif len(tails) == 1 and ndim in ARRAY_TYPES:
            storage, tail = "array", shapes[0][1:]
        else:
            storage, tail = "flat", ()
        codec, frames = None, (1, 0)
        if name.startswith("pixel_values") and dtype.is_floating_point and image_processor is not None:
            samples = [output[name].float().numpy() for output in present]
            codec = PixelCodec.find(image_processor, samples)
            stored_dtype = "uint8" if codec else stored_dtype
            frames = _repeated_frames(image_processor, codec, tail, samples)
        batched = _is_batched(present, name, per_token)
        specs.append(TensorSpec(name, per_token, storage, str(dtype), stored_dtype, tail, codec, batched, *frames))
    return TensorLayout(tuple(specs))


def _repeated_frames(
    image_processor, codec: PixelCodec | None, tail: tuple[int, ...], samples: list[np.ndarray]
) -> tuple[int, int]:
    """`(repeated_frames, frame_channels)` for pixels stored with one frame per patch, else `(1, 0)`.

    Qwen2-VL's image processor repeats each still image `temporal_patch_size` times, so that its patches
    (`[patches, 3 * T * P * P]`, laid out `[patches, 3, T, P, P]`) have the layout of a video's: storing one
    frame halves the pixels. Taken only when every probe row repeats its frames exactly.
    """
    frames = getattr(image_processor, "temporal_patch_size", 1) or 1
    mean = getattr(image_processor, "image_mean", None)
    channels = len(mean) if isinstance(mean, (list, tuple)) else 3
    if codec is None or not isinstance(frames, int) or frames < 2 or len(tail) != 1:
        return 1, 0
    for sample in samples:
        encoded = codec.encode(sample)
        if encoded is None or len(encoded[1]) or fold_frames(encoded[0], channels, frames) is None:
            return 1, 0
    return frames, channels


def _is_batched(outputs: list[dict[str, torch.Tensor]], name: str, per_token: bool) -> bool:
    """Whether dimension 0 is the batch: the probe rows hold one image, then two, and a tensor whose first
    dimension stays 1 while a later one counts the images is per row (Mllama's pixels, aspect ratios)."""
    if per_token:
        return True
    shapes = [tuple(output[name].shape) for output in outputs]
    if len(shapes) < 2 or shapes[0][0] != 1 or shapes[1][0] != 1:
        return False
    return any(first == 1 and second == 2 for first, second in zip(shapes[0][1:], shapes[1][1:]))


def _is_per_token(tensor: torch.Tensor, input_ids: torch.Tensor) -> bool:
    return tensor.ndim >= 2 and tensor.shape[0] == 1 and tensor.shape[1] == input_ids.shape[1]


def _stored(tensor: torch.Tensor, per_token: bool) -> torch.Tensor:
    return tensor[0] if per_token else tensor


def encode_tensors(outputs: dict[str, torch.Tensor], layout: TensorLayout) -> dict[str, np.ndarray]:
    """A row's processor outputs (batch of one, already truncated) -> its stored columns as numpy arrays.

    Raises:
        RowError: the processor returned a tensor the layout does not know, or one that does not fit it.
    """
    known = {spec.name for spec in layout.tensors}
    unknown = sorted(set(outputs) - known - set(NOT_STORED) - {"input_ids"})
    if unknown:
        raise RowError(f"the processor returned {', '.join(unknown)}, which the first rows did not have")
    columns = {}
    for spec in layout.tensors:
        tensor = outputs.get(spec.name)
        if tensor is None:
            columns.update(_empty(spec))
            continue
        array = _to_numpy(_stored(tensor, spec.per_token), spec)
        if spec.storage == "array" and tuple(array.shape[1:]) != spec.tail:  # the processor's shape, before folding
            raise RowError(f"{spec.name} has shape {list(array.shape)}, expected [*, {', '.join(map(str, spec.tail))}]")
        if spec.storage == "flat":
            columns[f"{spec.name}_shape"] = np.asarray(array.shape, dtype=np.int32)
        if spec.codec is not None:
            columns.update(_encode_pixels(array, spec))
        else:
            columns[spec.name] = array.reshape(-1) if spec.storage == "flat" else array
    return columns


def _encode_pixels(values: np.ndarray, spec: TensorSpec) -> dict[str, np.ndarray]:
    if values.dtype == np.uint8:  # the processor was asked for unnormalised pixels: they are the codes
        encoded = values, np.zeros((0, 2), np.int64)
    else:
        encoded = spec.codec.encode(values)
    if encoded is not None and spec.repeated_frames > 1:
        encoded = _fold(*encoded, spec)
    if encoded is None:  # not reproducible from codes (or frames that differ): this row keeps its float32 values
        floats = spec.codec.decode(values) if values.dtype == np.uint8 else values  # the processor's floats
        empty = _empty(spec)[spec.name]
        return {spec.name: empty, f"{spec.name}_zeros": np.zeros(0, np.int64), f"{spec.name}_float": floats.reshape(-1)}
    codes, zero_runs = encoded
    return {
        spec.name: codes.reshape(-1) if spec.storage == "flat" else codes,
        f"{spec.name}_zeros": zero_runs.reshape(-1),
        f"{spec.name}_float": np.zeros(0, np.float32),
    }


def _fold(codes: np.ndarray, zero_runs: np.ndarray, spec: TensorSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """The codes with one frame per patch, or None when this row's frames differ (a video, say)."""
    folded = None if len(zero_runs) else fold_frames(codes, spec.frame_channels, spec.repeated_frames)
    return None if folded is None else (folded, zero_runs)


def _to_numpy(tensor: torch.Tensor, spec: TensorSpec) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 exactly
        tensor = tensor.float()
    array = tensor.detach().cpu().numpy()
    if spec.stored_dtype == "int32" and array.size and (array.min() < INT32.min or array.max() > INT32.max):
        raise RowError(f"{spec.name} holds values outside int32")
    dtype = spec.stored_dtype
    if spec.codec is not None and array.dtype != np.uint8:
        dtype = "float32"  # codes are made from the floats
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def _empty(spec: TensorSpec) -> dict[str, np.ndarray]:
    columns = {spec.name: np.zeros(0, dtype=spec.stored_dtype)}
    if spec.storage == "array":
        columns = {spec.name: np.zeros((0, *spec.stored_tail), dtype=spec.stored_dtype)}
    if spec.storage == "flat":
        columns[f"{spec.name}_shape"] = np.zeros(0, dtype=np.int32)
    if spec.codec is not None:
        columns.update({f"{spec.name}_zeros": np.zeros(0, np.int64), f"{spec.name}_float": np.zeros(0, np.float32)})
    return columns


def rows_to_table(rows: list[dict[str, Any]], features: datasets.Features) -> pa.Table:
    """Builds an Arrow table from rows of numpy arrays without going through Python lists."""
    arrays = [pa.array(TypedSequence([row[name] for row in rows], type=feature)) for name, feature in features.items()]
    return pa.Table.from_arrays(arrays, schema=features.arrow_schema)


def read_layout(folder: str | Path) -> TensorLayout:
    """The tensor layout saved in a shard folder's `vlmdata.json`."""
    metadata = json.loads((Path(folder) / METADATA_FILE).read_text(encoding="utf-8"))
    return TensorLayout.from_dict(metadata["layout"])


def load_shards(folder: str | Path) -> datasets.Dataset:
    """The shards of `folder` as a dataset whose rows hold numpy arrays, ready for `model_inputs`."""
    return numpy_rows(datasets.load_from_disk(str(folder)))


def numpy_rows(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with rows of numpy arrays in their stored dtypes."""
    # dtype=None goes to np.asarray: without it the numpy format widens every integer to int64, which makes
    # reading uint8 pixel codes ten times slower and eight times larger.
    return dataset.with_format("numpy", dtype=None)


def arrow_row(table: pa.Table) -> dict[str, Any]:
    """One row of `dataset.with_format("arrow")` as numpy arrays that share the memory-mapped shard's memory.

    The numpy format copies every row's pixels on the way out (about 20 ms for a batch of 8 Gemma 3 rows);
    these views copy nothing, and batching makes the one copy a batch needs. Scalars and strings come out as
    Python values.
    """
    row: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name)
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        if pa.types.is_list(array.type) or isinstance(array.type, pa.ExtensionType):
            dims = len(array.type.shape) if isinstance(array.type, pa.ExtensionType) else 1
            values = array.storage if isinstance(array, pa.ExtensionArray) else array
            for _ in range(dims):
                values = values.flatten()
            view = values.to_numpy(zero_copy_only=False)  # zero-copy for numbers; bools are unpacked
            row[name] = view.reshape(-1, *array.type.shape[1:]) if dims > 1 else view
        else:
            row[name] = array[0].as_py()
    return row


def model_inputs(row: dict[str, Any], layout: TensorLayout, decode_pixels: bool = True) -> dict[str, torch.Tensor]:
    """Rebuilds a row's model inputs as torch tensors with a batch dimension of one.

    The result equals what the processor returned for the row (same names, shapes, dtypes and values), plus
    `labels` and an all-ones `attention_mask`.

    Args:
        row: a row of `load_shards(folder)` (numpy arrays; plain lists work too).
        layout: `read_layout(folder)`.
        decode_pixels: with False, pixels stored as codes alone are left as their stored uint8 codes (one
            frame per patch where folded), for `decode_codes` to turn into the processor's tensor later (on
            the GPU, in training); pixels with padding zeros or kept as floats are rebuilt all the same.
    """
    input_ids = torch.from_numpy(np.asarray(row["input_ids"]).astype(np.int64))[None]
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.from_numpy(np.asarray(row["labels"]).astype(np.int64))[None],
    }
    for spec in layout.tensors:
        array = _stored_array(row, spec, decode_pixels)
        if array is None:
            continue
        tensor = _tensor(np.ascontiguousarray(array))
        if array.dtype != np.uint8 or spec.codec is None:  # codes stay codes; everything else gets its dtype back
            tensor = tensor.to(getattr(torch, spec.dtype[6:]))
        inputs[spec.name] = tensor[None] if spec.per_token else tensor
    return inputs


def _tensor(array: np.ndarray) -> torch.Tensor:
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        # A view of the read-only shard file (`arrow_row`): batching copies it, nothing writes to it.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _stored_array(row: dict[str, Any], spec: TensorSpec, decode_pixels: bool = True) -> np.ndarray | None:
    """A tensor's values in the processor's shape, or None when the row has none."""
    if spec.codec is not None and len(row[f"{spec.name}_float"]):
        array = np.asarray(row[f"{spec.name}_float"], dtype=np.float32)
        shape = np.asarray(row[f"{spec.name}_shape"]) if spec.storage == "flat" else (-1, *spec.tail)
        return array.reshape([int(size) for size in shape])
    array = np.asarray(row[spec.name], dtype=spec.stored_dtype)
    if spec.storage == "flat":
        shape = [int(size) for size in np.asarray(row[f"{spec.name}_shape"])]
        if not shape:
            return None
        array = array.reshape(shape)
    elif array.shape[0] == 0:
        return None
    if spec.codec is not None and (decode_pixels or len(row[f"{spec.name}_zeros"])):
        if spec.repeated_frames > 1:
            array = repeat_frames(array.reshape(len(array), -1), spec.frame_channels, spec.repeated_frames)
        array = spec.codec.decode(array, row[f"{spec.name}_zeros"])
    return array


def decode_codes(codes: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """The processor's tensor, in its dtype, from uint8 codes as `model_inputs(..., decode_pixels=False)` leaves
    them (one row's, or a batch's concatenated), on the codes' own device."""
    if spec.repeated_frames > 1 and codes.shape[-1] != spec.tail[-1]:  # one frame per patch: repeat it
        codes = repeat_frames(codes, spec.frame_channels, spec.repeated_frames)
    return spec.codec.decode_tensor(codes).to(getattr(torch, spec.dtype[6:]))
