"""What the token shards hold besides `input_ids` and `labels`: one `TensorSpec` per processor output.

What a family's processor returns differs, so the tensors are found once per run by probing the processor
(`probe_layout`) and described by a `TensorLayout`, saved in `vlmdata.json` so that a reader can rebuild the
exact tensors (`vlmdata.shards`) and merge rows the way the processor batches them (`TensorSpec.batch_rule`).

A spec says, for one tensor:
- its layout across rows (`vlmdata.batching.Batching`): per token (`[1, L, ...]`, stored without the batch
  dimension as `[L, ...]`, so that truncation cuts it like `input_ids`), per row (Mllama's
  `[1, images, tiles, ...]`), or per media item (`[images, 3, H, W]`, Qwen2-VL's `[patches, 1176]`);
- its storage (`Storage`): a 1-D list, an ArrayND column with a free first dimension when the other
  dimensions are the same for every row (Gemma 3's `[n, 3, H, W]`), or a flat list plus a `<name>_shape`
  column when they vary (Pixtral's pixel values follow each image's size);
- its dtypes, and for pixels stored as uint8 codes, their `vlmdata.pixels.PixelStorage`; integer tensors are
  stored as int32, but for masks of one value per pixel (`BYTE_MASKS`), stored as uint8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import datasets
import torch

from vlmdata.batching import Batching, BatchRule, Padding, StrEnum, token_rules
from vlmdata.pixels import PixelCodec, PixelStorage

# Outputs of the processor that are not stored: the attention mask of an unpadded row is all ones and is
# rebuilt by the reader; the assistant mask has become `labels`.
NOT_STORED = ("attention_mask", "assistant_masks")
ARRAY_TYPES = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
FLOAT_DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16", "torch.float64")
# The processor's name for video pixels: each frame differs, so they are never folded like still images'.
VIDEO_PIXELS = "pixel_values_videos"
# Tensors whose family's processor pads them its own way.
FAMILY_PADDING = {"aspect_ratio_mask": Padding.FIRST_TILE}
# Integer masks as large as the pixels they mark (SmolVLM2's, one value per pixel of every crop), stored a byte
# a value rather than four.
BYTE_MASKS = ("pixel_attention_mask",)


class Storage(StrEnum):
    """How a tensor's values sit in its column(s)."""

    LIST = "list"  # a 1-D list
    ARRAY = "array"  # an ArrayND column, fixed dimensions after the first
    FLAT = "flat"  # the values as a flat list, plus a `<name>_shape` column


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """How one processor output is stored, and how rows of it merge.

    Attributes:
        name: the processor's name for it (`pixel_values`).
        batching: its layout across rows: per token, per row or per media item.
        storage: how its values sit in its column(s).
        dtype: the torch dtype the processor returns, restored on reading (`torch.float32`).
        stored_dtype: the numpy dtype of the stored values.
        tail: the processor's fixed dimensions after the first ("array" storage only).
        pixels: for pixels stored as uint8 codes, how they are stored and turned back into the processor's floats.
    """

    name: str
    batching: Batching
    storage: Storage
    dtype: str
    stored_dtype: str
    tail: tuple[int, ...] = ()
    pixels: PixelStorage | None = None

    @property
    def per_token(self) -> bool:
        """Its second dimension runs along the tokens (stored without the batch dimension)."""
        return self.batching is Batching.PER_TOKEN

    @property
    def codec(self) -> PixelCodec | None:
        """The table of pixels stored as codes."""
        return self.pixels.codec if self.pixels is not None else None

    @property
    def stored_tail(self) -> tuple[int, ...]:
        """The fixed dimensions after the first of the stored column ("array" storage only)."""
        return self.pixels.stored_tail(self.tail) if self.pixels is not None else self.tail

    @property
    def batch_rule(self) -> BatchRule:
        """How rows of this tensor merge into a batch or a packed row."""
        padding = Padding.REPEAT_LAST if self.per_token else FAMILY_PADDING.get(self.name, Padding.VALUE)
        return BatchRule(batching=self.batching, pad=0, padding=padding, pixels=self.pixels)

    def to_dict(self) -> dict[str, Any]:
        """The spec as saved in `vlmdata.json`, in the form shards have always been saved with."""
        data = {
            "name": self.name,
            "per_token": self.per_token,
            "storage": self.storage.value,
            "dtype": self.dtype,
            "stored_dtype": self.stored_dtype,
            "tail": self.tail,
            "codec": asdict(self.pixels.codec) if self.pixels is not None else None,
            # Per-token tensors are merged one per row as well.
            "batched": self.batching is not Batching.PER_ITEM,
        }
        if self.pixels is not None and self.pixels.folded:  # the metadata of tensors that do not fold stays as it was
            data.update(repeated_frames=self.pixels.repeated_frames, frame_channels=self.pixels.frame_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        """Reads `to_dict`'s form, from shards written by any version."""
        pixels = None
        if data.get("codec"):
            pixels = PixelStorage(
                codec=PixelCodec.from_dict(data["codec"]),
                dtype=data["dtype"],
                repeated_frames=data.get("repeated_frames", 1),
                frame_channels=data.get("frame_channels", 0),
            )
        if data["per_token"]:
            batching = Batching.PER_TOKEN
        else:
            batching = Batching.PER_ROW if data["batched"] else Batching.PER_ITEM
        return cls(
            name=data["name"],
            batching=batching,
            storage=Storage(data["storage"]),
            dtype=data["dtype"],
            stored_dtype=data["stored_dtype"],
            tail=tuple(data["tail"]),
            pixels=pixels,
        )

    def features(self) -> dict[str, Any]:
        """The `datasets` feature(s) of this tensor's column(s)."""
        value = datasets.Value(self.stored_dtype)
        if self.storage is Storage.ARRAY:
            shape = (None, *self.stored_tail)
            columns = {self.name: ARRAY_TYPES[len(shape)](shape=shape, dtype=self.stored_dtype)}
        elif self.storage is Storage.LIST:
            columns = {self.name: datasets.List(value)}
        else:
            columns = {self.name: datasets.List(value), f"{self.name}_shape": datasets.List(datasets.Value("int32"))}
        if self.pixels is not None:
            columns.update(self.pixels.features(self.name))
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
            columns.update(spec.features())
        columns["id"] = datasets.Value("string")
        columns["source"] = datasets.Value("string")
        return datasets.Features(columns)

    def batch_rules(self, pad_token_id: int) -> dict[str, BatchRule]:
        """How each model input merges across rows: `input_ids`, `attention_mask`, `labels`, then every tensor."""
        return {**token_rules(pad_token_id), **{spec.name: spec.batch_rule for spec in self.tensors}}

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": [spec.to_dict() for spec in self.tensors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorLayout":
        return cls(tuple(TensorSpec.from_dict(spec) for spec in data["tensors"]))

    def pixel_storage(self) -> dict[str, str]:
        """How each floating point tensor is stored, for the metadata file."""
        return {
            spec.name: spec.pixels.describe() if spec.pixels is not None else spec.stored_dtype
            for spec in self.tensors
            if spec.dtype in FLOAT_DTYPES
        }


def probe_layout(outputs: list[dict[str, torch.Tensor]], image_processor=None, video_processor=None) -> TensorLayout:
    """Finds how to store each tensor from the processor's outputs for a few different rows.

    Args:
        outputs: `apply_chat_template(..., return_tensors="pt")` results for rows with differently sized
            images (and numbers of images), so that dimensions that vary show up as varying.
        image_processor: the processor's image processor, whose rescale/normalise table lets pixel values
            be stored as uint8 codes; without it they are stored as float32.
        video_processor: the processor's video processor, whose table makes the codes of `pixel_values_videos`
            (stored frame by frame: a video's frames differ, so there is no repeated frame to fold).
    """
    names = sorted({name for output in outputs for name in output if name not in NOT_STORED and name != "input_ids"})
    specs = []
    for name in names:
        present = [output for output in outputs if name in output]
        per_token = all(_is_per_token(output[name], output["input_ids"]) for output in present)
        shapes = [tuple((output[name][0] if per_token else output[name]).shape) for output in present]
        tails = {shape[1:] for shape in shapes}
        ndim = len(shapes[0])
        dtype = present[0][name].dtype
        stored_dtype = "int32" if not dtype.is_floating_point and dtype != torch.bool else str(dtype)[6:]
        if dtype.is_floating_point:
            stored_dtype = "float32"
        elif name in BYTE_MASKS and all(output[name].min() >= 0 and output[name].max() <= 1 for output in present):
            stored_dtype = "uint8"
        if ndim == 1:
            storage, tail = Storage.LIST, ()
        elif len(tails) == 1 and ndim in ARRAY_TYPES:
            storage, tail = Storage.ARRAY, shapes[0][1:]
        else:
            storage, tail = Storage.FLAT, ()
        pixels = None
        video = name == VIDEO_PIXELS
        pixel_processor = (video_processor or image_processor) if video else image_processor
        if name.startswith("pixel_values") and dtype.is_floating_point and pixel_processor is not None:
            samples = [output[name].float().numpy() for output in present]
            pixels = PixelStorage.find(pixel_processor, samples, tail, str(dtype), fold=not video)
            stored_dtype = "uint8" if pixels else stored_dtype
        specs.append(TensorSpec(
            name=name,
            batching=Batching.PER_TOKEN if per_token else _row_or_item(present, name),
            storage=storage,
            dtype=str(dtype),
            stored_dtype=stored_dtype,
            tail=tail,
            pixels=pixels,
        ))
    return TensorLayout(tuple(specs))


def _row_or_item(outputs: list[dict[str, torch.Tensor]], name: str) -> Batching:
    """Whether dimension 0 is the batch: the probe rows hold one image, then two, and a tensor whose first
    dimension stays 1 while a later one counts the images is per row (Mllama's pixels, aspect ratios)."""
    shapes = [tuple(output[name].shape) for output in outputs]
    if len(shapes) < 2 or shapes[0][0] != 1 or shapes[1][0] != 1:
        return Batching.PER_ITEM
    counts_images = any(first == 1 and second == 2 for first, second in zip(shapes[0][1:], shapes[1][1:]))
    return Batching.PER_ROW if counts_images else Batching.PER_ITEM


def _is_per_token(tensor: torch.Tensor, input_ids: torch.Tensor) -> bool:
    return tensor.ndim >= 2 and tensor.shape[0] == 1 and tensor.shape[1] == input_ids.shape[1]
