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
    inspect   statistics and an HTML preview of a dataset, token shards or rejects file
    """


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
    help="Folder that relative media paths resolve against [default: the source file's folder].",
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
@click.option("--timeout", default=10.0, type=click.FloatRange(min=0, min_open=True), help="Seconds to wait for a URL, per attempt.")
@click.option("--retries", default=3, type=click.IntRange(min=0), help="Extra attempts for a URL after a 5xx or a connection error.")
@click.option("--max-download-bytes", default=64 * 1024 * 1024, type=click.IntRange(min=1), help="Largest download accepted.")
@click.option("--num-proc", default=1, type=click.IntRange(min=1), help="Worker processes; the output is the same for any value.")
@click.option("--strict", is_flag=True, help="Stop at the first bad row instead of recording it in rejects.jsonl.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def convert(sources, out_dir, source_format, split, field_messages, media_root, image_size, resize_mode,
            resize_algorithm, audio_sampling_rate, timeout, retries, max_download_bytes, num_proc, strict,
            overwrite, quiet) -> None:
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
        max_download_bytes=max_download_bytes,
    )
    reader_options = ReaderOptions(split=split, field_messages=field_messages, media_root=media_root)
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
def tokenize(data, out_dir, model, chat_template, max_length, truncate, train_on, num_proc, strict, overwrite,
             quiet) -> None:
    """Tokenize the normalised dataset DATA into token shards (input_ids, labels, model tensors) for one model.

    \b
    Examples:
      vlmdata tokenize out/normalised -o out/shards --model gemma3 --max-length 2048
      vlmdata tokenize out/normalised -o out/shards --model ./my-checkpoint --train-on last --num-proc 4
    """
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


def _run(stage, *args, **kwargs):
    try:
        return stage(*args, **kwargs)
    except FatalError as error:
        click.secho(f"error: {error}", fg="red", err=True)
        sys.exit(1)


def _print_convert_summary(summary) -> None:
    out = Path(summary.out_dir)
    click.echo(f"\nConverted {summary.rows_written} of {summary.rows_read} rows in {summary.elapsed_s:.1f} s -> {out}")
    lines = [
        ("rows read", summary.rows_read),
        ("rows written", summary.rows_written),
        ("rows rejected", summary.rows_rejected),
        ("images", summary.images),
        ("audio clips", summary.audios),
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
        ("images", summary.images),
        ("audio clips", summary.audios),
        ("shard size", _human_bytes(summary.output_bytes)),
        ("bytes per sample", _human_bytes(summary.bytes_per_sample)),
    ]
    for label, value in lines:
        click.echo(f"  {label:<18} {value}")
    if summary.rows_rejected:
        click.echo(f"  rejects by reason (details in {out / 'rejects.jsonl'}):")
        for reason, count in summary.rejects_by_reason.most_common():
            click.echo(f"    {count:>6}  {reason}")


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
