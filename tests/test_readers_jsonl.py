"""The JSON Lines reader: the bundled conversations.jsonl and every awkward file shape."""

from __future__ import annotations

import base64
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixture_data import build_once, make_fixtures, read_all
from vlmdata.errors import FatalError
from vlmdata.readers import records
from vlmdata.readers.jsonl import read_jsonl


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    return build_once(tmp_path_factory)

def write_lines(path, *lines, newline="\n", bom=False):
    text = newline.join(lines)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def chat(text, **extra):
    return json.dumps({"messages": [{"role": "user", "content": text}], **extra})


def test_the_fixture_rows_pass_through_unchanged(fixture_root):
    path = fixture_root / "jsonl" / "conversations.jsonl"
    rows = read_all(read_jsonl, path)

    expected = make_fixtures.jsonl_rows(make_fixtures.drawn_images())
    assert [row.id for row in rows] == [
        "relative-path", "raw-base64", "3", "conversations.jsonl:4", "conversations.jsonl:5",
        "null-keys", "audio-path", "text-only",
    ]
    assert [row.record for row in rows] == expected
    assert {row.base_dir for row in rows} == {str(fixture_root / "jsonl")}
    assert {row.source for row in rows} == {str(path)}


def test_the_fixture_covers_every_offline_loading_key(fixture_root):
    rows = read_all(read_jsonl, fixture_root / "jsonl" / "conversations.jsonl")
    parts = [part for row in rows for message in row.record["messages"] if isinstance(message["content"], list)
             for part in message["content"]]

    image_keys = {key for part in parts if part["type"] == "image" for key, value in part.items() if value is not None}
    assert {"path", "base64"} <= image_keys
    assert any(part["type"] == "image" and set(part) == {"type"} for part in parts)
    assert any(part["type"] == "audio" and part["path"] == "media/tone.wav" for part in parts)
    assert rows[3].record["images"] == ["media/palette.png", "media/alpha.png"]
    assert rows[4].record["image"] == "media/cmyk.jpg"
    assert isinstance(rows[4].record["messages"][0]["content"], str)
    data_uri = rows[2].record["messages"][0]["content"][1]["base64"]
    assert data_uri.startswith("data:image/png;base64,")
    assert base64.b64decode(data_uri.split(",", 1)[1]) == (fixture_root / "images" / "text.png").read_bytes()
    raw = rows[1].record["messages"][0]["content"][0]["base64"]
    assert base64.b64decode(raw) == (fixture_root / "images" / "gradient.png").read_bytes()
    for relative in ("media/shapes.jpg", "media/rotated.jpg", "media/tone.wav", "media/palette.png"):
        assert (fixture_root / "jsonl" / relative).is_file()


def test_bom_blank_lines_and_no_final_newline(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", chat("one"), "", "   ", chat("two"), chat("three"), bom=True)

    rows = read_all(read_jsonl, path)

    assert [row.id for row in rows] == ["chat.jsonl:1", "chat.jsonl:4", "chat.jsonl:5"]
    assert [row.record["messages"][0]["content"] for row in rows] == ["one", "two", "three"]
    assert not path.read_bytes().endswith(b"\n")


def test_a_byte_order_mark_alone_on_the_first_line_is_a_blank_line(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", "", chat("one"), chat("two"), bom=True)

    assert [row.id for row in read_all(read_jsonl, path, split="train[-1:]")] == ["chat.jsonl:3"]


def test_windows_line_endings(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", chat("one"), chat("two"), "", newline="\r\n")

    assert [row.record["messages"][0]["content"] for row in read_all(read_jsonl, path)] == ["one", "two"]


def test_a_bad_line_is_an_error_row_and_reading_goes_on(tmp_path):
    path = write_lines(
        tmp_path / "chat.jsonl", chat("one"), "", "", "", "", "", '{"messages": [oops]}', chat("eight"), "[1, 2]",
    )

    rows = read_all(read_jsonl, path)

    assert [row.id for row in rows] == ["chat.jsonl:1", "chat.jsonl:7", "chat.jsonl:8", "chat.jsonl:9"]
    bad = rows[1]
    assert bad.record is None
    assert bad.error.startswith("line 7: invalid JSON: Expecting value (column 15)")
    assert rows[2].record["messages"][0]["content"] == "eight"
    assert rows[3].error == "line 9: expected a JSON object, found an array"


def test_text_that_is_not_utf8_is_an_error_row(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(chat("ok").encode() + b'\n{"messages": "\xff"}\n')

    rows = read_all(read_jsonl, path)

    assert rows[0].error is None
    assert rows[1].error.startswith("line 2: not UTF-8 text")


def test_a_row_without_messages_is_an_error(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", json.dumps({"id": "x", "conversation": []}))

    (row,) = read_all(read_jsonl, path)

    assert (row.id, row.record, row.error) == ("x", None, "line 1: no 'messages' field")


def test_field_messages_is_renamed(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", json.dumps({"dialog": [{"role": "user", "content": "hi"}], "k": 1}))

    (row,) = read_all(read_jsonl, path, field_messages="dialog")

    assert row.record == {"messages": [{"role": "user", "content": "hi"}], "k": 1}


def test_own_ids_are_used_only_when_strings_or_integers(tmp_path):
    path = write_lines(
        tmp_path / "chat.jsonl", chat("a", id="first"), chat("b", id=7), chat("c", id=True), chat("d", id=None),
        chat("e", id=[1]),
    )

    ids = [row.id for row in read_all(read_jsonl, path)]

    assert ids == ["first", "7", "chat.jsonl:3", "chat.jsonl:4", "chat.jsonl:5"]


def test_a_json_array_file_is_read_item_by_item(tmp_path, monkeypatch):
    items = [json.loads(chat(f"row {n}", extra={"n": [n, n * 1.5, None, True]})) for n in range(5)] + [12]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(items, indent=2))
    monkeypatch.setattr(records, "_CHUNK_CHARS", 7)  # forces items to span many reads

    rows = read_all(read_jsonl, path)

    assert [row.id for row in rows] == [f"chat.json:{index}" for index in range(6)]
    assert [row.record for row in rows[:5]] == items[:5]
    assert rows[5].error == "item 5: expected a JSON object, found a number"


def test_an_empty_json_array_has_no_rows(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text(" [ ] ")
    assert read_all(read_jsonl, path) == []


def test_a_broken_json_array_is_fatal(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text("[" + chat("one") + ", {broken")
    with pytest.raises(FatalError, match=r"chat.json is not valid JSON: item 1"):
        read_all(read_jsonl, path)


def test_a_json_array_that_is_not_utf8_is_fatal(tmp_path):
    path = tmp_path / "chat.json"
    path.write_bytes(b'[{"messages": "\xff"}]')
    with pytest.raises(FatalError, match=r"chat.json is not UTF-8 text"):
        read_all(read_jsonl, path)


def test_a_truncated_json_array_is_fatal(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text("[" + chat("one"))
    with pytest.raises(FatalError, match=r"not a JSON array of objects: expected ',', found the end of the file"):
        read_all(read_jsonl, path)


def test_json_lines_named_json_are_read_as_lines(tmp_path):
    path = write_lines(tmp_path / "chat.json", chat("one"), chat("two"))

    assert [row.id for row in read_all(read_jsonl, path)] == ["chat.json:1", "chat.json:2"]


def test_a_folder_reads_its_files_in_name_order(tmp_path):
    write_lines(tmp_path / "b.jsonl", chat("b1"))
    write_lines(tmp_path / "a.jsonl", chat("a1"), chat("a2"))
    (tmp_path / "notes.txt").write_text("not data")

    rows = read_all(read_jsonl, tmp_path)

    assert [row.id for row in rows] == ["a.jsonl:1", "a.jsonl:2", "b.jsonl:1"]
    assert rows[2].source == str(tmp_path / "b.jsonl")


@pytest.mark.parametrize("split, lines", [("train[:50%]", [1, 3]), ("train[-1:]", [5]), ("train[1:3]", [3, 4])])
def test_split_slices_count_rows_not_lines(tmp_path, split, lines):
    # Four rows, on lines 1, 3, 4 and 5 (the last one bad): blank lines are not rows, bad lines are.
    path = write_lines(tmp_path / "chat.jsonl", chat("1"), "", chat("2"), chat("3"), "{bad", "")

    rows = read_all(read_jsonl, path, split=split)

    assert [row.id for row in rows] == [f"chat.jsonl:{line}" for line in lines]


def test_a_missing_file_is_fatal(tmp_path):
    with pytest.raises(FatalError, match=r"no such file or folder"):
        read_all(read_jsonl, tmp_path / "absent.jsonl")


def test_json_nested_too_deeply_is_an_error_row_and_reading_goes_on(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", "[" * 100_000 + "]" * 100_000, chat("after"))

    deep, after = read_all(read_jsonl, path)

    assert deep.error == "line 1: the JSON is nested too deeply to read"
    assert after.record["messages"][0]["content"] == "after"


def test_a_json_array_nested_too_deeply_is_fatal(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(FatalError, match="nested too deeply"):
        read_all(read_jsonl, path)


def chat_with_a_long_id(text):
    """A valid JSON object whose id has 5000 digits, more than Python turns into an int (4300)."""
    return chat(text, id="ID").replace('"ID"', "9" * 5000)


def test_an_integer_too_long_for_python_is_an_error_row_and_reading_goes_on(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", chat_with_a_long_id("one"), chat("two"))

    long, after = read_all(read_jsonl, path)

    assert long.id == "chat.jsonl:1" and long.record is None
    assert long.error.startswith("line 1: cannot read the JSON: Exceeds the limit (4300 digits)")
    assert after.error is None and after.record["messages"][0]["content"] == "two"


def test_an_integer_too_long_for_python_in_a_json_array_costs_its_item_only(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text("[" + ",".join([chat("one"), chat_with_a_long_id("two"), chat("three")]) + "]")

    rows = read_all(read_jsonl, path)

    assert [row.id for row in rows] == ["chat.json:0", "chat.json:1", "chat.json:2"]
    assert rows[1].record is None and rows[1].error.startswith("item 1: cannot read the JSON: Exceeds the limit")
    assert [row.record["messages"][0]["content"] for row in (rows[0], rows[2])] == ["one", "three"]
    assert records.count_records(str(path)) == 3


def test_a_parquet_value_python_cannot_hold_costs_its_row_only(tmp_path):
    # Arrow stores dates far past the year 9999, which Python's datetime cannot hold.
    table = pa.table({
        "messages": [json.loads(chat(text))["messages"] for text in ("one", "two", "three")],
        "created": pa.array([0, 2**62, 5], pa.timestamp("us")),
    })
    path = tmp_path / "chat.parquet"
    pq.write_table(table, path)

    rows = read_all(read_jsonl, path)

    assert [row.id for row in rows] == ["chat.parquet:0", "chat.parquet:1", "chat.parquet:2"]
    assert rows[1].record is None
    assert rows[1].error == "row 1: cannot read the row: OverflowError: date value out of range"
    assert [row.record["messages"][0]["content"] for row in (rows[0], rows[2])] == ["one", "three"]
