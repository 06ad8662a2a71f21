"""Packed batches: the rows of a pack laid one after the other in one sequence, each sample as if alone.

A packed row keeps every sample apart without an attention mask: `position_ids` restart at 0 for each sample,
and transformers then builds a block-diagonal mask from the restarts (sdpa, eager and flex attention; flash
attention 2 reads the same restarts as its varlen boundaries). The first label of each sample is -100, so no
sample learns to predict the next one's first token, and trailing padding has position 0 and label -100.
Every model input is merged by its spec's rule (`BatchRule.concat`): per-token tensors along the sequence,
per-image tensors along the images, grids stacked.

Families need more than that, and `packing_refusal` says which cannot be packed exactly:
- Qwen2-VL and its successors rotate by M-RoPE, three position rows computed from the images' grids: the
  model's own rope-index function runs on each sample alone, and `position_ids` is `[4, batch, L]`, the text
  row (whose restarts separate the samples) above the three M-RoPE rows.
- Gemma 3 lets each image's tokens attend to each other both ways; transformers' packed-sequence detection
  looks that overlay up at the restarted positions instead of the tokens' indices, so one sample's image block
  spills over the others. The collator passes the per-layer-type masks itself (`LayerTypeMasks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from vlmdata.batching import stack_padded
from vlmdata.errors import FatalError
from vlmdata.labels import IGNORE_INDEX
from vlmdata.models.registry import get_family
from vlmdata.pack_plan import PackOptions, PackPlan, media_token_counts, plan_packs
from vlmdata.shards import TensorLayout, arrow_row, model_inputs
from vlmdata.tensor_spec import VIDEO_PIXELS
from vlmdata.train.packed_attention import SDPA_PACKED

# Families whose every layer sees only the restarted positions and the block-diagonal mask they make.
PLAIN = ("gemma3n", "gemma4", "llava", "pixtral", "mistral3", "llama4", "internvl", "llava_onevision", "smolvlm")
# Families whose rotary positions come from the images' grids (M-RoPE).
MROPE = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "glm4v")
# Families whose video rows and image rows cannot share a pack: transformers counts GLM-4.1V's video frame tokens
# as image tokens once a sequence holds both, and its forward then fails.
VIDEOS_APART = ("glm4v",)
# Families that take their full and sliding-window masks from the collator, each image's block inside its sample.
LAYER_TYPE_MASKS = ("gemma3",)
REFUSED = {
    "mllama": "Mllama's cross-attention lets the tokens of one sample attend to the images of another in the "
              "same sequence; train it without --packing.",
    "qwen3_5": "Qwen3.5's linear-attention layers carry their state from one sample to the next unless the "
               "flash-linear-attention kernels reset it at each sample's start, and those run on a GPU only; "
               "train it without --packing.",
    "lfm2_vl": "LFM2-VL's short-convolution layers reach back across the start of each sample into the last tokens "
               "of the one before it, which restarted positions do not stop; train it without --packing.",
}


def packing_refusal(family: str | None, pack_length: int, config=None) -> str | None:
    """Why shards of `family` cannot be packed with `pack_length`, or None when they can.

    Args:
        config: the model's config, for the limits that depend on it (Llama 4's).
    """
    if family in REFUSED:
        return REFUSED[family]
    limit = llama4_pack_limit(config) if family == "llama4" and config is not None else None
    if limit is not None and pack_length > limit:
        return (f"Llama 4 packs exactly only up to {limit} tokens: its layers without rotary positions scale "
                f"attention by the absolute position in the sequence from there on; pass --pack-length {limit} or less.")
    if family not in PLAIN + MROPE + LAYER_TYPE_MASKS:
        return f"Packing has not been checked for the {family or 'unknown'} family; train it without --packing."
    return None


def llama4_pack_limit(config) -> int | None:
    """The longest pack whose every token Llama 4 scales as it would the same token alone: its NoPE layers
    multiply queries by a factor that leaves 1 once the absolute position p has (p + 1) >= floor_scale."""
    text = config.get_text_config()
    if not getattr(text, "attn_temperature_tuning", False):
        return None
    return int(text.floor_scale) - 1


def check_packable(family: str | None, pack_length: int, config=None) -> None:
    """Raises the one-sentence refusal when `family` cannot be packed."""
    refusal = packing_refusal(family, pack_length, config)
    if refusal is not None:
        raise FatalError(refusal)


def plan_rows(rows, options: PackOptions, seed: int, processor, family: str | None, epoch: int = 0) -> PackPlan:
    """The pack plan of shard rows (a `datasets.Dataset`), counting media tokens for the media budget."""
    table = rows.with_format("arrow")
    media = None
    if options.media_budget is not None:
        tokenizer = getattr(processor, "tokenizer", processor)
        media_tokens = get_family(family).media_tokens if family else ()
        ids = {tokenizer.convert_tokens_to_ids(token) for token in media_tokens} - {None, tokenizer.unk_token_id}
        media = media_token_counts(table["input_ids"], ids)
    ids = [str(value) for value in table["id"].to_pylist()] if "id" in rows.column_names else None
    groups = None
    if family in VIDEOS_APART and VIDEO_PIXELS in rows.column_names:
        groups = _item_counts(table[VIDEO_PIXELS]) > 0
    return plan_packs(table["length"].to_numpy(), options, seed, epoch, media=media, row_ids=ids, groups=groups)


def _item_counts(column: pa.ChunkedArray) -> np.ndarray:
    """Each row's number of entries along the first axis of a stored tensor (0 where it is missing)."""
    array = column.combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    return pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)


def packing_collator(layout: TensorLayout, pad_token_id: int, model: torch.nn.Module, family: str | None,
                     seen_ids: list[str] | None = None) -> "PackingCollator":
    """The packing collator for `model` of `family`, with the positions or masks the family needs."""
    return PackingCollator(
        layout, pad_token_id, float_dtype=model.dtype, seen_ids=seen_ids, decode_pixels=False,
        rope_index=rope_index_of(model) if family in MROPE else None,
        layer_masks=LayerTypeMasks.for_model(model) if family in LAYER_TYPE_MASKS else None,
    )


def rope_index_of(model: torch.nn.Module) -> Callable | None:
    """The model's own M-RoPE function (`get_rope_index` of its inner model), or None for a 1-D rotary model."""
    for module in model.modules():
        if hasattr(module, "get_rope_index") and hasattr(module, "language_model"):
            return module.get_rope_index
    return None


@dataclass(frozen=True)
class LayerTypeMasks:
    """Gemma 3's attention masks for packed rows: `{"full_attention": 4D, "sliding_attention": 4D}`.

    A token attends to the earlier tokens of its own sample and to every token of its own image; on sliding-window
    layers only to those less than `sliding_window` tokens back. Padding tokens attend to themselves.

    Attributes:
        sliding_window: the model's window (`text_config.sliding_window`).
        additive_dtype: for eager attention, which adds its mask to the scores, the model's dtype; None gives the
            boolean masks sdpa and flex attention take.
    """

    sliding_window: int
    additive_dtype: torch.dtype | None = None

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "LayerTypeMasks":
        config = model.config.get_text_config()
        implementation = getattr(config, "_attn_implementation", "sdpa")
        if implementation not in ("sdpa", SDPA_PACKED, "eager", "flex_attention"):
            raise FatalError(f"Gemma 3 packs with sdpa, eager or flex attention, whose masks can hold each image's "
                             f"two-way block; {implementation} cannot: pass --attn-implementation sdpa.")
        return cls(config.sliding_window, model.dtype if implementation == "eager" else None)

    def __call__(self, text_positions: torch.Tensor, token_type_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The masks of a batch, from its restarting `[batch, L]` positions and its image token types."""
        sample = (text_positions == 0).cumsum(-1)  # a padding token, at position 0, is a sample of its own
        is_image = token_type_ids == 1
        starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
        image = torch.where(is_image, starts.cumsum(-1), 0)  # 0: no image
        index = torch.arange(sample.shape[1])
        causal = index[None, :, None] >= index[None, None, :]
        same_sample = sample[:, :, None] == sample[:, None, :]
        same_image = (image[:, :, None] == image[:, None, :]) & (image[:, :, None] > 0)
        full = same_sample & (causal | same_image)
        sliding = full & (index[None, None, :] > index[None, :, None] - self.sliding_window)
        return {"full_attention": self._form(full), "sliding_attention": self._form(sliding)}

    def _form(self, allowed: torch.Tensor) -> torch.Tensor:
        allowed = allowed[:, None]
        if self.additive_dtype is None:
            return allowed
        return torch.zeros(allowed.shape, dtype=self.additive_dtype).masked_fill(~allowed, torch.finfo(self.additive_dtype).min)


@dataclass
class PackingCollator:
    """Turns a list of packs (each a list of shard rows) into one batch of packed sequences.

    Attributes:
        layout: the shards' tensor layout.
        pad_token_id: the tokenizer's pad token.
        float_dtype: floating point inputs are cast to it (the model's dtype), if given.
        seen_ids: when a list, the `id` of every row packed is appended to it.
        decode_pixels: with False, pixel codes that merge without padding stay codes, for `PixelDecoding`.
        rope_index: the model's M-RoPE function, for the families that rotate by it (`rope_index_of`).
        layer_masks: the per-layer-type masks, for the families that take them from the collator.
    """

    layout: TensorLayout
    pad_token_id: int
    float_dtype: torch.dtype | None = None
    seen_ids: list[str] | None = field(default=None, repr=False)
    decode_pixels: bool = True
    rope_index: Callable | None = field(default=None, repr=False)
    layer_masks: LayerTypeMasks | None = None

    def __call__(self, packs: list[list[dict[str, Any] | pa.Table]]) -> dict[str, Any]:
        packed = [self.pack(rows) for rows in packs]
        rules = self.layout.batch_rules(self.pad_token_id)
        batch: dict[str, Any] = {}
        for name, rule in rules.items():
            tensors = [row.get(name) for row in packed]
            if name == "attention_mask" or all(tensor is None for tensor in tensors):
                continue
            batch[name] = rule.stack(tensors)
            if self.float_dtype is not None and batch[name].is_floating_point():
                batch[name] = batch[name].to(self.float_dtype)
        positions = [row["position_ids"] for row in packed]
        # [4, 1, L] (M-RoPE) rows are padded and stacked along their second axis, [1, L] along their first.
        batch["position_ids"] = (stack_padded([p.transpose(0, 1) for p in positions], 0).transpose(0, 1).squeeze(2)
                                 if positions[0].ndim == 3 else stack_padded(positions, 0))
        if self.layer_masks is not None:
            text_positions = batch["position_ids"][0] if batch["position_ids"].ndim == 3 else batch["position_ids"]
            batch["attention_mask"] = self.layer_masks(text_positions, batch["token_type_ids"])
        batch["use_cache"] = False
        return batch

    def pack(self, rows: list[dict[str, Any] | pa.Table]) -> dict[str, torch.Tensor]:
        """The rows of one pack as the model inputs of one sequence, with its `position_ids`."""
        rows = [arrow_row(row) if isinstance(row, pa.Table) else row for row in rows]
        if self.seen_ids is not None:
            self.seen_ids.extend(str(row.get("id", "")) for row in rows)
        inputs = [model_inputs(row, self.layout, self.decode_pixels) for row in rows]
        lengths = [sample["input_ids"].shape[1] for sample in inputs]
        for sample in inputs:
            sample["labels"] = sample["labels"].clone()
            sample["labels"][:, 0] = IGNORE_INDEX  # never predicted from the previous sample's last token
        packed = {}
        for name, rule in self.layout.batch_rules(self.pad_token_id).items():
            tensors = [sample.get(name) for sample in inputs]
            if name != "attention_mask" and any(tensor is not None for tensor in tensors):
                packed[name] = rule.concat(tensors, lengths)
        text_positions = torch.cat([torch.arange(length) for length in lengths])[None]
        if self.rope_index is None:
            packed["position_ids"] = text_positions
        else:
            rope = torch.cat([self._mrope(sample) for sample in inputs], dim=2)
            packed["position_ids"] = torch.cat([text_positions[None], rope])
        return packed

    def _mrope(self, sample: dict[str, torch.Tensor]) -> torch.Tensor:
        """One sample's three M-RoPE rows, `[3, 1, L]`, as the model computes them for the sample alone."""
        length = sample["input_ids"].shape[1]
        grids = {name: sample[name] for name in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
                 if sample.get(name) is not None}
        if not grids or "mm_token_type_ids" not in sample:
            return torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
        with torch.no_grad():
            positions, _ = self.rope_index(input_ids=sample["input_ids"], mm_token_type_ids=sample["mm_token_type_ids"],
                                           **grids)
        return positions.to(torch.long)


class PackedRows(torch.utils.data.Dataset):
    """The packs of a plan for a data loader: item `i` is the list of one-row Arrow tables of pack `i`."""

    def __init__(self, rows: torch.utils.data.Dataset, packs: list[list[int]]):
        self.rows = rows
        self.packs = packs

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int):
        return [self.rows[row] for row in self.packs[int(index)]]
