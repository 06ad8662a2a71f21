"""transformers' Trainer, counting the tokens of each optimizer step: those it trains on and those it reads.

The Trainer's loss is a token mean over the step; the number of tokens it averaged is what makes losses of
packed and unpacked runs comparable (Σ loss × tokens / Σ tokens over an epoch is the same whichever way the rows
were batched), so it is kept beside each logged loss. The tokens read (`num_input_tokens_seen`) leave out
padding: the attention mask's ones in ordinary batches, the trailing padding of packed ones (which have no
attention mask).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from vlmdata.labels import IGNORE_INDEX


class StepTokens:
    """The label tokens trained since the last log, summed over micro-batches and processes."""

    def __init__(self):
        self.since_log = 0

    def take(self) -> int:
        count, self.since_log = self.since_log, 0
        return count


class CountingTrainer(Trainer):
    """A Trainer that adds each step's trained label tokens to `step_tokens`."""

    def __init__(self, *args, step_tokens: StepTokens, pad_token_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_tokens = step_tokens
        self.pad_token_id = pad_token_id

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        # The model shifts labels by one: the first label of a row is never a target.
        trained = sum(int(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum()) for batch in batches if "labels" in batch)
        read = sum(self._tokens_read(batch) for batch in batches)
        counts = torch.tensor([trained, read], device=device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        self.step_tokens.since_log += int(counts[0])
        self.state.num_input_tokens_seen += int(counts[1])
        return batches, num_items_in_batch

    def _tokens_read(self, batch) -> int:
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return int(mask.sum())
        # A packed row ends in padding: pad tokens at position 0, after the last sample.
        positions = batch["position_ids"][0] if batch["position_ids"].ndim == 3 else batch["position_ids"]
        padding = (positions == 0) & (batch["input_ids"] == self.pad_token_id)
        trailing = padding.flip(-1).int().cumprod(-1).sum()
        return int(batch["input_ids"].numel() - trailing)
