"""Finding the token shards to train on: a folder made by `vlmdata tokenize`, Arrow files, or a hub dataset.

Training needs three things from the shards: the rows, their tensor layout, and the processor they were made
with (for the pad token and to save beside the trained weights). A tokenize folder holds all three; shards
pushed to the hub hold them as files of the dataset repository (`vlmdata.json`, `processor/`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from vlmdata.errors import FatalError
from vlmdata.shards import METADATA_FILE, PROCESSOR_DIR, TensorLayout, numpy_rows


@dataclass
class Shards:
    """Token shards ready for training.

    Attributes:
        dataset: the rows (numpy format).
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
    """Opens token shards from a local folder or a hub dataset id.

    Raises:
        FatalError: the source is not token shards, or cannot be reached.
    """
    folder = Path(source)
    if not folder.exists():
        folder = _download(source)
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        raise FatalError(f"{source!r} holds no {METADATA_FILE}: it is not a folder of token shards made by `vlmdata tokenize`.")
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    if metadata.get("stage") != "tokenize":
        raise FatalError(f"{source!r} is a {metadata.get('stage', 'unknown')} output, not token shards; run `vlmdata tokenize` on it first.")
    dataset = _load_rows(folder)
    return Shards(numpy_rows(dataset), TensorLayout.from_dict(metadata["layout"]), metadata, folder / PROCESSOR_DIR)


def _load_rows(folder: Path) -> datasets.Dataset:
    if (folder / "state.json").is_file():
        return datasets.load_from_disk(str(folder))
    files = sorted(str(path) for path in folder.glob("*.arrow"))
    if not files:
        raise FatalError(f"{str(folder)!r} holds no Arrow shards.")
    return datasets.load_dataset("arrow", data_files=files, split="train")


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
