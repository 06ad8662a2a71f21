"""Stage 3: fine-tuning on token shards (collator, model set-up, the Trainer run).

The names below are imported on first use, so that `vlmdata.train.options` (the command line's choices) can be
read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmdata.train.collator import PixelDecoding, ShardCollator
    from vlmdata.train.model import DEFAULT_LORA_TARGETS, AdapterOptions
    from vlmdata.train.run import TrainOptions, TrainSummary, train

_MODULE_OF = {
    "DEFAULT_LORA_TARGETS": "vlmdata.train.model",
    "AdapterOptions": "vlmdata.train.model",
    "PixelDecoding": "vlmdata.train.collator",
    "ShardCollator": "vlmdata.train.collator",
    "TrainOptions": "vlmdata.train.run",
    "TrainSummary": "vlmdata.train.run",
    "train": "vlmdata.train.run",
}

__all__ = ["DEFAULT_LORA_TARGETS", "AdapterOptions", "PixelDecoding", "ShardCollator", "TrainOptions", "TrainSummary", "train"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
