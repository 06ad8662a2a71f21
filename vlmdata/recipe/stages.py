"""The three stages as the commands and recipes start them: each one's options and their defaults, how they
become the arguments of the stage's function, and the summary it prints.

Options are keyed by the command's parameter names (`source_format`, `lora_r`, ...). `vlmdata convert`,
`tokenize` and `train` declare their options with these defaults and `vlmdata run` fills them from a recipe,
so a stage gets the same arguments, and records the same settings, whichever way it is started.

Example:
    >>> options = {**CONVERT_DEFAULTS, "sources": ["rows.jsonl"], "out_dir": "out", "image_size": "512"}
    >>> convert_arguments(options)["media_options"].resize
    Resize(width=512, height=512, mode='letterbox', algorithm='bilinear')
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmdata.media.options import MediaOptions, Resize
from vlmdata.executors import ROWS_PER_UNIT, openmp_threads_wait_passively
from vlmdata.models.registry import DEFAULT_TEMPLATE_DATE
from vlmdata.pack_plan import DEFAULT_WINDOW
from vlmdata.readers import FORMATS
from vlmdata.readers.options import ReaderOptions

FORMAT_CHOICES = ("auto", *FORMATS)  # auto: detected from the first source

_MEDIA, _READER = MediaOptions(), ReaderOptions()

# Every option of each command but its required ones (the sources, folders and model), with its default.
CONVERT_DEFAULTS: dict[str, Any] = {
    "source_format": "auto",
    "split": _READER.split,
    "field_messages": _READER.field_messages,
    "media_root": _MEDIA.media_root,
    "image_size": None,
    "resize_mode": None,  # None: the mode the image size implies
    "resize_algorithm": Resize.algorithm,
    "audio_sampling_rate": _MEDIA.audio_sampling_rate,
    "timeout": _MEDIA.timeout,
    "retries": _MEDIA.retries,
    "download_deadline": _MEDIA.download_deadline,
    "max_download_bytes": _MEDIA.max_download_bytes,
    "block_private_urls": _MEDIA.block_private_urls,
    "max_file_bytes": _MEDIA.max_file_bytes,
    "max_image_pixels": _MEDIA.max_image_pixels,
    "video_frames": _MEDIA.video_frames,
    "video_fps": _MEDIA.video_fps,
    "max_video_frames": _MEDIA.max_video_frames,
    "max_video_seconds": _MEDIA.max_video_seconds,
    "num_proc": 1,
    "engine": "local",
    "ray_address": None,
    "num_workers": None,
    "rows_per_unit": ROWS_PER_UNIT,
    "strict": False,
    "overwrite": False,
    "quiet": False,
}
# tokenize's and train's own defaults are in modules that import torch, which the command line must not.
TOKENIZE_DEFAULTS: dict[str, Any] = {
    "chat_template": None,  # None: the family's packaged template
    "max_length": None,
    "truncate": "none",
    "train_on": "assistant",
    "template_date": DEFAULT_TEMPLATE_DATE,
    "video_as_images": False,
    "num_proc": 1,
    "engine": "local",
    "ray_address": None,
    "num_workers": None,
    "rows_per_unit": ROWS_PER_UNIT,
    "strict": False,
    "overwrite": False,
    "quiet": False,
}
TRAIN_DEFAULTS: dict[str, Any] = {
    "model": None,  # None: the model the shards were made for
    "adapter": "lora",
    "lora_r": 16,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target_modules": None,  # None: the language model's attention and MLP projections
    "train_vision": False,
    "epochs": 1.0,
    "max_steps": None,
    "learning_rate": 2e-4,
    "lr_scheduler": "cosine",
    "warmup_steps": 0,
    "batch_size": 1,
    "gradient_accumulation_steps": 1,
    "bf16": None,  # None: when the GPU supports it
    "gradient_checkpointing": False,
    "seed": 42,
    "save_steps": None,
    "save_total_limit": 2,
    "val_set_size": 0.0,
    "eval_steps": None,
    "logging_steps": 1,
    "load_in_4bit": False,
    "load_in_8bit": False,
    "num_workers": 0,
    "log_rows": False,
    "report_to": None,  # None: tensorboard when installed
    "attn_implementation": None,  # None: transformers' choice
    "packing": False,
    "pack_length": None,  # None: the shards' max_length, else 4096
    "pack_media_budget": None,
    "pack_window": DEFAULT_WINDOW,
    "resume": False,
    "resume_from": None,
    "overwrite": False,
    "quiet": False,
}


class OptionError(ValueError):
    """Options that do not go together, or a value the stage cannot take.

    Attributes:
        option: the command-line option at fault ("--image-size"), or None when it is a combination.
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


def convert_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """The convert command's options -> the keyword arguments of `vlmdata.convert.convert`."""
    image_size, resize_mode = options["image_size"], options["resize_mode"]
    if resize_mode and not image_size:
        raise OptionError("--resize-mode needs --image-size.")
    try:
        resize = Resize.parse(image_size, resize_mode, options["resize_algorithm"]) if image_size else None
    except ValueError as error:
        raise OptionError(str(error), "--image-size") from None
    media_root = options["media_root"]
    # The command line checks this itself; a recipe's folder is only checked here.
    if media_root is not None and not os.path.isdir(media_root):
        raise OptionError(f"the media root {media_root} is not a folder.", "--media-root")
    media_options = MediaOptions(
        resize=resize,
        audio_sampling_rate=options["audio_sampling_rate"],
        media_root=media_root,
        timeout=options["timeout"],
        retries=options["retries"],
        download_deadline=options["download_deadline"],
        max_download_bytes=options["max_download_bytes"],
        block_private_urls=options["block_private_urls"],
        max_file_bytes=options["max_file_bytes"],
        max_image_pixels=options["max_image_pixels"],
        video_frames=options["video_frames"],
        video_fps=options["video_fps"],
        max_video_frames=options["max_video_frames"],
        max_video_seconds=options["max_video_seconds"],
    )
    reader_options = ReaderOptions(
        split=options["split"],
        field_messages=options["field_messages"],
        media_root=media_root,
        max_file_bytes=options["max_file_bytes"],
    )
    return {
        "sources": list(options["sources"]),
        "out_dir": options["out_dir"],
        "format": options["source_format"],
        "reader_options": reader_options,
        "media_options": media_options,
        "num_proc": options["num_proc"],
        "engine": options["engine"],
        "ray_address": options["ray_address"],
        "num_workers": options["num_workers"],
        "rows_per_unit": options["rows_per_unit"],
        "strict": options["strict"],
        "overwrite": options["overwrite"],
        "progress": not options["quiet"],
    }


def tokenize_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """The tokenize command's options -> the keyword arguments of `vlmdata.tokenize.tokenize`."""
    return {
        "data_dir": options["data"],
        "out_dir": options["out_dir"],
        "model": options["model"],
        "chat_template": options["chat_template"],
        "train_on": options["train_on"],
        "max_length": options["max_length"],
        "truncate": options["truncate"],
        "template_date": options["template_date"],
        "video_as_images": options["video_as_images"],
        "num_proc": options["num_proc"],
        "engine": options["engine"],
        "ray_address": options["ray_address"],
        "num_workers": options["num_workers"],
        "rows_per_unit": options["rows_per_unit"],
        "strict": options["strict"],
        "overwrite": options["overwrite"],
        "progress": not options["quiet"],
    }


def train_arguments(options: Mapping[str, Any]) -> dict[str, Any]:
    """The train command's options -> the keyword arguments of `vlmdata.train.train` (imports torch)."""
    if options["load_in_4bit"] and options["load_in_8bit"]:
        raise OptionError("--load-in-4bit and --load-in-8bit exclude each other.")
    if options["resume"] and options["resume_from"]:
        raise OptionError("--resume and --resume-from exclude each other.")
    from vlmdata.train import DEFAULT_LORA_TARGETS, AdapterOptions, TrainOptions

    adapter = AdapterOptions(
        adapter=options["adapter"],
        lora_r=options["lora_r"],
        lora_alpha=options["lora_alpha"],
        lora_dropout=options["lora_dropout"],
        lora_target_modules=options["lora_target_modules"] or DEFAULT_LORA_TARGETS,
        train_vision=options["train_vision"],
    )
    quantization = "4bit" if options["load_in_4bit"] else "8bit" if options["load_in_8bit"] else None
    training = TrainOptions(
        adapter=adapter,
        epochs=options["epochs"],
        max_steps=options["max_steps"],
        learning_rate=options["learning_rate"],
        lr_scheduler=options["lr_scheduler"],
        warmup_steps=options["warmup_steps"],
        batch_size=options["batch_size"],
        gradient_accumulation_steps=options["gradient_accumulation_steps"],
        bf16=options["bf16"],
        gradient_checkpointing=options["gradient_checkpointing"],
        seed=options["seed"],
        save_steps=options["save_steps"],
        save_total_limit=options["save_total_limit"],
        val_set_size=options["val_set_size"],
        eval_steps=options["eval_steps"],
        logging_steps=options["logging_steps"],
        quantization=quantization,
        num_workers=options["num_workers"],
        log_rows=options["log_rows"],
        report_to=options["report_to"],
        attn_implementation=options["attn_implementation"],
        packing=options["packing"],
        pack_length=options["pack_length"],
        pack_media_budget=options["pack_media_budget"],
        pack_window=options["pack_window"],
    )
    return {
        "shards_source": options["shards"],
        "out_dir": options["out_dir"],
        "model": options["model"],
        "options": training,
        "resume": options["resume_from"] or options["resume"],
        "overwrite": options["overwrite"],
        "progress": not options["quiet"],
    }


def run_convert(options: Mapping[str, Any]):
    """Runs convert on the command's options; returns its ConvertSummary."""
    from vlmdata.convert import convert

    return convert(**convert_arguments(options))


def run_tokenize(options: Mapping[str, Any]):
    """Runs tokenize on the command's options; returns its TokenizeSummary."""
    arguments = tokenize_arguments(options)
    openmp_threads_wait_passively()  # before tokenize imports torch, which reads it then
    from vlmdata.tokenize import tokenize

    return tokenize(**arguments)


def run_train(options: Mapping[str, Any]):
    """Runs train on the command's options; returns its TrainSummary."""
    from vlmdata.train import train

    return train(**train_arguments(options))


def convert_summary_lines(summary) -> list[str]:
    """What `vlmdata convert` prints once it is done."""
    out = Path(summary.out_dir)
    lines = ["", f"Converted {summary.rows_written} of {summary.rows_read} rows in {summary.elapsed_s:.1f} s -> {out}"]
    figures = [
        ("rows read", summary.rows_read),
        ("rows written", summary.rows_written),
        ("rows rejected", summary.rows_rejected),
        *_media_figures(summary),
        ("shard size", _human_bytes(summary.output_bytes)),
        *_engine_figures(summary),
    ]
    lines += [f"  {label:<14} {value}" for label, value in figures]
    return lines + _rejects_lines(summary, out)


def tokenize_summary_lines(summary) -> list[str]:
    """What `vlmdata tokenize` prints once it is done."""
    out = Path(summary.out_dir)
    lines = ["", f"Tokenized {summary.rows_written} of {summary.rows_read} rows in {summary.elapsed_s:.1f} s -> {out}"]
    percentiles = summary.length_percentiles
    figures = [
        ("model", f"{summary.model} ({summary.family}, template {summary.template})"),
        ("rows read", summary.rows_read),
        ("rows written", summary.rows_written),
        ("rows rejected", summary.rows_rejected),
        ("tokens", summary.tokens),
        ("trained tokens", f"{summary.trained_tokens} ({summary.trained_fraction:.1%})"),
        ("length p50/p90/max", "/".join(str(percentiles.get(k, "-")) for k in ("p50", "p90", "max"))),
        *_media_figures(summary),
        ("shard size", _human_bytes(summary.output_bytes)),
        ("bytes per sample", _human_bytes(summary.bytes_per_sample)),
        *_engine_figures(summary),
    ]
    lines += [f"  {label:<18} {value}" for label, value in figures]
    return lines + _rejects_lines(summary, out)


def _engine_figures(summary) -> list[tuple[str, str]]:
    engine = summary.engine
    if engine.get("engine") != "ray":
        return []
    resumed = f", {engine['units_resumed']} kept from an interrupted run" if engine.get("units_resumed") else ""
    return [("engine", f"ray, {_counted(engine['workers'], 'worker')} on {_counted(engine['nodes'], 'node')}, "
                       f"{_counted(engine['units'], 'unit')}{resumed}, start-up {engine['startup_s']:.1f} s")]


def _counted(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _media_figures(summary) -> list[tuple[str, int]]:
    from vlmdata.modalities import MODALITIES

    return [(modality.label, summary.media[modality.column]) for modality in MODALITIES]


def train_summary_lines(summary) -> list[str]:
    """What `vlmdata train` prints once it is done."""
    out = Path(summary.out_dir)
    figures = [
        ("base model", summary.checkpoint),
        ("trainable", f"{summary.trainable_parameters:,} of {summary.total_parameters:,} parameters"),
        ("loss", f"{summary.first_loss:.4f} at the first step, {summary.last_loss:.4f} at the last"
         if summary.first_loss is not None else "-"),
        ("eval loss", f"{summary.metrics['eval_loss']:.4f}" if "eval_loss" in summary.metrics else "-"),
        *_packing_lines(summary.metrics),
        ("loss log", f"{out / 'loss.jsonl'} (curve: {out / 'loss.png'}, run log: {out / 'train.log'})"),
    ]
    return ["", f"Trained {summary.steps} steps -> {out}"] + [f"  {label:<12} {value}" for label, value in figures]


def _packing_lines(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    if "packing_packs" not in metrics:
        return []
    return [("packing", f"{metrics['packing_packs']} packs of {metrics['packing_length']} tokens, "
                        f"{metrics['packing_samples_per_pack']:.2f} samples each, {metrics['packing_fill_ratio']:.1%} full, "
                        f"{metrics['packing_padding_fraction']:.1%} padding")]


def _rejects_lines(summary, out: Path) -> list[str]:
    if not summary.rows_rejected:
        return []
    lines = [f"  rejects by reason (details in {out / 'rejects.jsonl'}):"]
    return lines + [f"    {count:>6}  {reason}" for reason, count in summary.rejects_by_reason.most_common()]


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@dataclass(frozen=True)
class Stage:
    """One stage as a command.

    Attributes:
        name: the command's name.
        defaults: its options' defaults (`CONVERT_DEFAULTS`, ...).
        run: runs the stage on a complete dict of the command's options; returns the stage's summary.
        summary_lines: the lines the command prints from that summary.
    """

    name: str
    defaults: Mapping[str, Any]
    run: Callable[[Mapping[str, Any]], Any]
    summary_lines: Callable[[Any], list[str]]


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("convert", CONVERT_DEFAULTS, run_convert, convert_summary_lines),
        Stage("tokenize", TOKENIZE_DEFAULTS, run_tokenize, tokenize_summary_lines),
        Stage("train", TRAIN_DEFAULTS, run_train, train_summary_lines),
    )
}
