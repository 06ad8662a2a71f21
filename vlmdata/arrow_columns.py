"""Arrow columns of numpy arrays, each value copied once.

`datasets` turns a column of numpy arrays into Arrow by copying every array three times (`np.array`, then
`flatten`, then `pa.concat_arrays`); for a batch of pixel codes that is most of the table's cost. `column`
builds the same Arrow array (the same type, values and offsets) from one `np.concatenate`, for the columns
tokenize writes: lists of numbers, and `ArrayND` columns with a free first dimension. Any other column, or
values that do not fit the fast path exactly, go through `datasets` as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
from datasets.arrow_writer import TypedSequence

# List offsets are int32: a column past this many values goes through `datasets`, which says so.
MAX_OFFSET = np.iinfo(np.int32).max


def column(values: list[Any], feature, arrow_type: pa.DataType) -> pa.Array:
    """The Arrow array of one column's `values` in `feature` (whose Arrow type is `arrow_type`)."""
    built = _from_arrays(values, arrow_type) if values and all(isinstance(v, np.ndarray) for v in values) else None
    return built if built is not None else pa.array(TypedSequence(values, type=feature))


def _from_arrays(arrays: list[np.ndarray], arrow_type: pa.DataType) -> pa.Array | None:
    extension = isinstance(arrow_type, pa.ExtensionType)
    if extension and not hasattr(arrow_type, "shape"):  # only the ArrayND types of `datasets`
        return None
    storage_type = arrow_type.storage_type if extension else arrow_type
    depth, item_type = 0, storage_type
    while pa.types.is_list(item_type):
        depth, item_type = depth + 1, item_type.value_type
    if depth == 0 or not pa.types.is_primitive(item_type) or pa.types.is_boolean(item_type):
        return None
    dtype = np.dtype(item_type.to_pandas_dtype())
    tail = arrays[0].shape[1:]
    if any(a.dtype != dtype or a.ndim != depth or a.shape[1:] != tail for a in arrays):
        return None
    if extension and tuple(arrow_type.shape[1:]) != tail:
        return None
    rows = sum(len(a) for a in arrays)
    if rows * math.prod(tail) > MAX_OFFSET:
        return None
    built = pa.array(np.concatenate([a.reshape(-1) for a in arrays]), type=item_type)
    # Innermost first: each fixed dimension is a list of equal steps over the one below.
    for axis in reversed(range(len(tail))):
        lists = rows * math.prod(tail[:axis])
        built = pa.ListArray.from_arrays(pa.array(np.arange(lists + 1, dtype=np.int32) * tail[axis]), built)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    built = pa.ListArray.from_arrays(pa.array(offsets), built)
    if built.type != storage_type:  # a list type of other field names or nullability: not this fast path's
        return None
    return pa.ExtensionArray.from_storage(arrow_type, built) if extension else built
