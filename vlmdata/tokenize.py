"""Stage 2, tokenize: the normalised dataset -> token shards (docs/architecture.md, "Token shards").

Every row goes through the processor's own `apply_chat_template(..., tokenize=True)`, with the family's
packaged chat template (the official string, plus `{% generation %}` markers), so the shards hold exactly what
a user gets from the processor; the assistant mask it returns becomes the labels (`vlmdata.labels`). Before
the first row, `vlmdata.calibration` finds how to store each tensor and the quickest call that stores the same;
then `TokenizeWorker` tokenizes batch by batch, wherever the executor runs it, and `vlmdata.stage.run_stage`
writes the shards: uint8 pixel codes and typed Arrow arrays (`vlmdata.shards`), rebuilt bit-exactly by
`vlmdata.shards.model_inputs`.
"""

from __future__ import annotations

import functools
import os
import hashlib
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from vlmdata.accounting import length_percentiles
from vlmdata.arrow_folder import ArrowFolderWriter
from vlmdata.calibration import TokenizePlan, calibrate
from vlmdata.errors import FatalError, RowError
from vlmdata.executors import Executor, make_executor
from vlmdata.folders import PROCESSOR_DIR
from vlmdata.labels import IGNORE_INDEX, TRAIN_ON, TRUNCATE, has_generation_markers, make_labels, text_cut_allowed
from vlmdata.models.loading import LoadedProcessor, load_processor
from vlmdata.modalities import processor_messages
from vlmdata.models.registry import DEFAULT_TEMPLATE_DATE, load_template
from vlmdata.parallel import computed_ahead
from vlmdata.processor_call import ProcessorCall
from vlmdata.rows import RawRow, Reject
from vlmdata.schema import check_assistant_content, undecoded_features
from vlmdata.shards import TensorLayout, encode_tensors, rows_to_table
from vlmdata.stage import (
    ROWS_PER_BATCH, ROWS_PER_UNIT, BatchWorker, RowProgress, Stage, StageSummary, Tally, WrittenRow, guarded,
    run_stage,
)
from vlmdata.versions import library_versions



@dataclass(frozen=True)
class TokenizeOptions:
    """What every worker needs to tokenize a row."""

    checkpoint: str
    template: str
    train_on: str = "assistant"
    max_length: int | None = None
    truncate: str = "none"
    template_date: str = DEFAULT_TEMPLATE_DATE
    # For a family that takes images but no video: each video handed as its frames, one image part each.
    video_as_images: bool = False


@dataclass
class TokenizeSummary(StageSummary):
    """What a tokenize run did; `rows_read == rows_written + rows_rejected` always holds."""

    model: str = ""
    family: str = ""
    template: str = ""
    tokens: int = 0
    trained_tokens: int = 0
    length_percentiles: dict[str, int] = field(default_factory=dict)

    @property
    def trained_fraction(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    @property
    def bytes_per_sample(self) -> int:
        return self.output_bytes // self.rows_written if self.rows_written else 0

    def take(self, tally: Tally) -> None:
        super().take(tally)
        self.tokens, self.trained_tokens = tally.counts["tokens"], tally.counts["trained_tokens"]
        self.length_percentiles = length_percentiles(tally.lengths)

    def to_dict(self) -> dict[str, Any]:
        summary = super().to_dict()
        summary["trained_fraction"] = round(self.trained_fraction, 6)
        summary["bytes_per_sample"] = self.bytes_per_sample
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
    template_date: str = DEFAULT_TEMPLATE_DATE,
    video_as_images: bool = False,
    num_proc: int = 1,
    engine: str = "local",
    ray_address: str | None = None,
    num_workers: int | None = None,
    rows_per_unit: int = ROWS_PER_UNIT,
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
        template_date: the date templates that write today's date write, so that shards do not depend on the day.
        video_as_images: for a family that takes images but no video, hand each video as its frames, one image
            part each, instead of rejecting the row; a family that takes videos is given videos all the same.
        num_proc: worker processes; the shards are the same for any value.
        engine: "local" (this machine, `num_proc` processes) or "ray" (the actors of a Ray cluster); the shards
            are the same bytes with either.
        ray_address: with "ray", the cluster to join ("auto", "HOST:PORT"); None starts a Ray for the run.
        num_workers: with "ray", the actors [default: one per CPU of the cluster].
        rows_per_unit: rows of a work unit, the rows of one shard file (a multiple of 16).
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
    _check_arguments(train_on, max_length, truncate)
    executor = make_executor(engine, num_proc, ray_address, num_workers)
    dataset = _read_dataset(data_dir)
    loaded = load_processor(model)
    template_name = chat_template or loaded.family.template_name
    template = load_template(template_name)
    if not has_generation_markers(template):
        raise FatalError(
            f"The chat template {template_name!r} has no {{% generation %}} markers around the assistant replies, "
            "so the trained tokens cannot be found; use a packaged template or add the markers."
        )
    options = TokenizeOptions(loaded.checkpoint, template, train_on, max_length, truncate, template_date, video_as_images)
    stage = TokenizeStage(str(data_dir), dataset, model, loaded, template_name, options, calibrate(loaded, template))
    return run_stage(stage, out_dir, executor, strict=strict, overwrite=overwrite, progress=progress,
                     rows_per_unit=rows_per_unit)


class TokenizeStage(Stage[TokenizeSummary]):
    """Normalised rows -> token rows for one processor, planned by `calibrate`."""

    name = "tokenize"

    def __init__(self, data_dir: str, dataset: datasets.Dataset, model: str, loaded: LoadedProcessor,
                 template_name: str, options: TokenizeOptions, plan: TokenizePlan):
        self.data_dir, self.dataset, self.model, self.loaded = data_dir, dataset, model, loaded
        self.template_name, self.options, self.plan = template_name, options, plan

    def features(self) -> datasets.Features:
        return self.plan.layout.features()

    def batches(self) -> Iterator["RowRange"]:
        data_dir = os.path.abspath(self.data_dir)  # workers elsewhere have another working folder
        version = tuple((file["filename"], os.stat(file["filename"]).st_mtime_ns) for file in self.dataset.cache_files)
        for start in range(0, len(self.dataset), ROWS_PER_BATCH):
            yield RowRange(data_dir, start, min(start + ROWS_PER_BATCH, len(self.dataset)), version)

    def total_rows(self) -> int:
        return len(self.dataset)

    def worker(self, scratch_dir: Path) -> "TokenizeWorker":
        options = self.options
        if os.path.isdir(options.checkpoint):  # workers elsewhere have another working folder
            options = replace(options, checkpoint=os.path.abspath(options.checkpoint))
        return TokenizeWorker(options, self.plan.call, self.plan.layout)

    def summary(self, out_dir: str) -> TokenizeSummary:
        return TokenizeSummary(out_dir, model=self.model, family=self.loaded.family.alias, template=self.template_name)

    def before_commit(self, writer: ArrowFolderWriter) -> None:
        _save_processor(self.loaded, self.options.template, writer.path_of(PROCESSOR_DIR))

    def settings(self) -> dict[str, Any]:
        return {
            "data": self.data_dir,
            "model": self.model,
            "chat_template": self.template_name,
            "chat_template_sha256": hashlib.sha256(self.options.template.encode("utf-8")).hexdigest(),
            "template_date": self.options.template_date,
            "train_on": self.options.train_on,
            "max_length": self.options.max_length,
            "truncate": self.options.truncate,
            **({"video_as_images": True} if self.options.video_as_images else {}),
        }

    def metadata(self, summary: TokenizeSummary, executor: Executor) -> dict[str, Any]:
        versions = library_versions("datasets", "transformers", "tokenizers", "torch", "PIL", "pyarrow", "numpy")
        arguments = {name: value for name, value in self.settings().items() if name != "chat_template_sha256"}
        arguments.update(executor.describe())
        return {
            "model": {"name": self.model, "checkpoint": self.options.checkpoint, "family": summary.family},
            "chat_template": self.template_name,
            "chat_template_sha256": hashlib.sha256(self.options.template.encode("utf-8")).hexdigest(),
            "pixel_storage": self.plan.layout.pixel_storage(),
            "processor_call": asdict(self.plan.call),
            "versions": versions,
            "arguments": arguments,
            "layout": self.plan.layout.to_dict(),
        }


@dataclass(frozen=True)
class TokenizeWorker(BatchWorker[dict, LoadedProcessor]):
    """Tokenizes batches of normalised rows with the processor, loaded once per process."""

    options: TokenizeOptions
    call: ProcessorCall
    layout: TensorLayout

    @functools.cached_property  # built once per worker, not for every batch's table
    def features(self) -> datasets.Features:
        return self.layout.features()

    def setup(self) -> LoadedProcessor:
        return load_processor(self.options.checkpoint)

    def table(self, rows: list[dict[str, Any]]):
        return rows_to_table(rows, self.features)

    def process(self, batch: "RowRange", loaded: LoadedProcessor) -> list[WrittenRow | Reject]:
        # The next row's images are decoded (and resized, where the call resizes ahead) on another core, Pillow and
        # torch working outside the GIL, while this row is tokenized.
        decode = functools.partial(_decoded_messages, loaded=loaded, call=self.call,
                                   video_as_images=self.options.video_as_images)
        return [self._row(row, decoding, loaded) for row, decoding in computed_ahead(decode, batch.rows())]

    def _row(self, row: dict[str, Any] | RawRow, decoding: Future, loaded: LoadedProcessor) -> WrittenRow | Reject:
        if isinstance(row, RawRow):
            return Reject(row.source, row.id, "read", row.error)
        source, row_id = str(row.get("source") or ""), str(row.get("id") or "")

        def work(progress: RowProgress) -> WrittenRow:
            messages, counts = decoding.result()
            progress.step = "tokenize"
            columns = tokenize_row(messages, loaded, self.options, self.call, self.layout)
            columns.update(id=row_id, source=source)
            trained = int(np.count_nonzero(columns["labels"] != IGNORE_INDEX))
            length = int(columns["length"])
            return WrittenRow(columns, {**counts, "tokens": length, "trained_tokens": trained}, length)

        return guarded(source, row_id, "media", work)


@dataclass(frozen=True)
class RowRange:
    """Rows `start` to `stop` of the normalised dataset in `data_dir`: a batch its worker reads itself, so the
    rows' media bytes go from the (memory-mapped) dataset straight to the process that tokenizes them."""

    data_dir: str
    start: int
    stop: int
    version: tuple = ()  # the dataset's files and their times: a folder written again is opened again

    def __len__(self) -> int:
        return self.stop - self.start

    def rows(self) -> list[dict | RawRow]:
        return _read_rows(_opened(self.data_dir, self.version), self.data_dir, self.start, self.stop)


@functools.lru_cache(maxsize=2)
def _opened(data_dir: str, version: tuple) -> datasets.Dataset:
    return _read_dataset(data_dir)  # once per process and version: memory-mapped, so every worker maps the same files


def _read_rows(dataset: datasets.Dataset, data_dir: str, start: int, stop: int) -> list[dict | RawRow]:
    """Rows `start` to `stop` of the dataset; a row it cannot give (damaged Arrow data, text that is not UTF-8)
    is a RawRow saying why, which its worker rejects: it costs that row, not the run."""
    try:
        return _as_rows(dataset[start:stop])
    except Exception:
        pass
    rows = []
    for index in range(start, stop):
        try:
            rows += _as_rows(dataset[index : index + 1])
        except Exception as error:
            reason = f"cannot read row {index} of the dataset: {type(error).__name__}: {error}"
            rows.append(RawRow(f"{data_dir}:{index}", data_dir, None, error=reason))
    return rows


def _as_rows(columns: dict[str, list]) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


def _decoded_messages(
    row: dict[str, Any] | RawRow, loaded: LoadedProcessor, call: ProcessorCall, video_as_images: bool = False
) -> tuple[list[dict], dict] | None:
    if isinstance(row, RawRow):
        return None
    messages, counts = processor_messages(row, loaded.family, loaded.processor, video_as_images)
    return call.prepare(messages, loaded.processor), counts


def tokenize_row(
    messages: list[dict], loaded: LoadedProcessor, options: TokenizeOptions, call: ProcessorCall, layout: TensorLayout
) -> dict[str, Any]:
    """One conversation, its media decoded, -> its stored columns (input_ids, labels, length, model tensors).

    Raises:
        RowError: the processor fails on it, it is too long, or it has nothing to train on.
    """
    check_assistant_content(messages)  # a dataset not made by convert may have such rows
    outputs = call.apply(loaded.processor, messages, options.template, options.template_date)
    assistant_turns = sum(message["role"] == "assistant" for message in messages)
    columns = _token_columns(outputs, loaded, options, assistant_turns, layout)
    columns.update(encode_tensors(outputs, layout, call.folded))
    return columns


def _check_arguments(train_on, max_length, truncate) -> None:
    if train_on not in TRAIN_ON:
        raise FatalError(f"--train-on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}.")
    if truncate not in TRUNCATE:
        raise FatalError(f"--truncate must be one of {', '.join(TRUNCATE)}, got {truncate!r}.")
    if max_length is not None and max_length < 1:
        raise FatalError(f"--max-length must be at least 1, got {max_length}.")
    if truncate != "none" and max_length is None:
        raise FatalError("--truncate needs --max-length.")


def _read_dataset(data_dir: str | Path) -> datasets.Dataset:
    try:
        dataset = datasets.load_from_disk(str(data_dir))
    except Exception as error:  # a missing folder, a DatasetDict, a folder of something else
        raise FatalError(f"Cannot read the normalised dataset {str(data_dir)!r}: {error}") from None
    if not isinstance(dataset, datasets.Dataset) or "messages" not in dataset.column_names:
        raise FatalError(f"{str(data_dir)!r} is not a normalised dataset (one split with a 'messages' column).")
    # Workers decode the media: the main process only moves their encoded bytes. Only the features change, the
    # Arrow data stays memory-mapped (`cast_column` would rewrite the whole dataset to a cache file).
    info = dataset.info.copy()
    info.features = undecoded_features(dataset.features)
    return datasets.Dataset(dataset.data, info=info, split=dataset.split)


def _token_columns(
    outputs: dict, loaded: LoadedProcessor, options: TokenizeOptions, assistant_turns: int, layout: TensorLayout
) -> dict[str, Any]:
    """input_ids, labels and length, cutting `outputs`' per-token tensors in place when truncating."""
    input_ids = outputs["input_ids"][0].numpy()
    media = loaded.media_mask(input_ids)
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
        if not text_cut_allowed(media, options.max_length):
            raise RowError(
                f"{length} tokens, more than --max-length {options.max_length}, and the cut would go through media tokens"
            )
        _cut_per_token(outputs, layout, options.max_length)
        input_ids, labels = outputs["input_ids"][0].numpy(), labels[: options.max_length]
    if not np.any(labels != IGNORE_INDEX):
        raise RowError(f"no token to train on (--train-on {options.train_on})")
    return {"input_ids": input_ids.astype(np.int32), "labels": labels.astype(np.int32), "length": np.int32(len(input_ids))}


def _cut_per_token(outputs: dict, layout: TensorLayout, max_length: int) -> None:
    # The tensors the layout knows run along the tokens, never one whose shape only happens to match
    # (audio features with as many frames as the row has tokens).
    per_token = {"input_ids", "attention_mask", "assistant_masks"} | {spec.name for spec in layout.tensors if spec.per_token}
    for name in per_token & set(outputs):
        outputs[name] = outputs[name][:, :max_length]


def _save_processor(loaded: LoadedProcessor, template: str, folder: Path) -> None:
    # Saved with the template used, so training renders conversations exactly like these shards.
    loaded.processor.chat_template = template
    loaded.processor.save_pretrained(str(folder))
