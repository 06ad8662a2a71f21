"""Every key a recipe may hold: axolotl's, with their meaning, and vlmdata's own under `vlmdata:`.

Each key has a check (`vlmdata.recipe.checks`) and the command options it fills ("train.lora_r" is the
`--lora-r` option of `vlmdata train`). Keys that fill nothing are axolotl's and mean nothing more here:
`processor_type` (always AutoProcessor), `skip_prepare_dataset` (the data is always prepared once, ahead of
training), `remove_unused_columns` (training keeps every column the shards hold)
and `strict` (unknown keys are always reported). The keys whose meaning spans several options (`datasets`,
`adapter`, `train_on_inputs`, the output folders) become options in `vlmdata.recipe.options`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmdata.executors import ENGINES
from vlmdata.labels import TRAIN_ON, TRUNCATE
from vlmdata.media.options import RESIZE_ALGORITHMS, RESIZE_MODES
from vlmdata.models.registry import template_names
from vlmdata.recipe.checks import (
    BadValue,
    Check,
    bf16,
    image_size,
    lora_target_modules,
    number,
    one_of,
    text,
    whole_number,
    yes_no,
)
from vlmdata.recipe.stages import FORMAT_CHOICES
from vlmdata.train.options import REPORTERS, SCHEDULERS

OWN_SECTION = "vlmdata"
ADAPTERS = ("lora", "qlora", "full")
# axolotl's name for "the template the tokenizer ships with": the packaged copy of it marks the replies.
TOKENIZER_DEFAULT = "tokenizer_default"


@dataclass(frozen=True)
class Key:
    """One recipe key.

    Attributes:
        name: as written in the recipe; vlmdata's own keys are named "vlmdata.<key>".
        check: turns the YAML value into the option value, or raises BadValue.
        fills: the "command.option" names the checked value fills.
    """

    name: str
    check: Check
    fills: tuple[str, ...] = ()


def chat_template(value: Any) -> str | None:
    """A packaged template, tokenizer_default (the family's own), or a Jinja file."""
    if value == TOKENIZER_DEFAULT:
        return None  # the tokenize command's default: the family's packaged template
    if isinstance(value, str) and (value in template_names() or Path(value).is_file()):
        return value
    raise BadValue(f"one of {', '.join(template_names())}, {TOKENIZER_DEFAULT}, or the path of a Jinja file")


def adapter(value: Any) -> str:
    """lora, qlora or full; empty means full fine-tuning, as in axolotl."""
    if value is None or value == "":
        return "full"
    return one_of(*ADAPTERS)(value)


def datasets_list(value: Any) -> list[dict[str, Any]]:
    """The shape of `datasets`; its entries are checked key by key by `vlmdata.recipe.load`."""
    if not isinstance(value, list) or not value or not all(isinstance(entry, dict) for entry in value):
        raise BadValue("a list of datasets, each with path and optionally type, split and field_messages")
    return value


_KEYS = (
    # The model and its processor
    Key("base_model", text, ("tokenize.model", "train.model")),
    Key("processor_type", one_of("AutoProcessor")),
    Key("chat_template", chat_template, ("tokenize.chat_template",)),
    # The data
    Key("datasets", datasets_list),
    Key("dataset_prepared_path", text),
    Key("skip_prepare_dataset", yes_no),
    Key("remove_unused_columns", yes_no),
    Key("sample_packing", yes_no, ("train.packing",)),
    Key("image_size", image_size, ("convert.image_size",)),
    Key("image_resize_algorithm", one_of(*RESIZE_ALGORITHMS), ("convert.resize_algorithm",)),
    Key("sequence_len", whole_number(minimum=1), ("tokenize.max_length",)),
    Key("train_on_inputs", yes_no),
    # What trains
    Key("adapter", adapter),
    Key("lora_r", whole_number(minimum=1), ("train.lora_r",)),
    Key("lora_alpha", whole_number(minimum=1), ("train.lora_alpha",)),
    Key("lora_dropout", number(minimum=0.0, maximum=1.0), ("train.lora_dropout",)),
    Key("lora_target_modules", lora_target_modules, ("train.lora_target_modules",)),
    Key("load_in_8bit", yes_no, ("train.load_in_8bit",)),
    Key("load_in_4bit", yes_no, ("train.load_in_4bit",)),
    # How it trains
    Key("micro_batch_size", whole_number(minimum=1), ("train.batch_size",)),
    Key("gradient_accumulation_steps", whole_number(minimum=1), ("train.gradient_accumulation_steps",)),
    Key("num_epochs", number(minimum=0.0, above_minimum=True), ("train.epochs",)),
    Key("max_steps", whole_number(minimum=1), ("train.max_steps",)),
    Key("learning_rate", number(minimum=0.0), ("train.learning_rate",)),
    Key("lr_scheduler", one_of(*SCHEDULERS), ("train.lr_scheduler",)),
    Key("warmup_steps", whole_number(minimum=0), ("train.warmup_steps",)),
    Key("bf16", bf16, ("train.bf16",)),
    Key("gradient_checkpointing", yes_no, ("train.gradient_checkpointing",)),
    # The attention kernels: at most one of them true (`vlmdata.recipe.options`, train --attn-implementation)
    Key("flash_attention", yes_no),
    Key("sdp_attention", yes_no),
    Key("eager_attention", yes_no),
    Key("seed", whole_number(), ("train.seed",)),
    Key("val_set_size", number(minimum=0.0), ("train.val_set_size",)),
    Key("eval_steps", whole_number(minimum=1), ("train.eval_steps",)),
    Key("logging_steps", whole_number(minimum=1), ("train.logging_steps",)),
    Key("save_steps", whole_number(minimum=1), ("train.save_steps",)),
    Key("save_total_limit", whole_number(minimum=1), ("train.save_total_limit",)),
    Key("report_to", one_of(*REPORTERS), ("train.report_to",)),
    Key("output_dir", text, ("train.out_dir",)),
    Key("strict", yes_no),
    # vlmdata's own
    Key("vlmdata.normalised_dir", text, ("convert.out_dir", "tokenize.data")),
    Key("vlmdata.shards_dir", text, ("tokenize.out_dir", "train.shards")),
    Key("vlmdata.format", one_of(*FORMAT_CHOICES), ("convert.source_format",)),
    Key("vlmdata.media_root", text, ("convert.media_root",)),
    Key("vlmdata.resize_mode", one_of(*RESIZE_MODES), ("convert.resize_mode",)),
    Key("vlmdata.audio_sampling_rate", whole_number(minimum=1), ("convert.audio_sampling_rate",)),
    Key("vlmdata.video_fps", number(minimum=0, above_minimum=True), ("convert.video_fps",)),
    Key("vlmdata.video_frames", whole_number(minimum=1), ("convert.video_frames",)),
    Key("vlmdata.max_video_frames", whole_number(minimum=1), ("convert.max_video_frames",)),
    Key("vlmdata.max_video_seconds", number(minimum=0, above_minimum=True), ("convert.max_video_seconds",)),
    Key("vlmdata.train_on", one_of(*TRAIN_ON), ("tokenize.train_on",)),
    Key("vlmdata.truncate", one_of(*TRUNCATE), ("tokenize.truncate",)),
    Key("vlmdata.video_as_images", yes_no, ("tokenize.video_as_images",)),
    Key("vlmdata.template_date", text, ("tokenize.template_date",)),
    Key("vlmdata.num_proc", whole_number(minimum=1), ("convert.num_proc", "tokenize.num_proc")),
    Key("vlmdata.engine", one_of(*ENGINES), ("convert.engine", "tokenize.engine")),
    Key("vlmdata.ray_address", text, ("convert.ray_address", "tokenize.ray_address")),
    Key("vlmdata.ray_workers", whole_number(minimum=1), ("convert.num_workers", "tokenize.num_workers")),
    Key("vlmdata.rows_per_unit", whole_number(minimum=16), ("convert.rows_per_unit", "tokenize.rows_per_unit")),
    Key("vlmdata.strict", yes_no, ("convert.strict", "tokenize.strict")),
    Key("vlmdata.train_vision", yes_no, ("train.train_vision",)),
)
KEYS: dict[str, Key] = {key.name: key for key in _KEYS}

# One entry of `datasets`: axolotl's keys that mean something for a chat dataset with images.
DATASET_KEYS: dict[str, Check] = {
    "path": text,
    "type": one_of("chat_template"),
    "split": text,
    "field_messages": text,
}

# axolotl keys vlmdata does not support: accepted when empty (as axolotl's own examples leave many of them),
# refused with a clear message when set.
UNSUPPORTED = (
    "optimizer", "weight_decay", "warmup_ratio", "evals_per_epoch", "saves_per_epoch", "fp16", "tf32",
    "gradient_checkpointing_kwargs",
    "ddp_find_unused_parameters", "lora_model_dir", "lora_target_linear", "pad_to_sequence_len",
    "group_by_length", "resume_from_checkpoint", "local_rank", "debug", "deepspeed", "fsdp", "fsdp_config",
    "wandb_project", "wandb_entity", "wandb_watch", "wandb_name", "wandb_log_model",
)


def is_empty(value: Any) -> bool:
    """Whether a value leaves a setting unset: what axolotl's example configs write for keys they do not use."""
    return value is None or value is False or value == "" or value == [] or value == {}
