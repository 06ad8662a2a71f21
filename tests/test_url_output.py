"""Outputs at an fsspec URL (fsspec's in-process memory file system standing in for an object store): the same
bytes as a local folder, committed by state.json written last, loaded by `datasets` and trained on."""

from __future__ import annotations

import json

import datasets
import fsspec
import pytest

from tests.fixture_data import build_once
from tests.tokenize_fixtures import tiny_model
from vlmdata.convert import convert
from vlmdata.errors import FatalError
from vlmdata.media import MediaOptions, Resize
from vlmdata.tokenize import tokenize
from vlmdata.train import TrainOptions, train

MEDIA = MediaOptions(resize=Resize.parse("48", None, "bilinear"))


@pytest.fixture
def memory():
    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/", recursive=True) if fs.ls("/") else None


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return str(build_once(tmp_path_factory) / "jsonl" / "conversations.jsonl")


def shard_bytes_in_order(fs, root: str) -> list[bytes]:
    state = json.loads(fs.cat(f"{root}/state.json"))
    return [fs.cat(f"{root}/{entry['filename']}") for entry in state["_data_files"]]


def test_convert_to_a_url_writes_the_bytes_of_a_local_folder(memory, source, tmp_path):
    convert([source], tmp_path / "local", media_options=MEDIA, rows_per_unit=16, progress=False)
    convert([source], "memory://bucket/normalised", media_options=MEDIA, rows_per_unit=16, progress=False)

    local = datasets.load_from_disk(str(tmp_path / "local"))
    remote = datasets.load_from_disk("memory://bucket/normalised")
    assert remote.to_list() == local.to_list()
    local_files = [(tmp_path / "local" / f"data-{i:05d}-of-{len(local.cache_files):05d}.arrow").read_bytes()
                   for i in range(len(local.cache_files))]
    assert shard_bytes_in_order(memory, "/bucket/normalised") == local_files
    assert memory.cat("/bucket/normalised/rejects.jsonl") == (tmp_path / "local" / "rejects.jsonl").read_bytes()
    assert not memory.exists("/bucket/normalised/.vlmdata-job")


def test_a_url_output_is_replaced_only_with_overwrite(memory, source):
    convert([source], "memory://bucket/out", progress=False)
    with pytest.raises(FatalError, match="already exists and is not empty; pass --overwrite"):
        convert([source], "memory://bucket/out", progress=False)
    convert([source], "memory://bucket/out", media_options=MEDIA, overwrite=True, progress=False)
    assert json.loads(memory.cat("/bucket/out/vlmdata.json"))["arguments"]["media"]["resize"]["width"] == 48


def test_a_url_folder_without_its_state_file_is_refused_for_training(memory, source, tmp_path):
    convert([source], "memory://bucket/out", progress=False)
    memory.rm("/bucket/out/state.json")
    with pytest.raises(FatalError, match="is not a complete output"):
        train("memory://bucket/out", tmp_path / "lora", options=TrainOptions(max_steps=1), progress=False)


def test_shards_at_a_url_train(memory, source, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    convert([source], tmp_path / "normalised", media_options=MEDIA, progress=False)
    tokenize(tmp_path / "normalised", "memory://bucket/shards", model=str(tiny_model("qwen2_vl")), progress=False)

    summary = train("memory://bucket/shards", tmp_path / "lora", options=TrainOptions(max_steps=2), progress=False)
    assert summary.steps == 2 and summary.first_loss > 0
    assert list((tmp_path / "cache" / "vlmdata" / "shards").iterdir())
