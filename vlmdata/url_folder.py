"""Writing a dataset folder at an fsspec URL (`s3://`, `gs://`, `memory://`), which `load_from_disk`
loads and `vlmdata train` trains on.

Object stores cannot rename a folder into place, so the folder is written where it stays and committed by
its `state.json`, written last: until then `load_from_disk` refuses it, and `vlmdata train` calls it
half-written. Shards are written in place under the names they keep; the small files the driver writes as it
goes (rejects, metadata, the processor) are staged in a local folder and uploaded at commit, before
`state.json`. A folder a killed run left holds that run's job file: a rerun of the same job keeps its
finished work units, any other run clears it. Two runs writing the same URL at once are not detected.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import datasets
import fsspec
from datasets.arrow_writer import ArrowWriter

from vlmdata.arrow_folder import loading_files
from vlmdata.errors import FatalError
from vlmdata.folders import INFO_FILE, JOB_FILE, STATE_FILE
from vlmdata.shard_files import DEFAULT_MAX_SHARD_BYTES, ShardSequence, join

log = logging.getLogger(__name__)


def is_url(path: str | Path) -> bool:
    """Whether `path` is a URL of a file system other than this machine's."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | Path) -> str | Path:
    """`file://` URLs as the paths they name; anything else as it is."""
    text = str(path)
    return text[len("file://"):] if text.startswith("file://") else path


class UrlFolderWriter:
    """The `ArrowFolderWriter` of a URL: the same methods, committed by `state.json` instead of a rename."""

    def __init__(self, url: str, features: datasets.Features, *, overwrite: bool = False,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, job: str | None = None):
        self.url = str(url).rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.features, self.overwrite, self.max_shard_bytes, self.job = features, overwrite, max_shard_bytes, job
        self.num_bytes = 0
        self.shards = ShardSequence(self.url, features, max_shard_bytes)
        self._staging: Path | None = None

    def __enter__(self) -> "UrlFolderWriter":
        try:
            self._prepare()
        except OSError as error:
            raise FatalError(f"Cannot write to {self.url}: {error}.") from error
        self._staging = Path(tempfile.mkdtemp(prefix="vlmdata-staging-"))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.shards.end_shard()
                if self.job is None:  # nothing a rerun could keep
                    self.fs.rm(self.root, recursive=True)
        except OSError as error:
            if exc_type is None:
                raise FatalError(f"The run stopped on an error writing {self.url}: {error}.") from error
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)

    def _prepare(self) -> None:
        if self.fs.exists(join(self.root, STATE_FILE)):
            if not self.overwrite:
                raise FatalError(f"{self.url} already exists and is not empty; pass --overwrite to replace it.")
            self.fs.rm(join(self.root, STATE_FILE))  # from here on the old output no longer looks complete
            self.fs.rm(self.root, recursive=True)
        elif self.fs.exists(join(self.root, JOB_FILE)):
            if self.job is not None and self.fs.cat(join(self.root, JOB_FILE)).decode() == self.job:
                log.warning("taking up %s, left unfinished by an interrupted run of the same job", self.url)
                return
            log.warning("clearing %s, left unfinished by an interrupted run", self.url)
            self.fs.rm(self.root, recursive=True)
        elif self.fs.exists(self.root) and self.fs.ls(self.root) and not self.overwrite:
            raise FatalError(f"{self.url} already exists and is not empty; pass --overwrite to replace it.")
        elif self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
        self.fs.makedirs(self.root, exist_ok=True)
        self.fs.pipe(join(self.root, JOB_FILE), (self.job or "").encode())

    @property
    def units_dir(self) -> str:
        """Where remote workers write their units' files: the folder itself, as nothing is renamed."""
        return self.url

    @property
    def scratch_dir(self) -> Path:
        path = self._staging / ".scratch"
        path.mkdir(exist_ok=True)
        return path

    def path_of(self, name: str) -> Path:
        return self._staging / name

    def add_file(self, name: str, text: str) -> None:
        (self._staging / name).write_text(text, encoding="utf-8")

    def finish_shards(self) -> int:
        self.shards.end_shard()
        self.num_bytes = sum(self.fs.size(path) for path in self.shards.paths)
        return self.num_bytes

    def commit(self) -> None:
        """Uploads the staged files, removes the run's own bookkeeping, and writes `state.json` last."""
        self.finish_shards()
        if not self.shards.paths:  # an empty dataset still needs one (empty) shard to load
            self.shards.paths = [join(self.url, "shard-00000-000.arrow")]
            ArrowWriter(features=self.features, path=self.shards.paths[0]).finalize()
        shutil.rmtree(self._staging / ".scratch", ignore_errors=True)
        names = [path.rsplit("/", 1)[-1] for path in self.shards.paths]
        info, state = loading_files(self.features, names)
        self.add_file(INFO_FILE, info)
        for path in sorted(self._staging.rglob("*")):
            if path.is_file():
                self.fs.put_file(str(path), join(self.root, path.relative_to(self._staging).as_posix()))
        for marker in self.fs.glob(join(self.root, "unit-*.json")) + self.fs.glob(join(self.root, ".unit-*.tmp")):
            self.fs.rm(marker)
        self.fs.rm(join(self.root, JOB_FILE))
        self.fs.pipe(join(self.root, STATE_FILE), state.encode())
