"""The llava-instruct-mix reader on the bundled parquet fixture (the hub dataset's exact schema)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixture_data import build_once, hub_offline, make_fixtures, read_all
from vlmdata.errors import FatalError
from vlmdata.readers import llava_instruct_mix
from vlmdata.readers.hub import HubSource, is_hub_source
from vlmdata.readers.llava_instruct_mix import files_of_split, read_llava_instruct_mix, split_of_file

TRAIN_FILE = "train-00000-of-00001.parquet"
TRAIN_ROWS = make_fixtures.LLAVA_TRAIN_ROWS


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    return build_once(tmp_path_factory)

def drawn_image(root, name):
    folder = root / "images" / ("tiles" if name.startswith("tile_") else "")
    return (folder / name).read_bytes()


def expected_row_numbers(rows):
    return [int(row.id.rsplit(":", 1)[1]) for row in rows]


def test_folder_reads_the_train_split_by_default(fixture_root):
    rows = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix")

    assert [row.id for row in rows] == [f"{TRAIN_FILE}:{index}" for index in range(12)]
    assert all(row.error is None for row in rows)
    assert {row.source for row in rows} == {str(fixture_root / "llava_instruct_mix" / "data" / TRAIN_FILE)}
    assert {row.base_dir for row in rows} == {str(fixture_root / "llava_instruct_mix" / "data")}


def test_rows_keep_the_hub_layout(fixture_root):
    rows = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix")

    first = rows[0].record
    assert first["messages"] == [
        {"role": "user", "content": [{"index": 0, "text": None, "type": "image"},
                                     {"index": None, "text": "What shapes do you see?", "type": "text"}]},
        {"role": "assistant", "content": [{"index": None, "text": "A red square, a blue circle and a green line.",
                                           "type": "text"}]},
    ]
    assert first["images"] == [{"bytes": drawn_image(fixture_root, "shapes.jpg"), "path": "shapes.jpg"}]
    text_first = rows[make_fixtures.LLAVA_TEXT_FIRST_ROW].record["messages"][0]["content"]
    assert [part["type"] for part in text_first] == ["text", "image"]


def test_multi_turn_and_two_image_rows(fixture_root):
    rows = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix")

    three_turns = rows[5].record
    assert [message["role"] for message in three_turns["messages"]] == ["user", "assistant"] * 3
    image_parts = [part for part in three_turns["messages"][0]["content"] if part["type"] == "image"]
    assert [part["index"] for part in image_parts] == [0, 1]
    assert len(three_turns["images"]) == 2


def test_image_bytes_are_the_drawn_files(fixture_root):
    rows = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix")

    for row, (_, names) in zip(rows, TRAIN_ROWS, strict=True):
        assert [image["bytes"] for image in row.record["images"]] == [drawn_image(fixture_root, n) for n in names]


def test_split_name_selects_files_by_name(fixture_root):
    rows = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix", split="test")

    assert [row.id for row in rows] == ["test-00000-of-00001.parquet:0", "test-00000-of-00001.parquet:1"]
    assert rows[1].record["messages"][0]["content"][1]["text"] == "Test: read the number."


@pytest.mark.parametrize(
    "split, expected",
    [
        ("train[:25%]", [0, 1, 2]),
        ("train[2:5]", [2, 3, 4]),
        ("train[50%:]", list(range(6, 12))),
        ("train[-2:]", [10, 11]),
        ("train[:1%]", []),
        ("train[10:100]", [10, 11]),
        ("train[5:3]", []),
    ],
)
def test_split_slices(fixture_root, split, expected):
    rows = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix", split=split)

    assert expected_row_numbers(rows) == expected
    for row in rows:
        names = TRAIN_ROWS[int(row.id.rsplit(":", 1)[1])][1]
        assert [image["bytes"] for image in row.record["images"]] == [drawn_image(fixture_root, n) for n in names]


def test_a_single_file_takes_the_slice_whatever_the_split_name(fixture_root):
    path = fixture_root / "llava_instruct_mix" / "data" / TRAIN_FILE

    assert expected_row_numbers(read_all(read_llava_instruct_mix, path, split="train[2:5]")) == [2, 3, 4]
    assert len(read_all(read_llava_instruct_mix, path)) == 12


def test_a_slice_reads_only_the_row_groups_it_covers(fixture_root, monkeypatch):
    requested = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        requested.append(kwargs.get("row_groups"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    rows = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix", split="train[5:7]")

    assert expected_row_numbers(rows) == [5, 6]
    assert requested == [[1]]  # row groups of 4 rows: rows 5 and 6 are both in the second group


def test_ids_are_stable_across_runs(fixture_root):
    first = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix", split="train[3:9]")
    second = read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix", split="train[3:9]")

    assert [(row.id, row.record) for row in first] == [(row.id, row.record) for row in second]


def test_slices_span_several_shards(tmp_path, fixture_root):
    table = pq.read_table(fixture_root / "llava_instruct_mix" / "data" / TRAIN_FILE)
    data = tmp_path / "data"
    data.mkdir()
    for shard in range(3):
        pq.write_table(table.slice(shard * 4, 4), data / f"train-{shard:05d}-of-00003.parquet")

    rows = read_all(read_llava_instruct_mix, tmp_path, split="train[3:9]")

    assert [row.id for row in rows] == [
        "train-00000-of-00003.parquet:3",
        *(f"train-00001-of-00003.parquet:{index}" for index in range(4)),
        "train-00002-of-00003.parquet:0",
    ]


def test_unknown_split_names_the_available_ones(fixture_root):
    with pytest.raises(FatalError, match=r"no split 'validation'; its splits are test, train"):
        read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix", split="validation")


def test_bad_split_syntax_is_fatal(fixture_root):
    with pytest.raises(FatalError, match="Cannot read the split"):
        read_all(read_llava_instruct_mix, fixture_root / "llava_instruct_mix", split="train[:abc]")


def test_split_of_file_names():
    assert split_of_file("d/data/train-00000-of-00020.parquet", "d") == "train"
    assert split_of_file("d/data/test-00003-of-00004-8f2c1a.parquet", "d") == "test"
    assert split_of_file("d/default/validation/0000.parquet", "d") == "validation"
    assert split_of_file("d/test.parquet", "d") == "test"
    assert split_of_file("d/mydata.parquet", "d") is None
    assert files_of_split(["d/a.parquet", "d/b.parquet"], "d", "anything") == ["d/a.parquet", "d/b.parquet"]


def test_field_messages_is_renamed(tmp_path, fixture_root):
    table = pq.read_table(fixture_root / "llava_instruct_mix" / "data" / TRAIN_FILE)
    pq.write_table(table.rename_columns(["conversation", "images"]), tmp_path / "chat.parquet")

    rows = read_all(read_llava_instruct_mix, tmp_path / "chat.parquet", field_messages="conversation")

    assert rows[0].id == "chat.parquet:0"
    assert "conversation" not in rows[0].record
    assert rows[0].record["messages"][0]["role"] == "user"


def test_a_file_without_the_messages_column_is_fatal(tmp_path):
    pq.write_table(pa.table({"text": ["hello"]}), tmp_path / "plain.parquet")

    with pytest.raises(FatalError, match=r"plain.parquet has no 'messages' column \(its columns are text\)"):
        read_all(read_llava_instruct_mix, tmp_path / "plain.parquet")


def test_a_missing_local_file_is_fatal(tmp_path):
    with pytest.raises(FatalError, match="no such file or folder"):
        read_all(read_llava_instruct_mix, tmp_path / "nothing.parquet")


def test_hub_sources_are_told_from_local_paths(tmp_path):
    assert is_hub_source("HuggingFaceH4/llava-instruct-mix-vsft")
    assert is_hub_source("hf://datasets/HuggingFaceH4/llava-instruct-mix-vsft")
    assert not is_hub_source("data/train.parquet")
    assert not is_hub_source(str(tmp_path))
    assert HubSource.parse("hf://datasets/org/name@v1.0") == HubSource("org/name", "v1.0", None)


def test_an_unreachable_hub_is_one_fatal_sentence(monkeypatch):
    hub_offline(monkeypatch)

    with pytest.raises(FatalError) as raised:
        read_all(read_llava_instruct_mix, "HuggingFaceH4/llava-instruct-mix-vsft", split="train[:1%]")

    message = str(raised.value)
    assert message.startswith("Cannot load HuggingFaceH4/llava-instruct-mix-vsft from the Hugging Face hub (")
    assert message.endswith("or give a local copy.") and "\n" not in message


def streamed_fixture(fixture_root, calls):
    """Stands in for the hub: `datasets` streams the local fixture, with the card's split size."""
    import datasets

    real_load_dataset = datasets.load_dataset
    data_files = str(fixture_root / "llava_instruct_mix" / "data" / "train-*.parquet")

    def load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        dataset = real_load_dataset("parquet", data_files={"train": data_files}, split="train", streaming=True)
        dataset.info.splits = datasets.SplitDict({"train": datasets.SplitInfo("train", num_examples=12)})
        return dataset

    return load_dataset


def test_hub_rows_stream_with_image_bytes_undecoded(fixture_root, monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", streamed_fixture(fixture_root, calls))

    rows = read_all(read_llava_instruct_mix, "HuggingFaceH4/llava-instruct-mix-vsft", split="train[2:5]")

    assert calls == [("HuggingFaceH4/llava-instruct-mix-vsft", {"revision": None, "split": "train", "streaming": True})]
    assert [row.id for row in rows] == ["train:2", "train:3", "train:4"]
    assert rows[0].source == "HuggingFaceH4/llava-instruct-mix-vsft[train]"
    for row, (_, names) in zip(rows, TRAIN_ROWS[2:5], strict=True):
        assert [image["bytes"] for image in row.record["images"]] == [drawn_image(fixture_root, n) for n in names]
    assert rows[1].record["messages"][0]["content"][0]["text"] == "Which way does the arrow point?"


def test_hub_percent_slices_use_the_declared_split_size(fixture_root, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", streamed_fixture(fixture_root, []))

    rows = read_all(read_llava_instruct_mix, "org/dataset", split="train[75%:]")

    assert [row.id for row in rows] == ["train:9", "train:10", "train:11"]


def test_hf_file_paths_load_as_parquet_data_files(fixture_root, monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", streamed_fixture(fixture_root, calls))
    source = "hf://datasets/HuggingFaceH4/llava-instruct-mix-vsft/data/train-*.parquet"

    rows = read_all(read_llava_instruct_mix, source, split="train[:2]")

    assert calls[0] == ("parquet", {"data_files": {"train": source}, "split": "train", "streaming": True})
    assert [row.id for row in rows] == ["train:0", "train:1"]


def test_undecoded_reaches_nested_image_features():
    import datasets

    undecoded = llava_instruct_mix._undecoded
    assert undecoded(datasets.List(datasets.Image(), length=2)) == datasets.List(datasets.Image(decode=False), length=2)
    assert undecoded({"a": [datasets.Image()]}) == {"a": [datasets.Image(decode=False)]}
    assert undecoded(datasets.Value("string")) == datasets.Value("string")


def test_a_corrupt_row_group_rejects_its_rows_and_reading_goes_on(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i} " * 20}]} for i in range(9)]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3, compression="snappy")
    data = bytearray(path.read_bytes())
    middle = pq.ParquetFile(path).metadata.row_group(1)
    for column in range(middle.num_columns):
        chunk = middle.column(column)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start:start + chunk.total_compressed_size] = bytes(chunk.total_compressed_size)
    path.write_bytes(bytes(data))

    read = read_all(read_llava_instruct_mix, path)

    assert [row.id for row in read] == [f"chat.parquet:{index}" for index in range(9)]
    assert [row.error is None for row in read] == [True] * 3 + [False] * 3 + [True] * 3
    assert read[4].record is None and read[4].error.startswith("row 4: row group 1 cannot be read: ")
    assert read[8].record["messages"][0]["content"].startswith("question 8")
    assert [row.id for row in read_all(read_llava_instruct_mix, path, split="train[4:7]")] == [
        "chat.parquet:4", "chat.parquet:5", "chat.parquet:6"
    ]
