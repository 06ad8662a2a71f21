"""The MMIU reader on the bundled fixture: all.parquet plus one zip archive per category."""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixture_data import build_once, hub_offline, make_fixtures, read_all
from vlmdata.errors import FatalError, RowError
from vlmdata.readers import mmiu, open_sources
from vlmdata.readers.mmiu import read_mmiu, safe_relative_path

ROWS = make_fixtures.MMIU_ROWS
MISSING = make_fixtures.MMIU_MISSING_ROW


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    return build_once(tmp_path_factory)

def tile(root, number):
    return (root / "images" / "tiles" / make_fixtures.tile_name(number)).read_bytes()


def copy_dataset(fixture_root, tmp_path):
    folder = tmp_path / "mmiu"
    shutil.copytree(fixture_root / "mmiu", folder)
    return folder


def write_metadata(folder, rows, name="all.parquet"):
    path = folder / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def metadata_rows(fixture_root):
    return pq.read_table(fixture_root / "mmiu" / "all.parquet").to_pylist()


def test_every_row_is_read_and_the_missing_image_is_an_error(fixture_root):
    rows = read_all(read_mmiu, fixture_root / "mmiu")

    assert [row.id for row in rows] == [f"all.parquet:{index}" for index in range(len(ROWS))]
    assert [row.error is None for row in rows] == [index != MISSING for index in range(len(ROWS))]
    bad = rows[MISSING]
    assert bad.record is None
    assert "./Low-level-semantic/forensic_detection_blink/forensic_detection_blink_8_1.jpg" in bad.error
    assert "Low-level-semantic.zip" in bad.error


def test_a_row_becomes_system_user_and_assistant_messages(fixture_root):
    row = read_all(read_mmiu, fixture_root / "mmiu")[0]

    system, user, assistant = row.record["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": make_fixtures.MMIU_CONTEXT}]}
    assert user["role"] == "user"
    assert [part["type"] for part in user["content"]] == ["image"] * 4 + ["text"]
    assert user["content"][-1] == {"type": "text", "text": "Which image is most likely a real photograph?"}
    assert assistant == {"role": "assistant", "content": [{"type": "text", "text": "A: the first image"}]}
    assert row.base_dir == str(fixture_root / "mmiu")


def test_images_are_the_archived_bytes_in_order(fixture_root):
    rows = read_all(read_mmiu, fixture_root / "mmiu")

    for index, (category, task, _, _, numbers) in enumerate(ROWS):
        if index == MISSING:
            continue
        images = [part["image"] for part in rows[index].record["messages"][1]["content"][:-1]]
        assert [image["bytes"] for image in images] == [tile(fixture_root, number) for number in numbers]
        assert [image["path"] for image in images] == [
            make_fixtures.mmiu_member_name(category, task, index, position) for position in range(len(numbers))
        ]


def test_members_are_found_with_and_without_the_category_folder(fixture_root):
    rows = read_all(read_mmiu, fixture_root / "mmiu")

    prefixed = rows[0].record["messages"][1]["content"][0]["image"]["path"]
    flat = rows[4].record["messages"][1]["content"][0]["image"]["path"]
    assert prefixed.startswith("Low-level-semantic/forensic_detection_blink/")
    assert flat.startswith("jigsaw_puzzle_solving/")
    assert not make_fixtures.mmiu_image_path("2D-spatial", "t", 5, 0, dot_prefix=False).startswith("./")
    assert rows[make_fixtures.MMIU_NO_DOT_PREFIX_ROW].error is None


@pytest.mark.parametrize("repeat_category", [True, False])
def test_either_archive_layout_reads_the_same(fixture_root, tmp_path, repeat_category):
    folder = copy_dataset(fixture_root, tmp_path)
    for archive_path in folder.glob("*.zip"):
        category = archive_path.stem
        with zipfile.ZipFile(archive_path) as archive:
            files = {name.removeprefix(f"{category}/"): archive.read(name) for name in archive.namelist()}
        renamed = {f"{category}/{name}" if repeat_category else name: data for name, data in files.items()}
        make_fixtures.write_zip(archive_path, renamed)

    expected = read_all(read_mmiu, fixture_root / "mmiu")
    rows = read_all(read_mmiu, folder)

    assert [row.error is None for row in rows] == [row.error is None for row in expected]
    for row, reference in zip(rows, expected, strict=True):
        if row.record:
            got = [part.get("image", {}).get("bytes") for part in row.record["messages"][1]["content"]]
            want = [part.get("image", {}).get("bytes") for part in reference.record["messages"][1]["content"]]
            assert got == want


def test_each_archive_is_opened_once(fixture_root, monkeypatch):
    opened = []
    real_zipfile = zipfile.ZipFile

    def counting_zipfile(path, *args, **kwargs):
        opened.append(path)
        return real_zipfile(path, *args, **kwargs)

    monkeypatch.setattr(mmiu.zipfile, "ZipFile", counting_zipfile)
    rows = read_all(read_mmiu, fixture_root / "mmiu")

    assert len(rows) == len(ROWS)
    assert sorted(path.rsplit("/", 1)[-1] for path in opened) == ["2D-spatial.zip", "Low-level-semantic.zip"]


def test_the_metadata_file_can_be_given_directly(fixture_root):
    rows = read_all(read_mmiu, fixture_root / "mmiu" / "all.parquet")

    assert len(rows) == len(ROWS)
    assert sum(row.error is not None for row in rows) == 1


@pytest.mark.parametrize("name", ["metadata.jsonl", "metadata.json"])
def test_json_metadata_is_read_too(fixture_root, tmp_path, name):
    folder = copy_dataset(fixture_root, tmp_path)
    (folder / "all.parquet").unlink()
    write_metadata(folder, metadata_rows(fixture_root), name)

    rows = read_all(read_mmiu, folder)

    assert rows[0].id == (f"{name}:1" if name.endswith(".jsonl") else f"{name}:0")
    assert [row.error is None for row in rows] == [index != MISSING for index in range(len(ROWS))]


def test_split_slices_apply_to_metadata_rows(fixture_root):
    rows = read_all(read_mmiu, fixture_root / "mmiu", split="test[2:4]")

    assert [row.id for row in rows] == ["all.parquet:2", "all.parquet:3"]
    assert [row.id for row in read_all(read_mmiu, fixture_root / "mmiu", split="test[-1:]")] == ["all.parquet:8"]


def test_media_root_points_at_the_archives(fixture_root, tmp_path):
    metadata = tmp_path / "meta"
    metadata.mkdir()
    shutil.copy(fixture_root / "mmiu" / "all.parquet", metadata)

    rows = read_all(read_mmiu, metadata / "all.parquet", media_root=str(fixture_root / "mmiu"))

    assert sum(row.error is None for row in rows) == len(ROWS) - 1


def test_an_extracted_category_folder_is_used_without_its_archive(fixture_root, tmp_path):
    folder = copy_dataset(fixture_root, tmp_path)
    with zipfile.ZipFile(folder / "2D-spatial.zip") as archive:
        archive.extractall(folder / "2D-spatial")
    (folder / "2D-spatial.zip").unlink()

    rows = read_all(read_mmiu, folder)

    extracted = folder / "2D-spatial" / "jigsaw_puzzle_solving" / "jigsaw_puzzle_solving_4_0.jpg"
    assert rows[4].record["messages"][1]["content"][0] == {"type": "image", "path": str(extracted)}
    assert extracted.read_bytes() == tile(fixture_root, 22)


def test_a_missing_archive_is_an_error_naming_it(fixture_root, tmp_path):
    folder = copy_dataset(fixture_root, tmp_path)
    (folder / "2D-spatial.zip").unlink()

    rows = read_all(read_mmiu, folder)

    assert rows[4].record is None
    assert "no archive 2D-spatial.zip" in rows[4].error
    assert rows[0].error is None


@pytest.mark.parametrize(
    "path",
    ["./2D-spatial/../../secret.jpg", "/etc/passwd", "2D-spatial/../2D-spatial.zip", "C:/Windows/win.ini", ""],
)
def test_paths_leaving_the_dataset_are_refused(fixture_root, tmp_path, path):
    folder = copy_dataset(fixture_root, tmp_path)
    row = dict(metadata_rows(fixture_root)[4], input_image_path=[path])
    write_metadata(folder, [row])

    (result,) = read_all(read_mmiu, folder)

    assert result.record is None
    assert repr(path) in result.error


def test_unsafe_member_names_are_never_read(fixture_root, tmp_path):
    folder = copy_dataset(fixture_root, tmp_path)
    make_fixtures.write_zip(folder / "Evil.zip", {"../escape.jpg": b"x", "/abs.jpg": b"y", "ok/fine.jpg": b"z"})
    archive = mmiu._Archive(str(folder / "Evil.zip"))

    assert set(archive.members) == {"ok/fine.jpg"}
    assert set(archive.refused) == {"../escape.jpg", "/abs.jpg"}
    archive.close()


def test_safe_relative_path_strips_dot_prefixes():
    assert str(safe_relative_path("././Low-level-semantic/a/b.jpg")) == "Low-level-semantic/a/b.jpg"
    with pytest.raises(RowError):
        safe_relative_path(None)


def test_rows_without_question_or_output_are_errors(fixture_root, tmp_path):
    folder = copy_dataset(fixture_root, tmp_path)
    row = metadata_rows(fixture_root)[4]
    write_metadata(folder, [dict(row, output=None), dict(row, context="")])

    missing_output, no_context = read_all(read_mmiu, folder)

    assert missing_output.error == "row 0: no 'output' text"
    assert [message["role"] for message in no_context.record["messages"]] == ["user", "assistant"]


def test_a_folder_without_metadata_is_fatal(tmp_path):
    (tmp_path / "images.zip").write_bytes(b"")
    with pytest.raises(FatalError, match="holds no MMIU metadata"):
        read_all(read_mmiu, tmp_path)


def test_a_folder_without_images_is_fatal(fixture_root, tmp_path):
    shutil.copy(fixture_root / "mmiu" / "all.parquet", tmp_path)
    with pytest.raises(FatalError, match="holds no image archive"):
        read_all(read_mmiu, tmp_path)


def test_a_corrupt_archive_is_fatal(fixture_root, tmp_path):
    folder = copy_dataset(fixture_root, tmp_path)
    (folder / "2D-spatial.zip").write_bytes(b"not a zip")
    with pytest.raises(FatalError, match="Cannot open the image archive"):
        read_all(read_mmiu, folder)


def test_an_unreachable_hub_is_fatal(monkeypatch):
    hub_offline(monkeypatch)
    with pytest.raises(FatalError, match=r"^Cannot load FanqingM/MMIU-Benchmark from the Hugging Face hub"):
        read_all(read_mmiu, "FanqingM/MMIU-Benchmark")


# --- untrusted archives -----------------------------------------------------------------------------------------


def evil_dataset(fixture_root, tmp_path, members: dict[str, bytes], compress=zipfile.ZIP_STORED):
    """A copy of the fixture whose "Evil" category archive holds `members`, and one metadata row per member."""
    folder = copy_dataset(fixture_root, tmp_path)
    with zipfile.ZipFile(folder / "Evil.zip", "w", compression=compress) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compress
            info.external_attr = 0o644 << 16
            if name.startswith("link"):
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    template = metadata_rows(fixture_root)[4]
    write_metadata(folder, [dict(template, input_image_path=[f"./Evil/{name}"]) for name in members])
    return folder


def test_a_symbolic_link_member_is_never_read(fixture_root, tmp_path):
    folder = evil_dataset(fixture_root, tmp_path, {"link.jpg": b"/etc/passwd", "fine.jpg": b"data"})

    link, fine = read_all(read_mmiu, folder)

    assert link.record is None and "is refused: it is a symbolic link" in link.error
    assert fine.record["messages"][1]["content"][0]["image"]["bytes"] == b"data"


def test_a_zip_bomb_member_is_refused_from_its_declared_size(fixture_root, tmp_path):
    folder = evil_dataset(fixture_root, tmp_path, {"bomb.jpg": bytes(5_000_000)}, compress=zipfile.ZIP_DEFLATED)
    assert (folder / "Evil.zip").stat().st_size < 20_000  # five megabytes of zeros squeeze to almost nothing

    (row,) = read_all(read_mmiu, folder, max_file_bytes=1_000_000)

    assert row.record is None
    assert "'bomb.jpg' of" in row.error and "is 5000000 bytes uncompressed, over the limit of 1000000" in row.error
    assert read_all(read_mmiu, folder, max_file_bytes=5_000_000)[0].error is None


def test_a_member_lying_about_its_size_is_never_read_past_the_declared_size(fixture_root, tmp_path):
    folder = evil_dataset(fixture_root, tmp_path, {"liar.jpg": bytes(5_000_000)}, compress=zipfile.ZIP_DEFLATED)
    declared = (5_000_000).to_bytes(4, "little")
    data = (folder / "Evil.zip").read_bytes()
    assert data.count(declared) == 2  # the local header and the central directory both state the size
    (folder / "Evil.zip").write_bytes(data.replace(declared, (1000).to_bytes(4, "little")))

    (row,) = read_all(read_mmiu, folder, max_file_bytes=100_000)

    assert row.record is None
    assert "cannot read member 'liar.jpg'" in row.error and "CRC" in row.error


def test_a_corrupt_member_is_a_bad_row_not_a_crash(fixture_root, tmp_path):
    folder = evil_dataset(fixture_root, tmp_path, {"broken.jpg": bytes(range(256)) * 400, "fine.jpg": b"data"},
                          compress=zipfile.ZIP_DEFLATED)
    data = bytearray((folder / "Evil.zip").read_bytes())
    data[100:400] = bytes(300)  # zeroes in the middle of the first member's compressed data
    (folder / "Evil.zip").write_bytes(bytes(data))

    broken, fine = read_all(read_mmiu, folder)

    assert broken.record is None and "cannot read member 'broken.jpg'" in broken.error
    assert fine.error is None


def test_an_extracted_file_that_links_outside_the_dataset_is_refused(fixture_root, tmp_path):
    folder = copy_dataset(fixture_root, tmp_path)
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    (folder / "Extracted" / "task").mkdir(parents=True)
    os.symlink(tmp_path / "secret.jpg", folder / "Extracted" / "task" / "a.jpg")
    write_metadata(folder, [dict(metadata_rows(fixture_root)[4], input_image_path=["./Extracted/task/a.jpg"])])

    (row,) = read_all(read_mmiu, folder)

    assert row.record is None and "symbolic link that leads outside the dataset folder" in row.error


# --- rows and archives nobody foresaw ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["metadata.jsonl", "all.parquet"])
def test_an_image_path_that_is_a_number_is_a_bad_row(fixture_root, tmp_path, name):
    folder = copy_dataset(fixture_root, tmp_path)
    (folder / "all.parquet").unlink()
    template = metadata_rows(fixture_root)[4]
    # In parquet the column is int64 throughout; in JSON Lines one row has a number, the next a list with one.
    paths = [7, 8] if name.endswith(".parquet") else [7, [8], template["input_image_path"]]
    write_metadata(folder, [dict(template, input_image_path=path) for path in paths], name)

    rows = read_all(read_mmiu, folder)

    where = "row" if name.endswith(".parquet") else "line"
    first = 0 if name.endswith(".parquet") else 1
    assert rows[0].record is None and rows[0].error == f"{where} {first}: image path 7 is not text but int"
    assert rows[1].record is None and rows[1].error == f"{where} {first + 1}: image path 8 is not text but int"
    assert all(row.error is None for row in rows[2:])


@pytest.mark.parametrize("path", [".", "./", " ./ "])
def test_an_image_path_that_names_no_file_is_a_bad_row(fixture_root, tmp_path, path):
    folder = copy_dataset(fixture_root, tmp_path)
    write_metadata(folder, [dict(metadata_rows(fixture_root)[4], input_image_path=[path])])

    (row,) = read_all(read_mmiu, folder)

    assert row.record is None and row.error == f"row 0: image path {path!r} names no file"


def test_anything_unexpected_while_reading_a_row_costs_that_row_only(fixture_root, tmp_path):
    folder = evil_dataset(fixture_root, tmp_path, {"café.jpg": b"data", "fine.jpg": b"data"})
    # The central directory says the member's name is UTF-8; its local header holds a byte UTF-8 never has,
    # which zipfile finds only when the member is opened, raising an error no reader code expects.
    data = bytearray((folder / "Evil.zip").read_bytes())
    data[data.find("café.jpg".encode())] = 0xFF
    (folder / "Evil.zip").write_bytes(bytes(data))

    broken, fine = read_all(read_mmiu, folder)

    assert broken.id == "all.parquet:0" and broken.record is None
    assert broken.error.startswith("row 0: unexpected UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff")
    assert fine.error is None and fine.record["messages"][1]["content"][0]["image"]["bytes"] == b"data"


def test_a_corrupt_archive_that_only_late_rows_use_stops_the_run_before_the_first_row(fixture_root, tmp_path):
    folder = copy_dataset(fixture_root, tmp_path)
    assert {row[0] for row in ROWS[:4]} == {"Low-level-semantic"}  # the first rows never read 2D-spatial.zip
    archive = folder / "2D-spatial.zip"
    archive.write_bytes(archive.read_bytes()[:-100])  # its central directory cut short
    first_source = fixture_root / "jsonl" / "conversations.jsonl"

    with pytest.raises(FatalError, match=r"^Cannot open the image archive .*2D-spatial\.zip: "):
        open_sources([str(first_source), str(folder)])
