"""The `vlmdata` command line: commands parse their options, call the stage, and print its summary."""

from __future__ import annotations

import sys
from pathlib import Path

import click

import vlmdata
from vlmdata.errors import FatalError


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
    from vlmdata.recipe import command_options, load_recipe

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


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--format",
    "source_format",
    default="auto",
    type=click.Choice(["auto", "llava-instruct-mix", "mmiu", "jsonl", "sharegpt"]),
    help="Source layout; auto detects it from the first source.",
)
@click.option("--split", default=None, help="Split to read, with optional slice: train, train[:1%], test[10:20].")
@click.option("--field-messages", default="messages", help="Field that holds the messages (JSONL).")
@click.option(
    "--media-root",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Folder that relative media paths resolve against, and the only folder media files are read from "
    "[default: the source file's folder, and no such limit].",
)
@click.option("--image-size", default=None, help="Resize every image: N letterboxes to NxN, WxH resizes exactly.")
@click.option(
    "--resize-mode",
    default=None,
    type=click.Choice(["letterbox", "exact", "fit"]),
    help="Override the mode implied by --image-size; fit scales the longest side to N without padding.",
)
@click.option(
    "--resize-algorithm",
    default="bilinear",
    type=click.Choice(["bilinear", "bicubic", "lanczos", "nearest"]),
    help="Resampling filter used when resizing.",
)
@click.option("--audio-sampling-rate", default=16000, type=click.IntRange(min=1), help="Audio is resampled to this rate, mono.")
@click.option(
    "--timeout",
    default=10.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a URL's server may take to connect, and to send each next piece of the answer, per attempt.",
)
@click.option("--retries", default=3, type=click.IntRange(min=0), help="Extra attempts for a URL after a 5xx or a connection error.")
@click.option(
    "--download-deadline",
    default=60.0,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds one URL may take in all, retries and redirects included.",
)
@click.option("--max-download-bytes", default=64 * 1024 * 1024, type=click.IntRange(min=1), help="Largest download accepted.")
@click.option(
    "--block-private-urls",
    is_flag=True,
    help="Refuse URLs whose host is a loopback, private or link-local address (checked at every redirect).",
)
@click.option(
    "--max-file-bytes",
    default=256 * 1024 * 1024,
    type=click.IntRange(min=1),
    help="Largest media file read from disk or from a zip archive.",
)
@click.option(
    "--max-image-pixels",
    default=1024 * 1024 * 1024 // 4 // 3,
    type=click.IntRange(min=1),
    help="Images with more pixels are refused from their header, before any pixel is decoded.",
)
@click.option("--num-proc", default=1, type=click.IntRange(min=1), help="Worker processes; the output is the same for any value.")
@click.option("--strict", is_flag=True, help="Stop at the first bad row instead of recording it in rejects.jsonl.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
def convert(sources, out_dir, source_format, split, field_messages, media_root, image_size, resize_mode,
            resize_algorithm, audio_sampling_rate, timeout, retries, download_deadline, max_download_bytes,
            block_private_urls, max_file_bytes, max_image_pixels, num_proc, strict, overwrite, quiet) -> None:
    """Convert SOURCES into a normalised dataset (messages, images, audios) that datasets.load_from_disk reads.

    \b
    Examples:
      vlmdata convert data/train.jsonl -o out/normalised --image-size 512
      vlmdata convert HuggingFaceH4/llava-instruct-mix-vsft --split 'train[:1%]' -o out/llava
      vlmdata convert mmiu/ --format mmiu -o out/mmiu --num-proc 4
    """
    from vlmdata.convert import convert as run_convert
    from vlmdata.media import MediaOptions, Resize
    from vlmdata.readers import ReaderOptions

    if resize_mode and not image_size:
        raise click.UsageError("--resize-mode needs --image-size.")
    try:
        resize = Resize.parse(image_size, resize_mode, resize_algorithm) if image_size else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--image-size") from None
    media_options = MediaOptions(
        resize=resize,
        audio_sampling_rate=audio_sampling_rate,
        media_root=media_root,
        timeout=timeout,
        retries=retries,
        download_deadline=download_deadline,
        max_download_bytes=max_download_bytes,
        block_private_urls=block_private_urls,
        max_file_bytes=max_file_bytes,
        max_image_pixels=max_image_pixels,
    )
    reader_options = ReaderOptions(
        split=split, field_messages=field_messages, media_root=media_root, max_file_bytes=max_file_bytes
    )
    summary = _run(
        run_convert,
        list(sources),
        out_dir,
        format=source_format,
        reader_options=reader_options,
        media_options=media_options,
        num_proc=num_proc,
        strict=strict,
        overwrite=overwrite,
        progress=not quiet,
    )
    _print_convert_summary(summary)


@cli.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--model", required=True, help="Family alias (gemma3, qwen2_vl, llava...), hub id or local folder.")
@click.option("--chat-template", default=None, help="Packaged template name or Jinja file [default: the family's].")
@click.option("--max-length", default=None, type=click.IntRange(min=1), help="Longest row, in tokens; longer rows are rejected.")
@click.option(
    "--truncate",
    default="none",
    type=click.Choice(["none", "text"]),
    help="text: cut long rows after their last media token instead of rejecting them.",
)
@click.option(
    "--train-on",
    default="assistant",
    type=click.Choice(["assistant", "all", "last"]),
    help="Tokens that get a loss: every assistant reply, every text token, or the last reply.",
)
@click.option("--num-proc", default=1, type=click.IntRange(min=1), help="Worker processes; the output is the same for any value.")
@click.option("--strict", is_flag=True, help="Stop at the first bad row instead of recording it in rejects.jsonl.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
def tokenize(data, out_dir, model, chat_template, max_length, truncate, train_on, num_proc, strict, overwrite,
             quiet) -> None:
    """Tokenize the normalised dataset DATA into token shards (input_ids, labels, model tensors) for one model.

    \b
    Examples:
      vlmdata tokenize out/normalised -o out/shards --model gemma3 --max-length 2048
      vlmdata tokenize out/normalised -o out/shards --model ./my-checkpoint --train-on last --num-proc 4
    """
    from vlmdata.executors import openmp_threads_wait_passively

    openmp_threads_wait_passively()  # before torch is imported
    from vlmdata.tokenize import tokenize as run_tokenize

    summary = _run(
        run_tokenize,
        data,
        out_dir,
        model=model,
        chat_template=chat_template,
        train_on=train_on,
        max_length=max_length,
        truncate=truncate,
        num_proc=num_proc,
        strict=strict,
        overwrite=overwrite,
        progress=not quiet,
    )
    _print_tokenize_summary(summary)


@cli.command()
@click.argument("path", metavar="DIR", type=click.Path(exists=True))
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write a self-contained HTML preview here.")
@click.option("-n", "--n", "samples", default=16, type=click.IntRange(min=1), help="Rows the preview shows, drawn at random.")
@click.option("--seed", default=0, type=int, help="Seed of the draw; the same seed shows the same rows.")
@click.option("--ids", default=None, help="Comma-separated row ids to show instead of a random draw.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect(path, html_file, samples, seed, ids, quiet) -> None:
    """Print statistics of DIR (a normalised dataset, token shards or a rejects file), optionally with a preview.

    The preview shows each sampled row's images beside its conversation; for token shards, the tokens as the
    chat template renders them, trained tokens highlighted and media tokens collapsed.

    \b
    Examples:
      vlmdata inspect out/normalised
      vlmdata inspect out/shards --html out/shards.html --n 32 --seed 1
      vlmdata inspect out/shards --html out/some.html --ids row-7,row-12
      vlmdata inspect out/shards/rejects.jsonl
    """
    from vlmdata.inspect import inspect as run_inspect
    from vlmdata.inspect import terminal_lines

    wanted = [row_id.strip() for row_id in ids.split(",") if row_id.strip()] if ids else None
    result = _run(run_inspect, path, html=html_file, n=samples, seed=seed, ids=wanted, progress=not quiet)
    target = result.statistics.target
    click.echo(f"\nInspected the {target.description} {target.path}")
    for line in terminal_lines(result.statistics):
        click.echo(line)
    if result.page is not None:
        click.echo(f"HTML preview of {result.cards} rows -> {result.page}")


@cli.command()
@click.argument("shards")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--model", default=None, help="Base model: alias, hub id or folder [default: the one the shards were made for].")
@click.option("--adapter", default="lora", type=click.Choice(["lora", "full"]), help="Train LoRA adapters or every weight.")
@click.option("--lora-r", default=16, type=click.IntRange(min=1), help="LoRA rank.")
@click.option("--lora-alpha", default=16, type=click.IntRange(min=1), help="LoRA scaling.")
@click.option("--lora-dropout", default=0.05, type=click.FloatRange(0, 1), help="LoRA dropout.")
@click.option("--lora-target-modules", default=None, help="Regex of module names that get LoRA [default: the language model's attention and MLP projections].")
@click.option("--train-vision", is_flag=True, help="Also train the vision tower and projector.")
@click.option("--epochs", default=1.0, type=click.FloatRange(min=0, min_open=True), help="Passes over the shards.")
@click.option("--max-steps", default=None, type=click.IntRange(min=1), help="Stop after this many optimizer steps (overrides --epochs).")
@click.option("--learning-rate", default=2e-4, type=click.FloatRange(min=0, min_open=True), help="Peak learning rate.")
@click.option("--lr-scheduler", default="cosine", type=click.Choice(["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]), help="Learning rate schedule.")
@click.option("--warmup-steps", default=0, type=click.IntRange(min=0), help="Steps of linear warm-up.")
@click.option("--batch-size", default=1, type=click.IntRange(min=1), help="Rows per device per step.")
@click.option("--gradient-accumulation-steps", default=1, type=click.IntRange(min=1), help="Batches per optimizer step.")
@click.option("--bf16/--no-bf16", default=None, help="bfloat16 mixed precision [default: when the GPU supports it; float32 on the CPU].")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations to save memory.")
@click.option("--seed", default=42, type=int, help="Seed of the initialisation and the data order.")
@click.option("--save-steps", default=None, type=click.IntRange(min=1), help="Save a checkpoint every N steps (for --resume) [default: only at the end].")
@click.option("--save-total-limit", default=2, type=click.IntRange(min=1), help="Checkpoints kept.")
@click.option("--val-set-size", default=0.0, type=click.FloatRange(min=0), help="Rows held out for evaluation: a fraction below 1, or a count.")
@click.option("--eval-steps", default=None, type=click.IntRange(min=1), help="Evaluate every N steps [default: at the end only].")
@click.option("--logging-steps", default=1, type=click.IntRange(min=1), help="Log the loss every N steps.")
@click.option("--load-in-4bit", is_flag=True, help="QLoRA: load the base model in 4 bits (CUDA and bitsandbytes).")
@click.option("--load-in-8bit", is_flag=True, help="Load the base model in 8 bits (CUDA and bitsandbytes).")
@click.option("--num-workers", default=0, type=click.IntRange(min=0), help="Data loader worker processes.")
@click.option("--log-rows", is_flag=True, help="Write the ids of the rows each process trained on to rows-rank<N>.txt.")
@click.option("--report-to", default=None, type=click.Choice(["none", "tensorboard", "all"]),
              help="Where metrics go besides OUT/train.log and OUT/loss.jsonl: tensorboard (OUT/logs), every integration installed, or none [default: tensorboard when installed].")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the output folder.")
@click.option("--resume-from", default=None, type=click.Path(exists=True, file_okay=False), help="Continue from this checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
def train(shards, out_dir, model, adapter, lora_r, lora_alpha, lora_dropout, lora_target_modules, train_vision, epochs,
          max_steps, learning_rate, lr_scheduler, warmup_steps, batch_size, gradient_accumulation_steps, bf16,
          gradient_checkpointing, seed, save_steps, save_total_limit, val_set_size, eval_steps, logging_steps,
          load_in_4bit, load_in_8bit, num_workers, log_rows, report_to, resume, resume_from, overwrite, quiet) -> None:
    """Fine-tune a model on the token shards SHARDS (a folder made by tokenize, or a hub dataset id).

    Batches come straight from the shards: no image is decoded. For several GPUs or nodes, run the same
    command under `accelerate launch` or `torchrun`.

    \b
    Examples:
      vlmdata train out/shards -o out/lora --max-steps 1000 --batch-size 4
      vlmdata train out/shards -o out/lora --lora-target-modules 'model.language_model.layers.[\\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj'
      torchrun --nproc_per_node 8 -m vlmdata.cli train out/shards -o out/lora --gradient-checkpointing
    """
    from vlmdata.train import DEFAULT_LORA_TARGETS, AdapterOptions, TrainOptions
    from vlmdata.train import train as run_train

    if load_in_4bit and load_in_8bit:
        raise click.UsageError("--load-in-4bit and --load-in-8bit exclude each other.")
    if resume and resume_from:
        raise click.UsageError("--resume and --resume-from exclude each other.")
    adapter_options = AdapterOptions(adapter, lora_r, lora_alpha, lora_dropout, lora_target_modules or DEFAULT_LORA_TARGETS, train_vision)
    options = TrainOptions(
        adapter=adapter_options, epochs=epochs, max_steps=max_steps, learning_rate=learning_rate,
        lr_scheduler=lr_scheduler, warmup_steps=warmup_steps, batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, bf16=bf16,
        gradient_checkpointing=gradient_checkpointing, seed=seed, save_steps=save_steps,
        save_total_limit=save_total_limit, val_set_size=val_set_size, eval_steps=eval_steps,
        logging_steps=logging_steps, quantization="4bit" if load_in_4bit else "8bit" if load_in_8bit else None,
        num_workers=num_workers, log_rows=log_rows, report_to=report_to,
    )
    summary = _run(run_train, shards, out_dir, model=model, options=options, resume=resume_from or resume,
                   overwrite=overwrite, progress=not quiet)
    _print_train_summary(summary)


@cli.command()
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(exists=True, dir_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def run(ctx, recipe_file, quiet) -> None:
    """Run convert, tokenize and train from one RECIPE file (YAML, axolotl's keys).

    A stage whose output folder is complete and was made with the same settings is skipped; once a stage
    runs, every stage after it runs too. `--config RECIPE` on convert, tokenize or train runs a single stage.

    \b
    Examples:
      vlmdata run recipes/gemma3.yaml
      vlmdata run recipes/tiny-gemma3.yaml --quiet
    """
    from vlmdata.recipe import (
        command_options, folders, load_recipe, may_replace, record_settings, require, stage_settings, why_stale,
    )

    recipe = _run(load_recipe, recipe_file)
    _run(require, recipe, "base_model", "datasets")
    options = command_options(recipe)
    earlier_stage_ran = False
    for command in (convert, tokenize, train):
        defaults = {**options[command.name], "quiet": quiet}
        with command.make_context(command.name, [], parent=ctx, default_map=defaults) as stage:
            settings = stage_settings(stage.params)
            out = stage.params["out_dir"]
            reason = "an earlier stage ran" if earlier_stage_ran else why_stale(out, command.name, settings)
            if reason is None:
                click.echo(f"{command.name}: skipped, {out} is complete for these settings")
                continue
            if not may_replace(out, command.name):
                _fail(f"{out} exists and holds no output of {command.name}; move it away or name another folder in the recipe.")
            click.echo(f"{command.name}: running, as {reason}")
            stage.params["overwrite"] = True
            command.invoke(stage)
            record_settings(out, settings)
            earlier_stage_ran = True
    where = folders(recipe)
    click.echo(f"\nRecipe {recipe_file} done:")
    for label, folder in (("normalised dataset", where.normalised), ("token shards", where.shards), ("trained model", where.output)):
        click.echo(f"  {label:<19} {folder}")


def _run(stage, *args, **kwargs):
    try:
        return stage(*args, **kwargs)
    except FatalError as error:
        _fail(str(error))


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def _print_convert_summary(summary) -> None:
    out = Path(summary.out_dir)
    click.echo(f"\nConverted {summary.rows_written} of {summary.rows_read} rows in {summary.elapsed_s:.1f} s -> {out}")
    lines = [
        ("rows read", summary.rows_read),
        ("rows written", summary.rows_written),
        ("rows rejected", summary.rows_rejected),
        ("images", summary.media["images"]),
        ("audio clips", summary.media["audios"]),
        ("shard size", _human_bytes(summary.output_bytes)),
    ]
    for label, value in lines:
        click.echo(f"  {label:<14} {value}")
    if summary.rows_rejected:
        click.echo(f"  rejects by reason (details in {out / 'rejects.jsonl'}):")
        for reason, count in summary.rejects_by_reason.most_common():
            click.echo(f"    {count:>6}  {reason}")


def _print_tokenize_summary(summary) -> None:
    out = Path(summary.out_dir)
    click.echo(f"\nTokenized {summary.rows_written} of {summary.rows_read} rows in {summary.elapsed_s:.1f} s -> {out}")
    percentiles = summary.length_percentiles
    lines = [
        ("model", f"{summary.model} ({summary.family}, template {summary.template})"),
        ("rows read", summary.rows_read),
        ("rows written", summary.rows_written),
        ("rows rejected", summary.rows_rejected),
        ("tokens", summary.tokens),
        ("trained tokens", f"{summary.trained_tokens} ({summary.trained_fraction:.1%})"),
        ("length p50/p90/max", "/".join(str(percentiles.get(k, "-")) for k in ("p50", "p90", "max"))),
        ("images", summary.media["images"]),
        ("audio clips", summary.media["audios"]),
        ("shard size", _human_bytes(summary.output_bytes)),
        ("bytes per sample", _human_bytes(summary.bytes_per_sample)),
    ]
    for label, value in lines:
        click.echo(f"  {label:<18} {value}")
    if summary.rows_rejected:
        click.echo(f"  rejects by reason (details in {out / 'rejects.jsonl'}):")
        for reason, count in summary.rejects_by_reason.most_common():
            click.echo(f"    {count:>6}  {reason}")


def _print_train_summary(summary) -> None:
    out = Path(summary.out_dir)
    click.echo(f"\nTrained {summary.steps} steps -> {out}")
    lines = [
        ("base model", summary.checkpoint),
        ("trainable", f"{summary.trainable_parameters:,} of {summary.total_parameters:,} parameters"),
        ("loss", f"{summary.first_loss:.4f} at the first step, {summary.last_loss:.4f} at the last"
         if summary.first_loss is not None else "-"),
        ("eval loss", f"{summary.metrics['eval_loss']:.4f}" if "eval_loss" in summary.metrics else "-"),
        ("loss log", f"{out / 'loss.jsonl'} (curve: {out / 'loss.png'}, run log: {out / 'train.log'})"),
    ]
    for label, value in lines:
        click.echo(f"  {label:<12} {value}")


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
