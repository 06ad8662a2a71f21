"""Reading media files named by a dataset, without letting the dataset reach files it should not.

A dataset is data from elsewhere: its paths may climb out with "..", point at /etc/passwd, go through a
symbolic link, or name a device that never ends (/dev/zero) or a pipe that never answers. With a media root,
every path must resolve inside it; whatever the path, only regular files are read, and only up to a size cap.

Example:
    >>> path = resolve_media_path("cats/a.jpg", base_dir="/data/set", media_root=None, kind="image")
    >>> path
    '/data/set/cats/a.jpg'
"""

from __future__ import annotations

import os
import stat
from urllib.parse import unquote

from vlmdata.errors import RowError
from vlmdata.rows import storable_text

FILE_URI_PREFIX = "file://"


def resolve_media_path(path: str, base_dir: str | None, media_root: str | None, kind: str) -> str:
    """The file a dataset's path names.

    Args:
        path: as written in the dataset: relative, absolute, or a file:// URI.
        base_dir: what relative paths resolve against when there is no media root (the source file's folder).
        media_root: the folder relative paths resolve against, and the only folder files may be read from.
        kind: "image" or "audio", for messages.

    Raises:
        RowError: the path is no possible file name (see `check_file_name`), or, with a media root, it resolves
            (after following every symbolic link) outside it.
    """
    written = path
    if path.startswith(FILE_URI_PREFIX):
        path = unquote(path[len(FILE_URI_PREFIX):])
    check_file_name(path, written, kind)
    path = os.path.expanduser(path)
    if media_root is None:
        if os.path.isabs(path) or not base_dir:
            return path
        return os.path.join(base_dir, path)
    root = os.path.realpath(media_root)
    resolved = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root:
        raise RowError(f"{kind} path '{written}' leads outside the media root {media_root}")
    return resolved


def check_file_name(path: str, written_as: str, kind: str) -> None:
    """Refuses a path that no file can have, which the operating system would answer with a ValueError.

    A name that is not UTF-8 on disk comes to Python with each undecodable byte as a surrogate ('bad\\udcff.png'
    for the byte 0xff) and is a possible name; a surrogate that stands for no byte ('\\ud800') is not.

    Raises:
        RowError: the path holds a NUL byte, or characters no file name on this system can hold.
    """
    if "\x00" in path:
        raise RowError(f"{kind} path {written_as!r} contains a NUL byte")
    try:
        os.fsencode(path)
    except UnicodeEncodeError as exc:
        raise RowError(f"{kind} path {written_as!r} holds characters no file name can hold ({exc.reason})") from exc


def stored_file_name(path: str | None) -> str | None:
    """The file name of `path` as text that can be stored: an undecodable byte of a name that is not UTF-8
    on disk is kept as a visible escape ('bad\\udcff.png' gives 'bad\\\\udcff.png'), since Arrow stores only
    valid Unicode.

    Example:
        >>> stored_file_name("photos/cat.jpg")
        'cat.jpg'
    """
    if not path:
        return None
    return storable_text(os.path.basename(path))


def read_media_file(path: str, written_as: str, kind: str, max_bytes: int) -> bytes:
    """Reads a regular file of at most `max_bytes` bytes.

    Raises:
        RowError: the path is no possible file name, or the file is missing, unreadable, not a regular file
            (a folder, a device, a pipe) or too large.
    """
    check_file_name(path, written_as, kind)
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer that never comes.
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise RowError(f"{kind} file not found: '{written_as}' (looked for {path})") from exc
    except OSError as exc:
        raise RowError(f"cannot read {kind} file '{written_as}': {exc.strerror or exc}") from exc
    refusal = _refusal(os.fstat(handle), written_as, kind, max_bytes)
    if refusal:
        os.close(handle)
        raise RowError(refusal)
    with os.fdopen(handle, "rb") as file:
        try:
            # Bounded even here: a file may grow between the size check and the read.
            data = file.read(max_bytes + 1)
        except OSError as exc:
            raise RowError(f"cannot read {kind} file '{written_as}': {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise RowError(f"{kind} file '{written_as}' is over the limit of {max_bytes} bytes")
    return data


def _refusal(info: os.stat_result, written_as: str, kind: str, max_bytes: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return f"{kind} path '{written_as}' is not a regular file"
    if info.st_size > max_bytes:
        return f"{kind} file '{written_as}' is {info.st_size} bytes, over the limit of {max_bytes}"
    return None
