"""Stage 2, tokenize: the normalised dataset -> token shards (DESIGN.md section 3).

Every row goes through the processor's own `apply_chat_template(..., tokenize=True)`, with the family's
packaged chat template (the official string, plus `{% generation %}` markers), so the shards hold exactly what
a user gets from the processor; the assistant mask it returns becomes the labels (`vlmdata.labels`). Rows
stream in batches through worker processes (`map_in_order`), so memory stays flat and the shards are the
same for any `num_proc`. How tensors are stored is described in `vlmdata.shards`: uint8 pixel codes, typed
Arrow arrays, rebuilt bit-exactly by `vlmdata.shards.model_inputs`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vlmdata.accounting import REJECTS_FILE, RejectLog
from vlmdata.arrow_folder import ArrowFolderWriter
from vlmdata.errors import FatalError, RowError
from vlmdata.labels import IGNORE_INDEX, TRAIN_ON, has_generation_markers, make_labels, text_cut_allowed
from vlmdata.models.loading import LoadedProcessor, load_processor
from vlmdata.models.registry import load_template
from vlmdata.parallel import InBackground, batched, computed_ahead, map_in_order
from vlmdata.processor_call import PLAIN_CALL, ProcessorCall, quickest_call
from vlmdata.rows import Reject
from vlmdata.shards import METADATA_FILE, PROCESSOR_DIR, TensorLayout, encode_tensors, probe_layout, rows_to_table
from vlmdata.versions import library_versions

ROWS_PER_BATCH = 16
TRUNCATE = ("none", "text")
OBJECT_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class TokenizeOptions:
    """What every worker needs to tokenize a row (hashable, so each process loads the processor once)."""

    checkpoint: str
    template: str
    train_on: str = "assistant"
    max_length: int | None = None
    truncate: str = "none"
    call: ProcessorCall = PLAIN_CALL
    torch_threads: int | None = None


@dataclass
class TokenizedRow:
    """One written row: its stored columns, and what the summary counts."""

    columns: dict[str, Any]
    images: int
    audios: int


@dataclass
class TokenizeSummary:
    """What a tokenize run did; `rows_read == rows_written + rows_rejected` always holds."""

    out_dir: str
    model: str
    family: str
    template: str
    rows_read: int = 0
    rows_written: int = 0
    images: int = 0
    audios: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    length_percentiles: dict[str, int] = field(default_factory=dict)
    rejects_by_reason: Counter = field(default_factory=Counter)
    output_bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejects_by_reason.values())

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    @property
    def bytes_per_sample(self) -> int:
        return self.output_bytes // self.rows_written if self.rows_written else 0

    def to_dict(self) -> dict[str, Any]:
        summary = asdict(self)
        summary["rows_rejected"] = self.rows_rejected
        summary["trained_fraction"] = round(self.trained_fraction, 6)
        summary["bytes_per_sample"] = self.bytes_per_sample
        summary["rejects_by_reason"] = dict(self.rejects_by_reason.most_common())
        return summary


def tokenize(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    model: str,
    chat_template: str | None = None,
    train_on: str = "assistant",
    max_length: int | None = None,
    truncate: str = "none",
    num_proc: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TokenizeSummary:
    """Tokenizes a normalised dataset folder into token shards that `datasets.load_from_disk` loads.

    Args:
        data_dir: a folder written by `convert` (or any dataset with its columns).
        out_dir: the shard folder; it appears only once complete.
        model: a family alias, a hub id or a local folder holding the processor.
        chat_template: a packaged template name or a Jinja file; by default the family's packaged template.
        train_on: "assistant" (every reply), "all" (every text token) or "last" (the final reply).
        max_length: rows longer than this are rejected, or cut with `truncate="text"`.
        truncate: "none", or "text" to drop trailing text of long rows (never their media tokens).
        num_proc: worker processes; the shards are the same for any value.
        strict: stop at the first bad row instead of recording it.
        overwrite: replace `out_dir` if it exists.
        progress: show a progress bar.

    Returns:
        The run's counts and token statistics; the same figures are saved in the folder's `vlmdata.json`.

    Example:
        >>> summary = tokenize("out/normalised", "out/shards", model="fixtures/data/models/gemma3")  # doctest: +SKIP
        >>> summary.rows_written == summary.rows_read - summary.rows_rejected  # doctest: +SKIP
        True
    """
    _check_arguments(train_on, max_length, truncate, num_proc)
    started = time.monotonic()
    dataset = _read_dataset(data_dir)
    loaded = load_processor(model)
    template_name = chat_template or loaded.family.template_name
    template = load_template(template_name)
    if not has_generation_markers(template):
        raise FatalError(
            f"The chat template {template_name!r} has no {{% generation %}} markers around the assistant replies, "
            "so the trained tokens cannot be found; use a packaged template or add the markers."
        )
    conversations = _probe_conversations(loaded)
    plain = _probe_outputs(loaded, template, conversations)
    layout = probe_layout(plain, getattr(loaded.processor, "image_processor", None))
    codecs = {spec.name: spec.codec for spec in layout.tensors if spec.codec is not None}
    call = quickest_call(loaded.processor, template, conversations, plain, codecs)
    options = TokenizeOptions(
        loaded.checkpoint, template, train_on, max_length, truncate, call, _threads_per_worker(num_proc)
    )
    summary = TokenizeSummary(str(out_dir), model, loaded.family.alias, template_name)
    lengths: Counter[int] = Counter()

    with ArrowFolderWriter(out_dir, layout.features(), overwrite=overwrite) as writer:
        work = functools.partial(tokenize_batch, options=options, layout=layout)
        with RejectLog(writer.path_of(REJECTS_FILE), strict) as rejects, InBackground() as background, tqdm(
            total=len(dataset), desc="tokenize", unit=" rows", disable=not progress, dynamic_ncols=True
        ) as bar:
            for results in map_in_order(work, batched(iter(dataset), ROWS_PER_BATCH), num_proc):
                written = [result for result in results if isinstance(result, TokenizedRow)]
                for result in results:
                    if isinstance(result, Reject):
                        rejects.add(result)
                background.submit(_write, writer, [row.columns for row in written])
                _count(summary, written, lengths)
                summary.rows_read += len(results)
                bar.update(len(results))
                bar.set_postfix(rejected=rejects.count, refresh=False)
        summary.rejects_by_reason = rejects.by_reason
        summary.length_percentiles = _percentiles(lengths)
        summary.output_bytes = writer.finish_shards()
        summary.elapsed_s = round(time.monotonic() - started, 3)
        _save_processor(loaded, template, writer.path_of(PROCESSOR_DIR))
        writer.add_file(METADATA_FILE, _metadata(data_dir, options, template_name, num_proc, layout, summary))
    return summary


def _write(writer: ArrowFolderWriter, rows: list[dict[str, Any]]) -> None:
    writer.write_table(rows_to_table(rows, writer.features))


def _check_arguments(train_on, max_length, truncate, num_proc) -> None:
    if train_on not in TRAIN_ON:
        raise FatalError(f"--train-on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}.")
    if truncate not in TRUNCATE:
        raise FatalError(f"--truncate must be one of {', '.join(TRUNCATE)}, got {truncate!r}.")
    if max_length is not None and max_length < 1:
        raise FatalError(f"--max-length must be at least 1, got {max_length}.")
    if truncate != "none" and max_length is None:
        raise FatalError("--truncate needs --max-length.")
    if num_proc < 1:
        raise FatalError(f"--num-proc must be at least 1, got {num_proc}.")


def _read_dataset(data_dir: str | Path) -> datasets.Dataset:
    try:
        dataset = datasets.load_from_disk(str(data_dir))
    except Exception as error:  # a missing folder, a DatasetDict, a folder of something else
        raise FatalError(f"Cannot read the normalised dataset {str(data_dir)!r}: {error}") from None
    if not isinstance(dataset, datasets.Dataset) or "messages" not in dataset.column_names:
        raise FatalError(f"{str(data_dir)!r} is not a normalised dataset (one split with a 'messages' column).")
    if "images" in dataset.column_names:
        # Workers decode the images: the main process only moves their encoded bytes. Only the feature changes,
        # the Arrow data stays memory-mapped (`cast_column` would rewrite the whole dataset to a cache file).
        info = dataset.info.copy()
        info.features = datasets.Features({**dataset.features, "images": datasets.List(datasets.Image(decode=False))})
        dataset = datasets.Dataset(dataset.data, info=info, split=dataset.split)
    return dataset


def _count(summary: TokenizeSummary, written: list[TokenizedRow], lengths: Counter) -> None:
    for row in written:
        length = int(row.columns["length"])
        lengths[length] += 1
        summary.rows_written += 1
        summary.tokens += length
        summary.trained_tokens += int(np.count_nonzero(row.columns["labels"] != IGNORE_INDEX))
        summary.images += row.images
        summary.audios += row.audios


def _percentiles(lengths: Counter) -> dict[str, int]:
    # From a histogram of lengths: memory grows with the number of distinct lengths, not of rows.
    total = sum(lengths.values())
    if not total:
        return {}
    result, seen, ordered = {}, 0, sorted(lengths.items())
    wanted = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
    for length, count in ordered:
        seen += count
        while wanted and seen >= wanted[0][1] * total:
            result[wanted.pop(0)[0]] = length
    result["min"], result["max"] = ordered[0][0], ordered[-1][0]
    return result


def _threads_per_worker(num_proc: int) -> int | None:
    # Image processors run torch operations on every core; N workers doing so would run N times as many
    # threads as there are cores, and lose time switching between them.
    if num_proc <= 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // num_proc)


def tokenize_batch(rows: list[dict[str, Any]], options: TokenizeOptions, layout: TensorLayout) -> list:
    """Tokenizes a batch of normalised rows: a pure function, so any engine can run it."""
    if options.torch_threads is not None and torch.get_num_threads() != options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    loaded = _processor(options.checkpoint)
    # The next row's images are decoded on another core (Pillow decodes outside the GIL) while this row is tokenized.
    decoding = computed_ahead(functools.partial(_decoded_messages, loaded=loaded, call=options.call), rows)
    return [tokenize_row(row, decoded, loaded, options, layout) for row, decoded in decoding]


def _decoded_messages(row: dict[str, Any], loaded: LoadedProcessor, call: ProcessorCall) -> tuple[list[dict], int, int]:
    messages, images, audios = chat_messages(row, loaded)
    return call.prepare(messages), images, audios


@functools.lru_cache(maxsize=2)
def _processor(checkpoint: str) -> LoadedProcessor:
    # Loaded once per worker process and run; loading per batch would dominate the run time.
    return load_processor(checkpoint)


def tokenize_row(
    row: dict[str, Any], decoded: Future, loaded: LoadedProcessor, options: TokenizeOptions, layout: TensorLayout
):
    """One normalised row -> a TokenizedRow, or the Reject that says why it cannot be written.

    Args:
        decoded: the row's messages with their media decoded (`_decoded_messages`), under way on a thread.
    """
    source, row_id = str(row.get("source") or ""), str(row.get("id") or "")
    stage = "media"
    try:
        messages, images, audios = decoded.result()
        stage = "tokenize"
        outputs = options.call.apply(loaded.processor, messages, options.template)
        assistant_turns = sum(message["role"] == "assistant" for message in messages)
        columns = _token_columns(outputs, loaded, options, assistant_turns)
        columns.update(encode_tensors(outputs, layout))
    except RowError as error:
        return Reject(source, row_id, stage, str(error))
    except Exception as error:
        # A dataset not made by `convert` can hold anything (content that is a string, a part without "type"):
        # one such row must cost that row, not a run of many hours. The same wording as convert's rejects.
        return Reject(source, row_id, stage, f"unexpected {type(error).__name__}: {error}")
    columns.update(id=row_id, source=source)
    return TokenizedRow(columns, images, audios)


def _token_columns(
    outputs: dict, loaded: LoadedProcessor, options: TokenizeOptions, assistant_turns: int
) -> dict[str, Any]:
    """input_ids, labels and length, cutting `outputs`' per-token tensors in place when truncating."""
    input_ids = outputs["input_ids"][0].numpy()
    media = loaded.media_token_ids
    # Labels come from the whole row, before any cut: `last` must mean the final reply even when the cut
    # removes it (the row then has nothing to train on), never the reply before it.
    labels = make_labels(
        input_ids, outputs["assistant_masks"][0].numpy(), outputs["attention_mask"][0].numpy(), media,
        options.train_on, assistant_turns,
    )
    length = len(input_ids)
    if options.max_length is not None and length > options.max_length:
        if options.truncate != "text":
            raise RowError(f"{length} tokens, more than --max-length {options.max_length}")
        if not text_cut_allowed(input_ids, media, options.max_length):
            raise RowError(
                f"{length} tokens, more than --max-length {options.max_length}, and the cut would go through media tokens"
            )
        _cut_per_token(outputs, length, options.max_length)
        input_ids, labels = outputs["input_ids"][0].numpy(), labels[: options.max_length]
    if not np.any(labels != IGNORE_INDEX):
        raise RowError(f"no token to train on (--train-on {options.train_on})")
    return {"input_ids": input_ids.astype(np.int32), "labels": labels.astype(np.int32), "length": np.int32(len(input_ids))}


def _cut_per_token(outputs: dict, length: int, max_length: int) -> None:
    for name, tensor in list(outputs.items()):
        if hasattr(tensor, "ndim") and tensor.ndim >= 2 and tensor.shape[0] == 1 and tensor.shape[1] == length:
            outputs[name] = tensor[:, :max_length]


def chat_messages(row: dict[str, Any], loaded: LoadedProcessor) -> tuple[list[dict], int, int]:
    """The row's messages in the processor's format, with its images and audio placed in their parts.

    Returns:
        The messages, and the numbers of images and audio clips used.
    """
    images, audios = row.get("images") or [], row.get("audios") or []
    counts = {"image": 0, "audio": 0}
    messages = []
    for message in row["messages"]:
        content = []
        for part in message["content"]:
            kind = part["type"]
            if kind == "image":
                content.append({"type": "image", "image": _image(images, counts["image"])})
            elif kind == "audio":
                if "audio" not in loaded.family.modalities:
                    raise RowError("an audio part, but this model family takes no audio")
                content.append({"type": "audio", "audio": _audio(audios, counts["audio"], loaded)})
            else:
                content.append({"type": "text", "text": part.get("text") or ""})
            if kind in counts:
                counts[kind] += 1
        messages.append({"role": message["role"], "content": content})
    if counts["image"] != len(images) or counts["audio"] != len(audios):
        raise RowError(
            f"{counts['image']} image and {counts['audio']} audio parts but {len(images)} images and {len(audios)} audios"
        )
    return messages, counts["image"], counts["audio"]


def _image(images: list, position: int) -> Image.Image:
    if position >= len(images):
        raise RowError(f"image part {position} has no image in the images column")
    try:
        # The same decoding `datasets.Image` does, so the pixels equal what users of the dataset see.
        return datasets.Image().decode_example({"bytes": images[position]["bytes"], "path": images[position]["path"]})
    except Image.UnidentifiedImageError:
        raise RowError(f"image {position}: cannot decode: not a recognised image format") from None
    except Exception as error:
        # Some of Pillow's messages name the in-memory file by its address, which differs from run to run.
        raise RowError(f"image {position}: cannot decode: {OBJECT_ADDRESS.sub('', str(error))}") from None


def _audio(audios: list, position: int, loaded: LoadedProcessor) -> np.ndarray:
    if position >= len(audios):
        raise RowError(f"audio part {position} has no clip in the audios column")
    clip = audios[position]
    extractor = getattr(loaded.processor, "feature_extractor", None)
    expected = getattr(extractor, "sampling_rate", None)
    if expected and clip["sampling_rate"] != expected:
        raise RowError(f"audio {position} is at {clip['sampling_rate']} Hz, the processor needs {expected} Hz")
    return np.asarray(clip["array"], dtype=np.float32)


def _probe_conversations(loaded: LoadedProcessor) -> list[list[dict]]:
    """Two made-up conversations with differently sized images (and audio), to find the layout."""
    def drawn(width: int, height: int) -> Image.Image:
        # Stripes through every level in each channel: the checks on pixels see all 256 values.
        levels = np.add.outer(np.arange(height) * 3, np.arange(width) * 5) % 256
        return Image.fromarray(np.stack([levels, levels[::-1], 255 - levels], axis=-1).astype(np.uint8))

    def row(images: list[Image.Image], audio_seconds: float | None) -> list[dict]:
        content = [{"type": "image", "image": image} for image in images]
        if audio_seconds is not None:
            content.append({"type": "audio", "audio": np.zeros(int(16000 * audio_seconds), dtype=np.float32)})
        content.append({"type": "text", "text": "What is this?"})
        reply = [{"type": "text", "text": "A picture."}]
        return [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]

    with_audio = "audio" in loaded.family.modalities
    return [row([drawn(64, 48)], 0.5 if with_audio else None), row([drawn(140, 50), drawn(30, 90)], 1.0 if with_audio else None)]


def _probe_outputs(loaded: LoadedProcessor, template: str, conversations: list[list[dict]]) -> list[dict]:
    try:
        return [PLAIN_CALL.apply(loaded.processor, messages, template) for messages in conversations]
    except RowError as error:
        raise FatalError(f"The processor of {loaded.name!r} cannot tokenize a simple image conversation: {error}") from None


def _save_processor(loaded: LoadedProcessor, template: str, folder: Path) -> None:
    # Saved with the template used, so training renders conversations exactly like these shards.
    loaded.processor.chat_template = template
    loaded.processor.save_pretrained(str(folder))


def _metadata(data_dir, options: TokenizeOptions, template_name, num_proc, layout, summary) -> str:
    versions = library_versions("datasets", "transformers", "tokenizers", "torch", "PIL", "pyarrow", "numpy")
    arguments = {
        "data": str(data_dir),
        "model": summary.model,
        "chat_template": template_name,
        "train_on": options.train_on,
        "max_length": options.max_length,
        "truncate": options.truncate,
        "num_proc": num_proc,
    }
    metadata = {
        "stage": "tokenize",
        "model": {"name": summary.model, "checkpoint": options.checkpoint, "family": summary.family},
        "chat_template": template_name,
        "pixel_storage": layout.pixel_storage(),
        "processor_call": asdict(options.call),
        "versions": versions,
        "arguments": arguments,
        "layout": layout.to_dict(),
        "summary": summary.to_dict(),
    }
    return json.dumps(metadata, indent=2, default=str)
