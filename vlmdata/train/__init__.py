"""Stage 3: fine-tuning on token shards (collator, model set-up, the Trainer run)."""

from vlmdata.train.collator import PixelDecoding, ShardCollator
from vlmdata.train.model import DEFAULT_LORA_TARGETS, AdapterOptions
from vlmdata.train.run import TrainOptions, TrainSummary, train

__all__ = ["DEFAULT_LORA_TARGETS", "AdapterOptions", "PixelDecoding", "ShardCollator", "TrainOptions", "TrainSummary", "train"]
