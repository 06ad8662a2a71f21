"""A local file written around the page cache (`O_DIRECT`), for the shards.

A buffered write copies every byte into page-cache pages the kernel must first find and clear. Shards are large
(a Gemma 3 image is 2.4 MB of pixel codes) and are written once, so on machines where fresh pages are costly
(virtual machines whose host backs guest memory lazily) those copies took more CPU than tokenizing the rows
(bench/notes.md). Written directly, the bytes go from one reused, aligned staging buffer to the disk; the
writing thread then waits on the disk instead of using a core. A run waits for the disk either way: the
commit syncs every file before the output is renamed into place.

The file's bytes are the same either way. Where the file system refuses `O_DIRECT` (or the platform lacks it),
`open_for_writing` returns an ordinary buffered file.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from typing import BinaryIO

# Direct transfers must start, end and sit in memory on the device's logical block boundaries (512 or 4096
# bytes); a page is a multiple of both.
ALIGNMENT = mmap.PAGESIZE
# Bytes gathered before each write: large enough that the disk streams, small enough to stay in cache.
STAGING_BYTES = 8 << 20

# Staging buffers of closed files, reused by the next ones: their pages stay mapped, never fresh again.
_free_buffers: list[mmap.mmap] = []
_free_buffers_lock = threading.Lock()


def open_for_writing(path: str) -> BinaryIO:
    """`path` opened for writing from its start (created or truncated): a `DirectFile` where the file system
    takes `O_DIRECT`, else a buffered file."""
    if hasattr(os, "O_DIRECT"):
        try:
            return DirectFile(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666))
        except OSError as error:
            if error.errno != errno.EINVAL:  # EINVAL: this file system does not take O_DIRECT
                raise
    return open(path, "wb")


class DirectFile:
    """A write-only file on a descriptor opened with `O_DIRECT`, with the methods Arrow's writers call.

    Bytes are gathered in an aligned staging buffer and written a whole buffer at a time; `close` writes the
    tail padded to the alignment and cuts the file back to its length. If the file system refuses a direct
    write after all, the descriptor goes on without `O_DIRECT`.
    """

    def __init__(self, fd: int):
        self._fd = fd
        with _free_buffers_lock:
            self._buffer = _free_buffers.pop() if _free_buffers else mmap.mmap(-1, STAGING_BYTES)  # page-aligned
        self._view = memoryview(self._buffer)
        self._filled = 0
        self._position = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while len(view):
            taken = min(len(view), STAGING_BYTES - self._filled)
            self._view[self._filled : self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == STAGING_BYTES:
                self._write_staged(STAGING_BYTES)
        self._position += size
        return size

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        """Nothing to do: a partial block can only be written at the end (`close`)."""

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._filled:
                self._write_staged(-(-self._filled // ALIGNMENT) * ALIGNMENT)  # padded, then cut off
                os.ftruncate(self._fd, self._position)
        finally:
            self.closed = True
            self._view.release()
            with _free_buffers_lock:
                _free_buffers.append(self._buffer)
            os.close(self._fd)

    def __del__(self) -> None:
        if not getattr(self, "closed", True):  # abandoned after an error: its descriptor, as io files do
            os.close(self._fd)

    def __enter__(self) -> "DirectFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write_staged(self, size: int) -> None:
        import fcntl  # only where O_DIRECT exists (Linux), like this class

        written = 0
        while written < size:
            try:
                written += os.write(self._fd, self._view[written:size])
            except OSError as error:
                flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                if error.errno != errno.EINVAL or not flags & os.O_DIRECT:
                    raise
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self._filled = 0

