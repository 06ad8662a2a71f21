"""Stage 1, convert: source rows -> the normalised dataset of DESIGN.md section 2.

Rows stream from a reader, are normalised and have their media loaded in batches (in worker processes with
`num_proc` > 1), and are written to Arrow shards in input order. Every row read is either written or recorded
in `rejects.jsonl` with its reason.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from tqdm import tqdm

from vlmdata.accounting import REJECTS_FILE, RejectLog
from vlmdata.arrow_folder import ArrowFolderWriter
from vlmdata.errors import FatalError, RowError
from vlmdata.media import MediaLoader, MediaOptions
from vlmdata.parallel import batched, map_in_order
from vlmdata.readers import ReaderOptions, open_sources
from vlmdata.rows import RawRow, Reject
from vlmdata.schema import normalise
from vlmdata.versions import library_versions

FEATURES = datasets.Features(
    {
        "messages": datasets.List(
            {
                "role": datasets.Value("string"),
                "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
            }
        ),
        "images": datasets.List(datasets.Image()),
        "audios": datasets.List(
            {"array": datasets.List(datasets.Value("float32")), "sampling_rate": datasets.Value("int32")}
        ),
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
)

METADATA_FILE = "vlmdata.json"
ROWS_PER_BATCH = 16


@dataclass
class ConvertSummary:
    """What a convert run did; `rows_read == rows_written + rows_rejected` always holds."""

    out_dir: str
    rows_read: int = 0
    rows_written: int = 0
    images: int = 0
    audios: int = 0
    rejects_by_reason: Counter = field(default_factory=Counter)
    output_bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejects_by_reason.values())

    def to_dict(self) -> dict[str, Any]:
        summary = asdict(self)
        summary["rows_rejected"] = self.rows_rejected
        summary["rejects_by_reason"] = dict(self.rejects_by_reason.most_common())
        return summary


def convert(
    sources: list[str],
    out_dir: str | Path,
    *,
    format: str = "auto",
    reader_options: ReaderOptions | None = None,
    media_options: MediaOptions | None = None,
    num_proc: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertSummary:
    """Converts sources into a normalised dataset folder that `datasets.load_from_disk` loads.

    Args:
        sources: files, folders or dataset ids, all of one format.
        out_dir: the output folder; it appears only once complete.
        format: a reader name, or "auto" to detect it from the first source.
        reader_options: split, messages field, media root.
        media_options: resizing, audio rate, download limits.
        num_proc: worker processes for normalisation and media loading; the output is the same for any value.
        strict: stop at the first bad row (raising FatalError) instead of recording it and going on.
        overwrite: replace `out_dir` if it exists.
        progress: show a progress bar.

    Returns:
        The run's counts; the same figures are saved in the folder's `vlmdata.json`.

    Example:
        >>> summary = convert(["fixtures/data/jsonl/conversations.jsonl"], "out/jsonl")  # doctest: +SKIP
        >>> datasets.load_from_disk("out/jsonl")[0]["messages"][0]["role"]  # doctest: +SKIP
        'system'
    """
    reader_options = reader_options or ReaderOptions()
    media_options = media_options or MediaOptions()
    if num_proc < 1:
        raise FatalError(f"--num-proc must be at least 1, got {num_proc}.")
    started = time.monotonic()
    summary = ConvertSummary(out_dir=str(out_dir))
    rows = open_sources(sources, format, reader_options)

    with ArrowFolderWriter(out_dir, FEATURES, overwrite=overwrite) as writer:
        if media_options.cache_dir is None:
            media_options = replace(media_options, cache_dir=str(writer.scratch_dir / "downloads"))
        work = functools.partial(convert_batch, media_options=media_options)
        with RejectLog(writer.path_of(REJECTS_FILE), strict) as rejects, tqdm(
            desc="convert", unit=" rows", disable=not progress, dynamic_ncols=True
        ) as bar:
            for results in map_in_order(work, batched(rows, ROWS_PER_BATCH), num_proc):
                written = []
                for result in results:
                    if isinstance(result, Reject):
                        rejects.add(result)
                    else:
                        written.append(result)
                        summary.images += len(result["images"])
                        summary.audios += len(result["audios"])
                # Rows are already in storage form. Encoding them through the features would store a mere
                # reference instead of the bytes whenever a file of the image's name exists in the working folder.
                writer.write_table(pa.Table.from_pylist(written, schema=FEATURES.arrow_schema))
                summary.rows_read += len(results)
                summary.rows_written += len(written)
                bar.update(len(results))
                bar.set_postfix(rejected=rejects.count, refresh=False)
        summary.rejects_by_reason = rejects.by_reason
        summary.output_bytes = writer.finish_shards()
        summary.elapsed_s = round(time.monotonic() - started, 3)
        writer.add_file(METADATA_FILE, _metadata(sources, format, reader_options, media_options, num_proc, summary))
    return summary


def convert_batch(rows: list[RawRow], media_options: MediaOptions) -> list[dict[str, Any] | Reject]:
    """Normalises a batch of rows and loads their media: a pure function, so any engine can run it."""
    loader = _loader(media_options)
    return [convert_row(row, loader) for row in rows]


def convert_row(row: RawRow, loader: MediaLoader) -> dict[str, Any] | Reject:
    """One row -> its normalised record, or the Reject that says why it cannot be written."""
    if row.error is not None:
        return Reject(row.source, row.id, "read", row.error)
    stage = "normalise"
    try:
        conversation = normalise(row.record or {})
        _check_unicode(conversation.messages, row)
        stage = "image"
        images = [_load(loader.load_image, payload, row, "image", k) for k, payload in enumerate(conversation.images)]
        stage = "audio"
        audios = [_load(loader.load_audio, payload, row, "audio", k) for k, payload in enumerate(conversation.audios)]
    except RowError as error:
        return Reject(row.source, row.id, stage, str(error))
    except Exception as error:
        # Decoders meet inputs nobody foresaw; one such row must cost that row, not a run of many hours.
        return Reject(row.source, row.id, stage, f"unexpected {type(error).__name__}: {error}")
    return {"messages": conversation.messages, "images": images, "audios": audios, "id": row.id, "source": row.source}


def _check_unicode(messages: list[dict[str, Any]], row: RawRow) -> None:
    """Refuses text with no UTF-8 form: JSON can spell a lone surrogate ("\\ud800"), and Arrow, which stores
    UTF-8, would only find it when writing, failing a whole batch instead of one row."""
    texts = [("the row id", row.id), ("the source name", row.source)]
    for number, message in enumerate(messages):
        texts.append((f"message {number}: role", message["role"]))
        texts += [(f"message {number}, part {index}", part["text"]) for index, part in enumerate(message["content"])]
    for where, text in texts:
        try:
            if text is not None:
                text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RowError(f"{where}: the text is not valid Unicode ({error.reason})") from error


def _load(load, payload: dict[str, Any], row: RawRow, kind: str, position: int) -> dict[str, Any]:
    try:
        return load(payload, row.base_dir)
    except RowError as error:
        raise RowError(f"{kind} {position}: {error}") from error


@functools.lru_cache(maxsize=4)
def _loader(media_options: MediaOptions) -> MediaLoader:
    # One loader per process and run, so its in-memory download cache serves every batch.
    return MediaLoader(media_options)


def _metadata(sources, format, reader_options, media_options, num_proc, summary) -> str:
    versions = library_versions("datasets", "PIL", "pyarrow", "numpy", "librosa")
    arguments = {
        "sources": [str(s) for s in sources],
        "format": format,
        "reader": asdict(reader_options),
        "media": {k: v for k, v in asdict(media_options).items() if k != "cache_dir"},
        "num_proc": num_proc,
    }
    metadata = {"stage": "convert", "versions": versions, "arguments": arguments, "summary": summary.to_dict()}
    return json.dumps(metadata, indent=2, default=str)
