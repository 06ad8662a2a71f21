"""Finding the token shards to train on: a folder made by `vlmdata tokenize` (local, or at an fsspec URL such
as `s3://`), or a hub dataset holding one.

Training needs three things from the shards: the rows, their tensor layout, and the processor they were made
with (for the pad token and to save beside the trained weights). A tokenize folder holds all three; shards
pushed to the hub hold them as files of the dataset repository (`vlmdata.json`, `processor/`). Anything less
(a half-written folder, damaged files, no rows) is refused before the model loads, with one sentence saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import fsspec
import numpy as np
import torch

from vlmdata.folders import METADATA_FILE, PARTIAL_SUFFIX, PROCESSOR_DIR, REJECTS_FILE, STATE_FILE
from vlmdata.errors import FatalError
from vlmdata.shard_files import join
from vlmdata.shards import TensorLayout, numpy_rows
from vlmdata.url_folder import is_url


@dataclass
class Shards:
    """Token shards ready for training.

    Attributes:
        dataset: the rows (numpy format; `ArrowRows` serves them to a data loader without a copy).
        layout: how the tensors are stored.
        metadata: the shards' `vlmdata.json`.
        processor_dir: the folder of the processor the shards were made with.
    """

    dataset: datasets.Dataset
    layout: TensorLayout
    metadata: dict[str, Any]
    processor_dir: Path

    @property
    def checkpoint(self) -> str:
        """The model the shards were tokenized for."""
        return self.metadata["model"]["checkpoint"]


def open_shards(source: str) -> Shards:
    """Opens token shards from a local folder, an fsspec URL (copied once into a local cache) or a hub dataset id.

    Raises:
        FatalError: the source is not token shards, is half-written or damaged, holds no rows, or cannot be
            reached; the message names the folder and what to do.
    """
    folder = Path(source)
    if is_url(source):
        folder = fetch_url(source)
    elif not folder.exists():
        folder = _download(source)
    _check_finished(folder, source)
    metadata = _read_metadata(folder, source)
    layout = _layout(metadata, source)
    if not (folder / PROCESSOR_DIR).is_dir():
        raise FatalError(
            f"{source!r} has no {PROCESSOR_DIR}/ folder, which training needs (the shards' pad token and the processor "
            "saved with the model); copy the whole folder that `vlmdata tokenize` wrote, or tokenize the data again."
        )
    dataset = _load_rows(folder, source)
    if len(dataset) == 0:
        hint = f" (its {REJECTS_FILE} says why each row was rejected)" if (folder / REJECTS_FILE).is_file() else ""
        raise FatalError(f"{source!r} holds no rows to train on{hint}; fix the data and tokenize it again.")
    return Shards(numpy_rows(dataset), layout, metadata, folder / PROCESSOR_DIR)


def _check_finished(folder: Path, source: str) -> None:
    # An output is built as OUT.partial and its state.json is written last (vlmdata.arrow_folder): a folder with
    # either sign comes from a run that was killed or is still running, and may lack rows it would have held.
    # Training on it would go on silently with part of the data.
    state_missing = not (folder / STATE_FILE).is_file()
    if folder.name.endswith(PARTIAL_SUFFIX) or (
        state_missing and ((folder / METADATA_FILE).is_file() or any(folder.glob("*.arrow")))
    ):
        raise FatalError(
            f"{source!r} is a half-written output (a run was killed or is still running); "
            "run the same `vlmdata tokenize` command again and train on the folder it completes."
        )


def _read_metadata(folder: Path, source: str) -> dict[str, Any]:
    path = folder / METADATA_FILE
    if not path.is_file():
        raise FatalError(f"{source!r} holds no {METADATA_FILE}: it is not a folder of token shards made by `vlmdata tokenize`.")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError covers both bad JSON and bytes that are not UTF-8
        raise FatalError(
            f"The {METADATA_FILE} of {source!r} cannot be read ({type(error).__name__}); "
            "the folder is damaged: tokenize the data again."
        ) from None
    if not isinstance(metadata, dict):
        raise FatalError(f"The {METADATA_FILE} of {source!r} is not a JSON object; the folder is damaged: tokenize the data again.")
    if metadata.get("stage") != "tokenize":
        raise FatalError(f"{source!r} is a {metadata.get('stage', 'unknown')} output, not token shards; run `vlmdata tokenize` on it first.")
    return metadata


def _layout(metadata: dict[str, Any], source: str) -> TensorLayout:
    """The tensor layout, checking on the way the entries training reads later (so no KeyError comes mid-run)."""
    model = metadata.get("model")
    present = {"model": isinstance(model, dict) and isinstance(model.get("checkpoint"), str),
               "layout": isinstance(metadata.get("layout"), dict)}
    missing = [f"'{key}'" for key, ok in present.items() if not ok]
    if missing:
        raise FatalError(
            f"The {METADATA_FILE} of {source!r} lacks its {' and '.join(missing)} entry; "
            "the folder is damaged or incomplete: tokenize the data again."
        )
    try:
        return TensorLayout.from_dict(metadata["layout"])
    except (KeyError, TypeError, ValueError) as error:
        raise FatalError(
            f"The 'layout' entry of the {METADATA_FILE} of {source!r} is malformed ({type(error).__name__}); "
            "the folder is damaged: tokenize the data again."
        ) from None


def _load_rows(folder: Path, source: str) -> datasets.Dataset:
    try:
        # Reads every record batch of every shard (memory-mapped): a truncated or corrupt file fails here,
        # not after the model has loaded.
        dataset = datasets.load_from_disk(str(folder))
    except Exception as error:  # pyarrow, OSError, JSON errors: all mean the same thing to the user
        raise FatalError(
            f"The shards in {source!r} cannot be read ({type(error).__name__}: {_first_line(error)}); "
            "a file is truncated or corrupt: tokenize the data again."
        ) from None
    return dataset


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else "no detail"


def fetch_url(url: str) -> Path:
    """The shards at an fsspec URL, copied into `~/.cache/vlmdata/shards` once: training reads each row many
    times, and the data loader wants memory-mapped local files."""
    fs, root = fsspec.core.url_to_fs(url)
    try:
        metadata = fs.cat(join(root, METADATA_FILE)) if fs.exists(join(root, STATE_FILE)) else None
    except OSError as error:
        raise FatalError(f"{url!r} cannot be read: {error}.") from None
    if metadata is None:
        raise FatalError(
            f"{url!r} is not a complete output (no {STATE_FILE}: a run was killed, is still running, or never wrote "
            "there); run the same `vlmdata tokenize` command again."
        )
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = cache_home / "vlmdata" / "shards" / hashlib.sha256(url.encode() + metadata).hexdigest()[:16]
    if not (folder / STATE_FILE).is_file():
        # A copy of this process's own, moved into place whole: the ranks of a multi-GPU run copy at once.
        copying = folder.with_name(f"{folder.name}.{os.getpid()}{PARTIAL_SUFFIX}")
        for path in fs.find(root):
            target = copying / path[len(root.rstrip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        try:
            os.replace(copying, folder)
        except OSError:  # another process put its copy there first
            shutil.rmtree(copying, ignore_errors=True)
    return folder


def _download(repo_id: str) -> Path:
    """The shards of a hub dataset repository, downloaded once into the hub cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset"))
    except Exception as error:  # offline, gated, missing: all one message for the user
        raise FatalError(
            f"{repo_id!r} is neither a folder nor a reachable hub dataset ({type(error).__name__}); "
            "check the path, the network, or `hf auth login` for private datasets."
        ) from None


class ArrowRows(torch.utils.data.Dataset):
    """The rows of a shard dataset for a data loader, each a one-row Arrow table that `ShardCollator` reads
    without copying (`vlmdata.shards.arrow_row`): the numpy format would copy every row's pixels first."""

    def __init__(self, dataset: datasets.Dataset):
        self.rows = dataset.with_format("arrow")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.rows[int(index)]


def split_eval(dataset: datasets.Dataset, val_set_size: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Holds out `val_set_size` of the rows (a fraction below 1, else a count) for evaluation, drawn with `seed`."""
    if not val_set_size:
        return dataset, None
    held_out = round(val_set_size * len(dataset)) if val_set_size < 1 else int(val_set_size)
    if not 0 < held_out < len(dataset):
        raise FatalError(f"--val-set-size {val_set_size} leaves no rows to train or none to evaluate ({len(dataset)} rows).")
    order = np.random.default_rng(seed).permutation(len(dataset))
    # Index mappings in memory: the shards' folder must not receive cache files.
    return (dataset.select(sorted(order[held_out:]), keep_in_memory=True),
            dataset.select(sorted(order[:held_out]), keep_in_memory=True))
