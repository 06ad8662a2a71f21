"""The `vlmdata` command line: commands parse their options, call the stage, and print its summary."""

from __future__ import annotations

import os
import signal
import sys

import click

import vlmdata
from vlmdata.errors import FatalError
from vlmdata.executors import ENGINES
from vlmdata.labels import TRAIN_ON, TRUNCATE
from vlmdata.media.options import RESIZE_ALGORITHMS, RESIZE_MODES
from vlmdata.recipe import command_options, load_recipe, run_recipe
from vlmdata.recipe.stages import (
    CONVERT_DEFAULTS,
    FORMAT_CHOICES,
    STAGES,
    TOKENIZE_DEFAULTS,
    TRAIN_DEFAULTS,
    OptionError,
)
from vlmdata.train.options import ATTENTION, REPORTERS, SCHEDULERS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(vlmdata.__version__, prog_name="vlmdata")
def cli() -> None:
    """Prepare multimodal chat datasets once, then fine-tune vision-language models on them.

    \b
    convert   raw source (parquet, MMIU zips, JSONL, ShareGPT) -> normalised dataset
    tokenize  normalised dataset -> token shards for one model
    train     token shards -> LoRA adapter or fine-tuned weights
    inspect   statistics and an HTML preview of a dataset, token shards or rejects file
    run       convert, tokenize and train from one recipe file (axolotl's keys)
    """


def _apply_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Makes the recipe's options this command's defaults, so that options on the command line win."""
    if value is None:
        return
    recipe = _run(load_recipe, value)
    ctx.default_map = {**(ctx.default_map or {}), **command_options(recipe)[ctx.command.name]}


# Eager, so that the recipe is read before any other option takes its value.
config_option = click.option(
    "--config",
    metavar="RECIPE",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_apply_config,
    help="Recipe (YAML, axolotl's keys) that fills this command's options; options given here override it.",
)


def stage_options(defaults: dict):
    """The options convert and tokenize share: how they run and what they do with bad rows and old output."""

    def decorate(command):
        for option in reversed((
            click.option("--num-proc", default=defaults["num_proc"], type=click.IntRange(min=1),
                         help="Worker processes (--engine local); the output is the same for any value."),
            click.option("--engine", default=defaults["engine"], type=click.Choice(ENGINES),
                         help="Where the work runs: this machine, or a Ray cluster (pip install 'vlmdata[ray]'); "
                         "the output is the same bytes with either."),
            click.option("--ray-address", default=defaults["ray_address"], metavar="ADDR",
                         help="--engine ray: the cluster to join (auto: the one this machine belongs to; HOST:PORT) "
                         "[default: start a Ray of this machine for the run]."),
            click.option("--num-workers", default=defaults["num_workers"], type=click.IntRange(min=1),
                         help="--engine ray: actors [default: one per CPU of the cluster]."),
            click.option("--rows-per-unit", default=defaults["rows_per_unit"], type=click.IntRange(min=16),
                         help="Rows of a work unit, which is one shard file (a multiple of 16)."),
            click.option("--strict", is_flag=True, help="Stop at the first bad row instead of recording it in rejects.jsonl."),
            click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists."),
            click.option("--quiet", is_flag=True, help="No progress bar."),
            config_option,
        )):
            command = option(command)
        return command

    return decorate


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--format",
    "source_format",
    default=CONVERT_DEFAULTS["source_format"],
    type=click.Choice(FORMAT_CHOICES),
    help="Source layout; auto detects it from the first source.",
)
@click.option("--split", default=CONVERT_DEFAULTS["split"], help="Split to read, with optional slice: train, train[:1%], test[10:20].")
@click.option("--field-messages", default=CONVERT_DEFAULTS["field_messages"], help="Field that holds the messages (JSONL).")
@click.option(
    "--media-root",
    default=CONVERT_DEFAULTS["media_root"],
    type=click.Path(exists=True, file_okay=False),
    help="Folder that relative media paths resolve against, and the only folder media files are read from "
    "[default: the source file's folder, and no such limit].",
)
@click.option("--image-size", default=CONVERT_DEFAULTS["image_size"], help="Resize every image: N letterboxes to NxN, WxH resizes exactly.")
@click.option(
    "--resize-mode",
    default=CONVERT_DEFAULTS["resize_mode"],
    type=click.Choice(RESIZE_MODES),
    help="Override the mode implied by --image-size; fit scales the longest side to N without padding.",
)
@click.option(
    "--resize-algorithm",
    default=CONVERT_DEFAULTS["resize_algorithm"],
    type=click.Choice(RESIZE_ALGORITHMS),
    help="Resampling filter used when resizing.",
)
@click.option(
    "--audio-sampling-rate",
    default=CONVERT_DEFAULTS["audio_sampling_rate"],
    type=click.IntRange(min=1),
    help="Audio is resampled to this rate, mono.",
)
@click.option(
    "--timeout",
    default=CONVERT_DEFAULTS["timeout"],
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a URL's server may take to connect, and to send each next piece of the answer, per attempt.",
)
@click.option(
    "--retries",
    default=CONVERT_DEFAULTS["retries"],
    type=click.IntRange(min=0),
    help="Extra attempts for a URL after a 5xx or a connection error.",
)
@click.option(
    "--download-deadline",
    default=CONVERT_DEFAULTS["download_deadline"],
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds one URL may take in all, retries and redirects included.",
)
@click.option(
    "--max-download-bytes",
    default=CONVERT_DEFAULTS["max_download_bytes"],
    type=click.IntRange(min=1),
    help="Largest download accepted.",
)
@click.option(
    "--block-private-urls",
    is_flag=True,
    help="Refuse URLs whose host is a loopback, private or link-local address (checked at every redirect).",
)
@click.option(
    "--max-file-bytes",
    default=CONVERT_DEFAULTS["max_file_bytes"],
    type=click.IntRange(min=1),
    help="Largest media file read from disk or from a zip archive.",
)
@click.option(
    "--max-image-pixels",
    default=CONVERT_DEFAULTS["max_image_pixels"],
    type=click.IntRange(min=1),
    help="Images with more pixels are refused from their header, before any pixel is decoded.",
)
@click.option(
    "--video-frames",
    default=CONVERT_DEFAULTS["video_frames"],
    type=click.IntRange(min=1),
    help="Take this many frames uniformly over each video, instead of sampling by --video-fps.",
)
@click.option(
    "--video-fps",
    default=CONVERT_DEFAULTS["video_fps"],
    type=click.FloatRange(min=0, min_open=True),
    help="Take this many frames per second of each video; a video given as frames is timed at this rate.",
)
@click.option(
    "--max-video-frames",
    default=CONVERT_DEFAULTS["max_video_frames"],
    type=click.IntRange(min=1),
    help="Never take more frames than this from one video.",
)
@click.option(
    "--max-video-seconds",
    default=CONVERT_DEFAULTS["max_video_seconds"],
    type=click.FloatRange(min=0, min_open=True),
    help="Videos longer than this are refused from their header, before any frame is decoded.",
)
@stage_options(CONVERT_DEFAULTS)
def convert(**options) -> None:
    """Convert SOURCES into a normalised dataset (messages, images, videos, audios) that datasets.load_from_disk reads.

    \b
    Examples:
      vlmdata convert data/train.jsonl -o out/normalised --image-size 512
      vlmdata convert HuggingFaceH4/llava-instruct-mix-vsft --split 'train[:1%]' -o out/llava
      vlmdata convert mmiu/ --format mmiu -o out/mmiu --num-proc 4
    """
    _run_stage("convert", options)


@cli.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--model", required=True, help="Family alias (gemma3, qwen2_vl, llava...), hub id or local folder.")
@click.option(
    "--chat-template",
    default=TOKENIZE_DEFAULTS["chat_template"],
    help="Packaged template name or Jinja file [default: the family's].",
)
@click.option(
    "--max-length",
    default=TOKENIZE_DEFAULTS["max_length"],
    type=click.IntRange(min=1),
    help="Longest row, in tokens; longer rows are rejected.",
)
@click.option(
    "--truncate",
    default=TOKENIZE_DEFAULTS["truncate"],
    type=click.Choice(TRUNCATE),
    help="text: cut long rows after their last media token instead of rejecting them.",
)
@click.option(
    "--template-date",
    default=TOKENIZE_DEFAULTS["template_date"],
    help="The date chat templates that write today's date write (Llama 3.2 Vision), so that the same data "
    "gives the same shards on any day.",
)
@click.option(
    "--video-as-images",
    is_flag=True,
    default=TOKENIZE_DEFAULTS["video_as_images"],
    help="For a model family that takes images but no video: hand each video as its frames, one image each "
    "(otherwise such rows are rejected).",
)
@click.option(
    "--train-on",
    default=TOKENIZE_DEFAULTS["train_on"],
    type=click.Choice(TRAIN_ON),
    help="Tokens that get a loss: every assistant reply, every text token, or the last reply.",
)
@stage_options(TOKENIZE_DEFAULTS)
def tokenize(**options) -> None:
    """Tokenize the normalised dataset DATA into token shards (input_ids, labels, model tensors) for one model.

    \b
    Examples:
      vlmdata tokenize out/normalised -o out/shards --model gemma3 --max-length 2048
      vlmdata tokenize out/normalised -o out/shards --model ./my-checkpoint --train-on last --num-proc 4
    """
    _run_stage("tokenize", options)


@cli.command()
@click.argument("path", metavar="DIR", type=click.Path(exists=True))
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write a self-contained HTML preview here.")
@click.option("-n", "--n", "samples", default=16, type=click.IntRange(min=1), help="Rows the preview shows, drawn at random.")
@click.option("--seed", default=0, type=int, help="Seed of the draw; the same seed shows the same rows.")
@click.option("--ids", default=None, help="Comma-separated row ids to show instead of a random draw.")
@click.option("--pack-length", default=None, type=click.IntRange(min=1), help="Token shards: show what `train --packing` would make of them at this pack length.")
@click.option("--batch-size", default=1, type=click.IntRange(min=1), help="With --pack-length: packs (or unpacked rows) per batch, for the padding figures.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect(path, html_file, samples, seed, ids, pack_length, batch_size, quiet) -> None:
    """Print statistics of DIR (a normalised dataset, token shards or a rejects file), optionally with a preview.

    The preview shows each sampled row's images beside its conversation; for token shards, the tokens as the
    chat template renders them, trained tokens highlighted and media tokens collapsed.

    \b
    Examples:
      vlmdata inspect out/normalised
      vlmdata inspect out/shards --html out/shards.html --n 32 --seed 1
      vlmdata inspect out/shards --html out/some.html --ids row-7,row-12
      vlmdata inspect out/shards/rejects.jsonl
      vlmdata inspect out/shards --pack-length 4096 --batch-size 2
    """
    from vlmdata.inspect import inspect as run_inspect
    from vlmdata.inspect import terminal_lines
    from vlmdata.inspect.packing import packing_lines

    wanted = [row_id.strip() for row_id in ids.split(",") if row_id.strip()] if ids else None
    result = _run(run_inspect, path, html=html_file, n=samples, seed=seed, ids=wanted, progress=not quiet)
    target = result.statistics.target
    click.echo(f"\nInspected the {target.description} {target.path}")
    for line in terminal_lines(result.statistics):
        click.echo(line)
    if pack_length is not None:
        for line in _run(packing_lines, target, pack_length, seed, batch_size):
            click.echo(line)
    if result.page is not None:
        click.echo(f"HTML preview of {result.cards} rows -> {result.page}")


@cli.command()
@click.argument("shards")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--model", default=TRAIN_DEFAULTS["model"], help="Base model: alias, hub id or folder [default: the one the shards were made for].")
@click.option("--adapter", default=TRAIN_DEFAULTS["adapter"], type=click.Choice(["lora", "full"]), help="Train LoRA adapters or every weight.")
@click.option("--lora-r", default=TRAIN_DEFAULTS["lora_r"], type=click.IntRange(min=1), help="LoRA rank.")
@click.option("--lora-alpha", default=TRAIN_DEFAULTS["lora_alpha"], type=click.IntRange(min=1), help="LoRA scaling.")
@click.option("--lora-dropout", default=TRAIN_DEFAULTS["lora_dropout"], type=click.FloatRange(0, 1), help="LoRA dropout.")
@click.option("--lora-target-modules", default=TRAIN_DEFAULTS["lora_target_modules"], help="Regex of module names that get LoRA [default: the language model's attention and MLP projections].")
@click.option("--train-vision", is_flag=True, help="Also train the vision tower and projector.")
@click.option("--epochs", default=TRAIN_DEFAULTS["epochs"], type=click.FloatRange(min=0, min_open=True), help="Passes over the shards.")
@click.option("--max-steps", default=TRAIN_DEFAULTS["max_steps"], type=click.IntRange(min=1), help="Stop after this many optimizer steps (overrides --epochs).")
@click.option("--learning-rate", default=TRAIN_DEFAULTS["learning_rate"], type=click.FloatRange(min=0), help="Peak learning rate (0 measures the loss and changes nothing).")
@click.option("--lr-scheduler", default=TRAIN_DEFAULTS["lr_scheduler"], type=click.Choice(SCHEDULERS), help="Learning rate schedule.")
@click.option("--warmup-steps", default=TRAIN_DEFAULTS["warmup_steps"], type=click.IntRange(min=0), help="Steps of linear warm-up.")
@click.option("--batch-size", default=TRAIN_DEFAULTS["batch_size"], type=click.IntRange(min=1), help="Rows per device per step.")
@click.option("--gradient-accumulation-steps", default=TRAIN_DEFAULTS["gradient_accumulation_steps"], type=click.IntRange(min=1), help="Batches per optimizer step.")
@click.option("--bf16/--no-bf16", default=TRAIN_DEFAULTS["bf16"], help="bfloat16 mixed precision [default: when the GPU supports it; float32 on the CPU].")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations to save memory.")
@click.option("--seed", default=TRAIN_DEFAULTS["seed"], type=int, help="Seed of the initialisation and the data order.")
@click.option("--save-steps", default=TRAIN_DEFAULTS["save_steps"], type=click.IntRange(min=1), help="Save a checkpoint every N steps (for --resume) [default: only at the end].")
@click.option("--save-total-limit", default=TRAIN_DEFAULTS["save_total_limit"], type=click.IntRange(min=1), help="Checkpoints kept.")
@click.option("--val-set-size", default=TRAIN_DEFAULTS["val_set_size"], type=click.FloatRange(min=0), help="Rows held out for evaluation: a fraction below 1, or a count.")
@click.option("--eval-steps", default=TRAIN_DEFAULTS["eval_steps"], type=click.IntRange(min=1), help="Evaluate every N steps [default: at the end only].")
@click.option("--logging-steps", default=TRAIN_DEFAULTS["logging_steps"], type=click.IntRange(min=1), help="Log the loss every N steps.")
@click.option("--load-in-4bit", is_flag=True, help="QLoRA: load the base model in 4 bits (CUDA and bitsandbytes).")
@click.option("--load-in-8bit", is_flag=True, help="Load the base model in 8 bits (CUDA and bitsandbytes).")
@click.option("--attn-implementation", default=TRAIN_DEFAULTS["attn_implementation"], type=click.Choice(ATTENTION), help="The attention kernels [default: sdpa where the model has it]; sdpa_packed: sdpa on each sample of a pack.")
@click.option("--packing", is_flag=True, help="Pack several rows into each sequence, each trained as if alone.")
@click.option("--pack-length", default=TRAIN_DEFAULTS["pack_length"], type=click.IntRange(min=1), help="Tokens per packed sequence [default: the shards' --max-length, else 4096].")
@click.option("--pack-media-budget", default=TRAIN_DEFAULTS["pack_media_budget"], type=click.IntRange(min=1), help="The most image, video and audio tokens a pack holds [default: no limit].")
@click.option("--pack-window", default=TRAIN_DEFAULTS["pack_window"], type=click.IntRange(min=1), help="Rows placed together when planning packs.")
@click.option("--num-workers", default=TRAIN_DEFAULTS["num_workers"], type=click.IntRange(min=0), help="Data loader worker processes.")
@click.option("--log-rows", is_flag=True, help="Write the ids of the rows each process trained on to rows-rank<N>.txt.")
@click.option("--report-to", default=TRAIN_DEFAULTS["report_to"], type=click.Choice(REPORTERS),
              help="Where metrics go besides OUT/train.log and OUT/loss.jsonl: tensorboard (OUT/logs), every integration installed, or none [default: tensorboard when installed].")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the output folder.")
@click.option("--resume-from", default=TRAIN_DEFAULTS["resume_from"], type=click.Path(exists=True, file_okay=False), help="Continue from this checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
def train(**options) -> None:
    """Fine-tune a model on the token shards SHARDS (a folder made by tokenize, or a hub dataset id).

    Batches come straight from the shards: no image is decoded. For several GPUs or nodes, run the same
    command under `accelerate launch` or `torchrun`.

    \b
    Examples:
      vlmdata train out/shards -o out/lora --max-steps 1000 --batch-size 4
      vlmdata train out/shards -o out/lora --packing --pack-length 4096
      vlmdata train out/shards -o out/lora --lora-target-modules 'model.language_model.layers.[\\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj'
      torchrun --nproc_per_node 8 -m vlmdata.cli train out/shards -o out/lora --gradient-checkpointing
    """
    _run_stage("train", options)


@cli.command()
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(exists=True, dir_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(recipe_file, quiet) -> None:
    """Run convert, tokenize and train from one RECIPE file (YAML, axolotl's keys).

    A stage whose output folder is complete and was made with the same settings is skipped; once a stage
    runs, every stage after it runs too. `--config RECIPE` on convert, tokenize or train runs a single stage.

    \b
    Examples:
      vlmdata run recipes/gemma3.yaml
      vlmdata run recipes/tiny-gemma3.yaml --quiet
    """
    _run(run_recipe, recipe_file, quiet=quiet, echo=click.echo)


def _run_stage(name: str, options: dict) -> None:
    """Runs a stage on the command's options and prints its summary; bad options are usage errors."""
    stage = STAGES[name]
    try:
        summary = _run(stage.run, options)
    except OptionError as error:
        if error.option:
            raise click.BadParameter(str(error), param_hint=error.option) from None
        raise click.UsageError(str(error)) from None
    for line in stage.summary_lines(summary):
        click.echo(line)


def _run(stage, *args, **kwargs):
    try:
        return stage(*args, **kwargs)
    except FatalError as error:
        _fail(str(error))


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def main() -> None:
    # SIGTERM (a scheduler, `kill`, a container stopping) ends the run as Ctrl-C would: the output folders and
    # worker pools are closed on the way out, so nothing half-written stays and no semaphore leaks.
    signal.signal(signal.SIGTERM, _stopped)
    arrow_buffers_from_the_system_allocator()
    cli()


def arrow_buffers_from_the_system_allocator() -> None:
    """Arrow's buffers from malloc, in this process and in the workers it starts, unless the user chose a pool:
    mimalloc, pyarrow's default, keeps the memory of freed batches, and tokenize's peak grew with the rows
    (bench/notes.md has the figures)."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"  # read by the workers' pyarrow when it starts
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())  # this process's pool was made on import


def _stopped(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    click.secho("error: stopped by SIGTERM.", fg="red", err=True)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
