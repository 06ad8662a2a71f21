"""Writing and reading token shards.

Each row holds `input_ids`, `labels`, `length`, `id`, `source`, and every other tensor the processor returned
for the row (pixel values, grids, type ids, masks, audio features...), stored as its `TensorSpec` says
(`vlmdata.tensor_spec`: found by probing the processor, saved in `vlmdata.json`), so that a reader can rebuild
the exact tensors.

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
  (`vlmdata.pixels.PixelStorage`): a quarter of float32, and rebuilt bit-identically. Each row is checked as it
  is encoded; a row the table cannot reproduce keeps its float32 values in `<name>_float` instead, and padding
  zeros go to `<name>_zeros`. Pixels of a processor without such a table, and other floats (audio
  features), are stored as float32, exactly what the processor computes. Qwen2-VL's pixels repeat each
  still image `temporal_patch_size` times inside every patch: when the probe rows do, each patch keeps one
  frame (half the bytes). Their videos (`pixel_values_videos`), whose frames all differ, have their own
  unfolded storage: uint8 codes with each frame once. Integers are stored as int32 (checked to fit) and
  rebuilt with the processor's dtype.
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
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

from vlmdata.arrow_columns import column
from vlmdata.errors import RowError
from vlmdata.folders import METADATA_FILE
from vlmdata.tensor_spec import NOT_STORED, Storage, TensorLayout, TensorSpec, probe_layout

__all__ = [
    "NOT_STORED", "TensorLayout", "TensorSpec", "arrow_row", "decode_codes",
    "encode_tensors", "load_shards", "model_inputs", "numpy_rows", "probe_layout", "read_layout", "rows_to_table",
]

INT32 = np.iinfo(np.int32)


def encode_tensors(
    outputs: dict[str, torch.Tensor], layout: TensorLayout, folded: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """A row's processor outputs (batch of one, already truncated) -> its stored columns as numpy arrays.

    `folded` names the pixel outputs the processor returned with one frame per patch already (see
    `vlmdata.processor_call.ProcessorCall.folded`).

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
        columns.update(_empty(spec) if tensor is None else _encode(tensor, spec, spec.name in folded))
    return columns


def _encode(tensor: torch.Tensor, spec: TensorSpec, folded: bool = False) -> dict[str, np.ndarray]:
    array = _to_numpy(tensor[0] if spec.per_token else tensor, spec)
    tail = spec.stored_tail if folded else spec.tail  # the shape the processor returns, folded already or not
    if spec.storage is Storage.ARRAY and tuple(array.shape[1:]) != tail:
        raise RowError(f"{spec.name} has shape {list(array.shape)}, expected [*, {', '.join(map(str, tail))}]")
    if spec.pixels is not None:
        columns = spec.pixels.encode(spec.name, array, no_codes=_empty_values(spec), folded=folded)
    else:
        columns = {spec.name: array}
    if spec.storage is Storage.FLAT:
        columns[spec.name] = columns[spec.name].reshape(-1)
        columns[f"{spec.name}_shape"] = np.asarray(array.shape, dtype=np.int32)
    return columns


def _to_numpy(tensor: torch.Tensor, spec: TensorSpec) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 exactly
        tensor = tensor.float()
    array = tensor.detach().cpu().numpy()
    if spec.stored_dtype == "int32" and array.size and (array.min() < INT32.min or array.max() > INT32.max):
        raise RowError(f"{spec.name} holds values outside int32")
    if spec.stored_dtype == "uint8" and spec.pixels is None and array.size and (array.min() < 0 or array.max() > 255):
        raise RowError(f"{spec.name} holds values outside uint8")
    dtype = spec.stored_dtype
    if spec.pixels is not None and array.dtype != np.uint8:
        dtype = "float32"  # codes are made from the floats
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def _empty(spec: TensorSpec) -> dict[str, np.ndarray]:
    """The columns of a row without this tensor."""
    columns = {spec.name: _empty_values(spec)}
    if spec.storage is Storage.FLAT:
        columns[f"{spec.name}_shape"] = np.zeros(0, dtype=np.int32)
    if spec.pixels is not None:
        columns.update(spec.pixels.empty_columns(spec.name))
    return columns


def _empty_values(spec: TensorSpec) -> np.ndarray:
    shape = (0, *spec.stored_tail) if spec.storage is Storage.ARRAY else (0,)
    return np.zeros(shape, dtype=spec.stored_dtype)


def rows_to_table(rows: list[dict[str, Any]], features: datasets.Features) -> pa.Table:
    """Builds an Arrow table from rows of numpy arrays without going through Python lists."""
    schema = features.arrow_schema
    arrays = [column([row[name] for row in rows], feature, schema.field(name).type) for name, feature in features.items()]
    return pa.Table.from_arrays(arrays, schema=schema)


def read_layout(folder: str | Path) -> TensorLayout:
    """The tensor layout saved in a shard folder's `vlmdata.json`."""
    metadata = json.loads((Path(folder) / METADATA_FILE).read_text(encoding="utf-8"))
    return TensorLayout.from_dict(metadata["layout"])


def load_shards(folder: str | Path) -> datasets.Dataset:
    """The shards of `folder` as a dataset whose rows hold numpy arrays, ready for `model_inputs`."""
    return numpy_rows(datasets.load_from_disk(str(folder)))


def numpy_rows(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with rows of numpy arrays in their stored dtypes."""
    # dtype=None goes to np.asarray: without it the numpy format widens every integer to int64, making uint8
    # pixel codes eight times larger and much slower to read.
    return dataset.with_format("numpy", dtype=None)


def arrow_row(table: pa.Table) -> dict[str, Any]:
    """One row of `dataset.with_format("arrow")` as numpy arrays that share the memory-mapped shard's memory.

    The numpy format copies every row's pixels on the way out (bench/notes.md has the cost); these views copy
    nothing, and batching makes the one copy a batch needs. Scalars and strings come out as Python values.
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
        if array.dtype != np.uint8 or spec.pixels is None:  # codes stay codes; everything else gets its dtype back
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
    floats = spec.pixels.fallback(row, spec.name) if spec.pixels is not None else None
    if floats is not None:
        shape = np.asarray(row[f"{spec.name}_shape"]) if spec.storage is Storage.FLAT else (-1, *spec.tail)
        return floats.reshape([int(size) for size in shape])
    array = np.asarray(row[spec.name], dtype=spec.stored_dtype)
    if spec.storage is Storage.FLAT:
        shape = [int(size) for size in np.asarray(row[f"{spec.name}_shape"])]
        if not shape:
            return None
        array = array.reshape(shape)
    elif array.shape[0] == 0:
        return None
    if spec.pixels is not None:
        array = spec.pixels.rebuild(row, spec.name, array, decode_pixels)
    return array


def decode_codes(codes: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """The processor's tensor, in its dtype, from uint8 codes as `model_inputs(..., decode_pixels=False)` leaves
    them (one row's, or a batch's concatenated), on the codes' own device."""
    return spec.pixels.decode_tensor(codes)
