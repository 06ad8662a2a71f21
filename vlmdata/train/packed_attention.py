"""Attention over a packed sequence computed sample by sample, so that a pack costs what its samples cost alone.

With sdpa, a pack of n samples of length l is one L×L product under a block-diagonal mask (L = n·l): n times the
work of the samples alone, most of it masked out. `sdpa_packed` cuts the pack at the restarts of its positions and
runs sdpa on each sample's block with that block of the mask transformers built, which is every key the sample's
queries may see: the same numbers, at the cost of Σ l². Without restarts (vision towers, unpacked batches) it is
sdpa itself. It is registered with transformers under SDPA_PACKED, with sdpa's mask function.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

SDPA_PACKED = "sdpa_packed"


def sample_spans(positions: torch.Tensor) -> list[tuple[int, int]]:
    """The [start, end) spans of one row's samples: a sample starts where its position is 0 and the one before is not.

    A run of positions 0 (the trailing padding of a batch) stays one span; the mask keeps its tokens apart.
    """
    restarts = (positions == 0) & (torch.nn.functional.pad(positions[:-1], (1, 0), value=1) != 0)
    starts = torch.nonzero(restarts).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    return list(zip(starts, [*starts[1:], positions.shape[0]]))


def packed_sdpa_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """sdpa on each sample's block of the pack (query and key `[batch, heads, L, head_dim]`, as sdpa takes them)."""
    causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    if position_ids is None or attention_mask is None or not causal or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    positions = position_ids[0] if position_ids.ndim == 3 else position_ids  # M-RoPE: the text row
    rows = [_row_spans(positions, attention_mask, row) for row in range(query.shape[0])]
    if all(spans is None for spans in rows):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = []
    for row, spans in enumerate(rows):
        mask = attention_mask[min(row, attention_mask.shape[0] - 1)][None]
        spans = spans or [(0, query.shape[2])]
        outputs.append(torch.cat([
            sdpa_attention_forward(module, query[row:row + 1, :, start:end], key[row:row + 1, :, start:end],
                                   value[row:row + 1, :, start:end], _causal_or(mask[..., start:end, start:end]),
                                   **kwargs)[0]
            for start, end in spans], dim=1))
    return torch.cat(outputs, dim=0), None


def _row_spans(positions: torch.Tensor, attention_mask: torch.Tensor, row: int) -> list[tuple[int, int]] | None:
    """The sample spans of one batch row, or None when it holds one sample or its mask is not block-diagonal."""
    spans = sample_spans(positions[min(row, positions.shape[0] - 1)])
    mask = attention_mask[min(row, attention_mask.shape[0] - 1)]
    return spans if len(spans) > 1 and _block_diagonal(mask, spans) else None


def _causal_or(block: torch.Tensor) -> torch.Tensor | None:
    """None where a sample's block of the mask is plainly causal: sdpa then takes `is_causal`, and its fastest kernels."""
    causal = torch.ones(block.shape[-2:], dtype=torch.bool, device=block.device).tril()
    return None if block.dtype == torch.bool and torch.equal(block[0, 0], causal) and block.shape[1] == 1 else block


def _block_diagonal(mask: torch.Tensor, spans: list[tuple[int, int]]) -> bool:
    """Whether a boolean mask lets no query see a key outside its own span (else the whole product is taken)."""
    if mask.dtype != torch.bool:
        return False
    inside = sum(int(mask[..., start:end, start:end].sum()) for start, end in spans)
    return inside == int(mask.sum())


def use_packed_attention(model: torch.nn.Module) -> bool:
    """Switches a language model that attends with sdpa to SDPA_PACKED; its vision side keeps its own attention."""
    config = model.config
    if "text_config" not in config.sub_configs or config.get_text_config()._attn_implementation != "sdpa":
        return False
    model.set_attn_implementation({"text_config": SDPA_PACKED})
    return True


AttentionInterface.register(SDPA_PACKED, packed_sdpa_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(SDPA_PACKED, sdpa_mask)
