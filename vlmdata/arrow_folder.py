"""Writing a dataset folder that `datasets.load_from_disk` loads, one row batch at a time.

`Dataset.save_to_disk` needs the whole dataset first; a run over hundreds of thousands of rows must instead
stream, so rows go straight into Arrow shards (rolled over by size) and the two small JSON files
`load_from_disk` reads are written at the end.

A run can be killed at any moment, so the folder `OUT` only ever holds a whole output:
    - the folder is built as `OUT.partial` (which `load_from_disk` refuses: its state.json comes last), then
      synced to disk and renamed to `OUT`;
    - an existing `OUT` being overwritten is first renamed to `OUT.previous`, and deleted only once the new
      output is in place; a run killed between the two renames leaves the old output whole under
      `OUT.previous`, and the next run puts it back before doing anything else;
    - the next run deletes a `OUT.partial` left by a killed run, unless a live run still holds its lock, or the
      folder belongs to the same job of an engine whose workers write their own work units (Ray): then the
      next run takes it up, keeping the units already written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from vlmdata.errors import FatalError
from vlmdata.folders import INFO_FILE, JOB_FILE, PARTIAL_SUFFIX, PREVIOUS_SUFFIX, STATE_FILE
from vlmdata.shard_files import DEFAULT_MAX_SHARD_BYTES, ShardSequence

try:
    import fcntl
except ImportError:  # Windows: two runs writing the same folder at once are not detected there
    fcntl = None

log = logging.getLogger(__name__)


class ArrowFolderWriter:
    """Streams rows into `data-XXXXX-of-YYYYY.arrow` shards of a folder `load_from_disk` understands.

    Example:
        >>> features = datasets.Features({"text": datasets.Value("string")})
        >>> with ArrowFolderWriter("out", features) as writer:   # doctest: +SKIP
        ...     writer.write_rows([{"text": "hello"}])
        ...     writer.add_file("vlmdata.json", "{}")
        >>> datasets.load_from_disk("out")["text"]  # doctest: +SKIP
        ['hello']

    Leaving the `with` block through an exception removes the partial folder; `commit` happens on a clean exit.
    An OSError (a full disk, a folder that cannot be created) leaves it as a FatalError naming the problem.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        features: datasets.Features,
        *,
        overwrite: bool = False,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        job: str | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.features = features
        self.overwrite = overwrite
        self.max_shard_bytes = max_shard_bytes
        self.job = job
        self.partial_dir = self.out_dir.with_name(self.out_dir.name + PARTIAL_SUFFIX)
        self.previous_dir = self.out_dir.with_name(self.out_dir.name + PREVIOUS_SUFFIX)
        self.num_bytes = 0
        self.shards = ShardSequence(str(self.partial_dir), features, max_shard_bytes)
        self._lock: int | None = None

    def __enter__(self) -> "ArrowFolderWriter":
        try:
            self._prepare()
        except OSError as exc:
            raise FatalError(f"Cannot create the output folder {self.partial_dir}: {exc.strerror or exc}.") from exc
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
                return
            self.shards.end_shard()
            shutil.rmtree(self.partial_dir, ignore_errors=True)
        except OSError as error:
            exc = exc or error
        finally:
            _unlock(self._lock)
        if isinstance(exc, OSError):
            raise FatalError(f"The run stopped on a file system error: {exc}.") from exc

    def _prepare(self) -> None:
        restore_interrupted_overwrite(self.out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise FatalError(f"{self.out_dir} exists and is not a folder.")
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not self.overwrite:
            raise FatalError(f"{self.out_dir} already exists and is not empty; pass --overwrite to replace it.")
        if self.partial_dir.exists() and self._take_up_or_remove_partial():
            return
        self.partial_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.partial_dir.mkdir()
        except FileExistsError:
            raise FatalError(f"{self.partial_dir} was just created by another run writing the same output.") from None
        self._lock = _try_lock(self.partial_dir)
        if self.job is not None:
            self.units_dir.mkdir()
            (self.units_dir / JOB_FILE).write_text(self.job, encoding="utf-8")

    def _take_up_or_remove_partial(self) -> bool:
        """Takes up a partial folder a killed run of this same job left (True: its finished work units are kept,
        for engines whose workers write units themselves), or removes one left by any other run."""
        lock = _try_lock(self.partial_dir)
        if lock == _BUSY:
            raise FatalError(
                f"{self.partial_dir} is being written by another run; wait for it to finish, or stop it first."
            )
        if self.job is not None and _read_text(self.units_dir / JOB_FILE) == self.job:
            log.warning("taking up %s, left unfinished by an interrupted run of the same job", self.partial_dir)
            self._lock = lock
            return True
        try:
            log.warning("removing %s, left unfinished by an interrupted run", self.partial_dir)
            shutil.rmtree(self.partial_dir)
        finally:
            _unlock(lock)
        return False

    @property
    def units_dir(self) -> Path:
        """Where workers that write their own work units put the units' files, until commit names them."""
        return (self.partial_dir / ".units").absolute()

    @property
    def scratch_dir(self) -> Path:
        """A folder inside the partial output for the run's own temporary files; removed on commit."""
        path = (self.partial_dir / ".scratch").absolute()  # workers elsewhere have another working folder
        path.mkdir(exist_ok=True)
        return path

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        """Appends rows (plain Python values, encoded by the folder's features) to the current shard."""
        if rows:
            encoded = [self.features.encode_example(row) for row in rows]
            self.shards.write_table(pa.Table.from_pylist(encoded, schema=self.features.arrow_schema))

    def add_file(self, name: str, text: str) -> None:
        """Writes a small text file (metadata, rejects) into the output folder, atomically with the rest."""
        (self.partial_dir / name).write_text(text, encoding="utf-8")

    def path_of(self, name: str) -> Path:
        """Where a file that is written bit by bit (e.g. the rejects file) lives until the folder is committed."""
        return self.partial_dir / name

    def finish_shards(self) -> int:
        """Closes the last shard; returns the bytes the shards take on disk (no more rows may be written)."""
        self.shards.end_shard()
        self.num_bytes = sum(os.path.getsize(path) for path in self.shards.paths)
        return self.num_bytes

    def commit(self) -> None:
        """Names the shards, writes the files `load_from_disk` reads, and moves the folder into place.

        The files are synced to disk before the rename, so that even a power cut never leaves a folder named
        `out_dir` whose files were not all written.
        """
        self.finish_shards()
        if not self.shards.paths:  # an empty dataset still needs one (empty) shard to load
            self.shards.paths = [str(self.partial_dir / "shard-00000-000.arrow")]
            ArrowWriter(features=self.features, path=self.shards.paths[0]).finalize()
        count = len(self.shards.paths)
        names = [f"data-{i:05d}-of-{count:05d}.arrow" for i in range(count)]
        for path, name in zip(self.shards.paths, names):
            Path(path).rename(self.partial_dir / name)
        shutil.rmtree(self.partial_dir / ".scratch", ignore_errors=True)
        shutil.rmtree(self.units_dir, ignore_errors=True)

        info, state = loading_files(self.features, names)
        self.add_file(INFO_FILE, info)
        self.add_file(STATE_FILE, state)
        _sync_tree(self.partial_dir)
        self._move_into_place()

    def _move_into_place(self) -> None:
        if self.previous_dir.exists():
            shutil.rmtree(self.previous_dir)
        if self.out_dir.exists():
            os.replace(self.out_dir, self.previous_dir)
        os.replace(self.partial_dir, self.out_dir)
        _sync_folder(self.out_dir.parent)
        shutil.rmtree(self.previous_dir, ignore_errors=True)


def loading_files(features: datasets.Features, shard_names: list[str]) -> tuple[str, str]:
    """The texts of `dataset_info.json` and `state.json`, the files `load_from_disk` reads, for these shards."""
    state = {
        "_data_files": [{"filename": name} for name in shard_names],
        "_fingerprint": None,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    info = asdict(datasets.DatasetInfo(features=features))
    return json.dumps({k: info[k] for k in sorted(info)}, indent=2), json.dumps(state, indent=2, sort_keys=True)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def restore_interrupted_overwrite(out_dir: Path) -> None:
    """Finishes what a run killed while replacing `out_dir` left: the old output back in place when the new
    one never arrived, or the old output deleted when the new one did."""
    previous = out_dir.with_name(out_dir.name + PREVIOUS_SUFFIX)
    if not previous.is_dir():
        return
    if out_dir.exists():
        shutil.rmtree(previous)
    else:
        log.warning("restoring %s from %s, left by a run interrupted while replacing it", out_dir, previous)
        os.replace(previous, out_dir)


_BUSY = -1


def _try_lock(folder: Path) -> int | None:
    """An exclusive lock on a folder, held until `_unlock`: its descriptor, _BUSY when another process holds
    it, or None where locks are not available."""
    if fcntl is None:
        return None
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return _BUSY
    except OSError:  # a file system without locks: run unguarded rather than not at all
        os.close(handle)
        return None
    return handle


def _unlock(handle: int | None) -> None:
    if handle is not None and handle != _BUSY:
        os.close(handle)


def _sync_tree(folder: Path) -> None:
    for parent, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(parent, name), "rb") as file:
                os.fsync(file.fileno())
        _sync_folder(Path(parent))


def _sync_folder(folder: Path) -> None:
    if fcntl is None:
        return  # Windows cannot open a folder to sync it
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
