"""The layout of FanqingM/MMIU-Benchmark: a metadata table plus one zip archive of images per category.

The hub repository holds ``all.parquet`` (11.7k rows, one "test" split) and seven archives named after the
top-level categories: ``2D-spatial.zip``, ``3D-spatial.zip``, ``Continuous-temporal.zip``,
``Discrete-temporal.zip``, ``High-level-obj-semantic.zip``, ``High-level-sub-semantic.zip``,
``Low-level-semantic.zip``. A metadata row::

    {"task": "forensic_detection_blink", "visual_input_component": "natural image", "source": "blink",
     "options": "A: the first image\\nB: the second image\\n...", "question": "Which image is most likely ...?",
     "context": "You are a judge in a photography competition ...", "output": "A: the first image",
     "input_image_path": ["./Low-level-semantic/forensic_detection_blink/forensic_detection_blink_0_0.jpg", ...]}

The first folder of each image path names the archive. The hub's archives hold the task folders directly
("forensic_detection_blink/..."), while archives re-made from an extracted copy usually repeat the category
("Low-level-semantic/forensic_detection_blink/..."); both are found. Images are read straight out of the
archives, which stay open for the whole run; a folder already extracted next to the metadata is used when
there is no archive for a category. Every archive is opened before the first row is read, so that a corrupt
one stops the run at once, not after the rows of the archives before it.

Archives come from elsewhere and are read as untrusted: members named with "..", an absolute path or a drive
letter, and members that are symbolic links, are never read; a member is read only when its declared size is
within `ReaderOptions.max_file_bytes`, and never beyond that size; an extracted file is read only when it
resolves (symbolic links followed) inside the dataset folder.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from pathlib import PurePosixPath
from typing import Any, Iterator

from vlmdata.errors import FatalError, RowError
from vlmdata.media.options import DEFAULT_MAX_FILE_BYTES
from vlmdata.readers.guard import guarded_row
from vlmdata.readers.hub import HubSource, hub_error, is_hub_source
from vlmdata.readers.options import ReaderOptions
from vlmdata.readers.records import (
    DATA_FILE_SUFFIXES,
    PARQUET_SUFFIXES,
    SourceRecord,
    count_files_records,
    first_record,
    iter_files_records,
    parquet_columns,
)
from vlmdata.readers.split import parse_split, take_slice
from vlmdata.rows import RawRow

METADATA_FILE = "all.parquet"
IMAGE_PATHS_COLUMN = "input_image_path"
_DRIVE = re.compile(r"[A-Za-z]:")


def read_mmiu(source: str, options: ReaderOptions = ReaderOptions()) -> Iterator[RawRow]:
    """Yields one three-message conversation per MMIU metadata row.

    Each record is::

        {"messages": [
            {"role": "system", "content": [{"type": "text", "text": context}]},        # when context is set
            {"role": "user", "content": [{"type": "image", "image": {"bytes": b"...", "path": member}}, ...,
                                         {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": output}]}]}

    Ids are "<metadata file name>:<row index>", e.g. "all.parquet:17". A row whose image is missing, or whose
    path leaves the dataset folder, is yielded with an error instead of a record.

    The dataset is located and every archive opened when this is called, before any row is asked for.

    Args:
        source: the dataset folder (metadata file and archives), a metadata file (archives beside it), or a hub
            id such as "FanqingM/MMIU-Benchmark", which is downloaded first.
        options: `media_root` is the folder of the archives when they are not beside the metadata.

    Raises:
        FatalError: no metadata, no images, or an archive that cannot be opened.
    """
    if is_hub_source(source):
        source = download_hub_dataset(source)
    metadata_files, root = locate_dataset(source, options.media_root)
    split = parse_split(options.split)
    # Slicing happens on the metadata, before any image is read out of an archive.
    records = take_slice(iter_files_records(metadata_files), split, lambda: count_files_records(metadata_files))
    return _rows(records, Archives(root, options.max_file_bytes))


def _rows(records: Iterator[tuple[str, SourceRecord]], archives: "Archives") -> Iterator[RawRow]:
    try:
        for path, record in records:
            yield guarded_row(lambda: record_to_row(record, path, archives), record.key, record.where, path,
                              archives.root)
    finally:
        archives.close()


def locate_dataset(source: str, media_root: str | None = None) -> tuple[list[str], str]:
    """The metadata files of an MMIU source and the folder its archives are in.

    Raises:
        FatalError: no metadata file, or no archive and no extracted folder to take images from.
    """
    if os.path.isfile(source):
        metadata_files, folder = [source], os.path.dirname(os.path.abspath(source))
    elif os.path.isdir(source):
        metadata_files, folder = find_metadata_files(source), source
        if not metadata_files:
            raise FatalError(
                f"{source} holds no MMIU metadata: expected {METADATA_FILE}, or a JSON, JSON Lines or parquet "
                f"file with an {IMAGE_PATHS_COLUMN!r} column."
            )
    else:
        raise FatalError(f"Cannot read {source}: no such file or folder.")
    root = media_root or folder
    if not os.path.isdir(root) or not any(_is_archive_or_folder(root, name) for name in os.listdir(root)):
        raise FatalError(f"{root} holds no image archive (*.zip) or extracted image folder for MMIU.")
    return metadata_files, os.path.abspath(root)  # rows name it, and workers elsewhere have another working folder


def find_metadata_files(folder: str) -> list[str]:
    """``all.parquet`` when the folder has it (the hub layout), else every data file with image paths."""
    if os.path.isfile(os.path.join(folder, METADATA_FILE)):
        return [os.path.join(folder, METADATA_FILE)]
    candidates = sorted(
        os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(DATA_FILE_SUFFIXES)
    )
    return [path for path in candidates if has_image_paths(path)]


def has_image_paths(path: str) -> bool:
    """Whether a data file looks like MMIU metadata (its rows have an "input_image_path" column)."""
    if path.endswith(PARQUET_SUFFIXES):
        return IMAGE_PATHS_COLUMN in parquet_columns(path)
    try:
        record = first_record(path)
    except FatalError:
        return False
    return record is not None and IMAGE_PATHS_COLUMN in record


def download_hub_dataset(source: str) -> str:
    """Downloads an MMIU-style hub repository (metadata and archives; about 25 GB for MMIU) and returns its folder."""
    from huggingface_hub import snapshot_download

    target = HubSource.parse(source)
    try:
        return snapshot_download(
            target.repo_id,
            repo_type="dataset",
            revision=target.revision,
            allow_patterns=[f"*{suffix}" for suffix in (*DATA_FILE_SUFFIXES, ".zip")],
        )
    except Exception as exc:  # offline, unknown name, gated: all fatal here
        raise hub_error(source, exc) from exc


def record_to_row(record: SourceRecord, path: str, archives: "Archives") -> RawRow:
    """Builds the conversation of one metadata row, reading its images out of the archives."""
    if record.value is None:
        return RawRow(record.key, path, None, archives.root, record.error)
    try:
        messages = row_messages(record.value, archives)
    except RowError as exc:
        return RawRow(record.key, path, None, archives.root, f"{record.where}: {exc}")
    return RawRow(record.key, path, {"messages": messages}, archives.root)


def row_messages(value: dict[str, Any], archives: "Archives") -> list[dict[str, Any]]:
    """System (context), user (every image in order, then the question) and assistant (output) messages.

    Raises:
        RowError: a text column is missing, or an image cannot be found.
    """
    question, output, context = (_text(value, column) for column in ("question", "output", "context"))
    if question is None or output is None:
        missing = "question" if question is None else "output"
        raise RowError(f"no {missing!r} text")
    paths = value.get(IMAGE_PATHS_COLUMN)
    if paths is None:
        paths = []
    elif not isinstance(paths, list):  # one path given alone; anything but text is refused as a path below
        paths = [paths]
    images = [archives.image_part(image_path) for image_path in paths]
    messages = [{"role": "system", "content": [{"type": "text", "text": context}]}] if context else []
    messages.append({"role": "user", "content": [*images, {"type": "text", "text": question}]})
    messages.append({"role": "assistant", "content": [{"type": "text", "text": output}]})
    return messages


def safe_relative_path(raw: Any) -> PurePosixPath:
    """An image path of the metadata as a relative path inside the dataset, "./" prefixes removed.

    Example:
        >>> safe_relative_path("./Low-level-semantic/task/a.jpg")
        PurePosixPath('Low-level-semantic/task/a.jpg')

    Raises:
        RowError: the path is not text, is empty or names no file ("."), is absolute, or climbs out with "..":
            reading it could reach any file (the "zip slip" of archive extraction).
    """
    if not isinstance(raw, str):
        raise RowError(f"image path {raw!r} is not text but {type(raw).__name__}")
    if not raw.strip():
        raise RowError(f"image path {raw!r} is empty")
    path = PurePosixPath(raw.strip())
    if path.is_absolute() or _DRIVE.match(raw.strip()) or ".." in path.parts:
        raise RowError(f"image path {raw!r} points outside the dataset folder")
    if not path.parts:
        raise RowError(f"image path {raw!r} names no file")
    return path


class Archives:
    """The category archives (``<category>.zip``) of an MMIU folder, all opened at once and kept open until
    `close`.

    Raises:
        FatalError: an archive cannot be opened; it is named.
    """

    def __init__(self, root: str, max_member_bytes: int = DEFAULT_MAX_FILE_BYTES):
        self.root = root
        self.max_member_bytes = max_member_bytes
        self._archives: dict[str, _Archive] = {}
        try:
            for name in sorted(os.listdir(root)):
                path = os.path.join(root, name)
                if name.endswith(".zip") and os.path.isfile(path):
                    self._archives[name.removesuffix(".zip")] = _Archive(path)
        except BaseException:
            self.close()
            raise

    def image_part(self, raw_path: Any) -> dict[str, Any]:
        """The content part of one image: its bytes from the archive, or the extracted file's path.

        Raises:
            RowError: the path is unsafe, or names no member of its archive (and no extracted file).
        """
        relative = safe_relative_path(raw_path)
        category = relative.parts[0]
        archive = self._archives.get(category)
        member = archive.find(relative) if archive else None
        if member:
            data = archive.read(member, self.max_member_bytes)
            return {"type": "image", "image": {"bytes": data, "path": member}}
        extracted = self._extracted_file(relative, raw_path)
        if extracted:
            return {"type": "image", "path": extracted}
        if archive:
            refused = archive.refused_reason(relative)
            if refused:
                raise RowError(f"image {raw_path!r} is refused: {refused} in {archive.path}")
            raise RowError(f"image {raw_path!r} is not in {archive.path}")
        raise RowError(f"image {raw_path!r}: no archive {category}.zip and no folder {category}/ in {self.root}")

    def close(self) -> None:
        for archive in self._archives.values():
            archive.close()
        self._archives.clear()

    def _extracted_file(self, relative: PurePosixPath, raw_path: Any) -> str | None:
        """The file of an extracted category folder, provided it does not lead out of the dataset folder."""
        path = os.path.join(self.root, *relative.parts)
        if not os.path.isfile(path):
            return None
        root, resolved = os.path.realpath(self.root), os.path.realpath(path)
        if os.path.commonpath([root, resolved]) != root:
            raise RowError(f"image {raw_path!r} is a symbolic link that leads outside the dataset folder")
        return resolved


class _Archive:
    """One open zip archive, the members that are safe to read, and why the others are not."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except Exception as exc:  # a damaged directory gives BadZipFile, but also ValueError, OverflowError...
            raise FatalError(f"Cannot open the image archive {path}: {exc}.") from exc
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.refused: dict[str, str] = {}
        for info in self.zip.infolist():
            if info.is_dir():
                continue
            reason = _unsafe_member_reason(info)
            if reason:
                self.refused[info.filename] = reason
            else:
                self.members[info.filename] = info

    def find(self, relative: PurePosixPath) -> str | None:
        """The member holding `relative`, stored with or without the category folder in front."""
        return next((name for name in _member_names(relative) if name in self.members), None)

    def refused_reason(self, relative: PurePosixPath) -> str | None:
        """Why the member holding `relative` is not read, when it exists but is unsafe."""
        return next((self.refused[name] for name in _member_names(relative) if name in self.refused), None)

    def read(self, member: str, max_bytes: int) -> bytes:
        """The member's bytes, refused unless its declared size is within `max_bytes`.

        The read is bounded too: zipfile stops at the declared size, so an archive that lies about a member's
        size gives a checksum error, never more data than declared.

        Raises:
            RowError: the member is too large, or its data is corrupt.
        """
        info = self.members[member]
        if info.file_size > max_bytes:
            raise RowError(
                f"member {member!r} of {self.path} is {info.file_size} bytes uncompressed, "
                f"over the limit of {max_bytes}"
            )
        try:
            with self.zip.open(info) as file:
                data = file.read(max_bytes + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
            raise RowError(f"cannot read member {member!r} of {self.path}: {exc}") from exc
        if len(data) > max_bytes:
            raise RowError(f"member {member!r} of {self.path} is over the limit of {max_bytes} bytes")
        return data

    def close(self) -> None:
        self.zip.close()


def _member_names(relative: PurePosixPath) -> tuple[str, str]:
    return relative.as_posix(), PurePosixPath(*relative.parts[1:]).as_posix()


def _unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member must not be read, or None: a name leaving the archive's tree, or a symbolic link."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or _DRIVE.match(name) or ".." in path.parts:
        return "its name leads outside the archive"
    # Unix modes live in the top 16 bits; an extractor would create a link there, pointing anywhere.
    if stat.S_ISLNK(info.external_attr >> 16):
        return "it is a symbolic link"
    return None


def _is_archive_or_folder(root: str, name: str) -> bool:
    return name.endswith(".zip") or (os.path.isdir(os.path.join(root, name)) and not name.startswith("."))


def _text(value: dict[str, Any], column: str) -> str | None:
    text = value.get(column)
    return text if isinstance(text, str) else None
