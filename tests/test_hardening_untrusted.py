"""Untrusted datasets stay in their sandbox: the options that bound what a dataset can make a run read, fetch,
decode or execute, each checked through the command a user runs."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import time
import zlib
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from PIL import Image

from httpserver import serve
from vlmdata.cli import cli
from vlmdata.errors import RowError
from vlmdata.media.images import prepare_image

PACKAGE = Path(__file__).resolve().parents[1] / "vlmdata"


def png(size=(6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 60, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def row(image_part: dict, row_id: str = "r") -> dict:
    return {"id": row_id, "messages": [{"role": "user", "content": [{"type": "image", **image_part}, "What?"]},
                                       {"role": "assistant", "content": "That."}]}


def convert(tmp_path: Path, rows: list[dict], *options: str) -> tuple[list[str], dict[str, str]]:
    """Runs `vlmdata convert` on `rows`; returns the ids written and the reason of each rejected row."""
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(source), "-o", str(out), "--quiet", "--overwrite", *options])
    assert result.exit_code == 0, result.output
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return datasets.load_from_disk(str(out))["id"], {reject["id"]: reject["reason"] for reject in rejects}


def test_media_root_is_a_sandbox(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "cat.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    os.symlink(tmp_path / "secret.png", root / "link.png")
    rows = [row({"path": "cat.png"}, "inside"), row({"path": "../secret.png"}, "climbs"),
            row({"path": "/etc/passwd"}, "absolute"), row({"path": "link.png"}, "link")]

    written, rejected = convert(tmp_path, rows, "--media-root", str(root))

    assert written == ["inside"]
    assert sorted(rejected) == ["absolute", "climbs", "link"]
    assert all("leads outside the media root" in reason for reason in rejected.values())


def test_paths_no_file_can_have_are_bad_rows_with_their_reason(tmp_path):
    (tmp_path / "cat.png").write_bytes(png())
    rows = [row({"path": "cat.png"}, "fine"), row({"path": "c\x00at.png"}, "nul"), row({"path": "\ud800.png"}, "lone")]

    written, rejected = convert(tmp_path, rows)

    assert written == ["fine"]
    assert rejected == {
        "nul": "image 0: image path 'c\\x00at.png' contains a NUL byte",
        "lone": "image 0: image path '\\ud800.png' holds characters no file name can hold (surrogates not allowed)",
    }


def test_block_private_urls_refuses_the_local_machine(tmp_path):
    with serve({"/cat.png": png()}) as server:
        rows = [row({"url": server.url("/cat.png")}, "loopback")]
        written, rejected = convert(tmp_path, rows, "--block-private-urls")
        assert server.hits["/cat.png"] == 0
        assert written == [] and "is at 127.0.0.1, not a public address" in rejected["loopback"]
        assert convert(tmp_path, rows)[0] == ["loopback"]  # off by default, for local servers
        assert server.hits["/cat.png"] == 1


def test_download_limits_are_options(tmp_path):
    with serve({"/cat.png": png()}) as server:
        rows = [row({"url": server.url("/cat.png")}, "cat")]
        _, rejected = convert(tmp_path, rows, "--max-download-bytes", "10")
        assert "over the limit of 10" in rejected["cat"]


def test_max_file_bytes_bounds_files_read_from_disk(tmp_path):
    (tmp_path / "cat.png").write_bytes(png())
    _, rejected = convert(tmp_path, [row({"path": "cat.png"}, "cat")], "--max-file-bytes", "20")
    assert re.search(r"'cat.png' is \d+ bytes, over the limit of 20", rejected["cat"])


def test_max_image_pixels_is_an_option(tmp_path):
    (tmp_path / "cat.png").write_bytes(png((64, 48)))
    rows = [row({"path": "cat.png"}, "cat")]
    _, rejected = convert(tmp_path, rows, "--max-image-pixels", "3071")
    assert "3072 pixels, over the limit of 3071" in rejected["cat"]
    assert convert(tmp_path, rows, "--max-image-pixels", "3072")[0] == ["cat"]


def test_a_huge_image_is_refused_from_its_header_without_decoding():
    small = png((1, 1))
    header = b"IHDR" + struct.pack(">II", 100_000, 100_000) + small[24:29]
    bomb = small[:8] + struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header)) + small[33:]
    started = time.monotonic()
    try:
        prepare_image(bomb, "'bomb.png'", None, max_pixels=89_478_485)
    except RowError as error:
        assert "10000000000 pixels, over the limit of 89478485" in str(error)
    else:
        raise AssertionError("a ten-gigapixel image was accepted")
    assert time.monotonic() - started < 0.5  # decoding 10 gigapixels would take minutes and 30 GB


class _Marker:
    """Unpickling this creates a file: proof that someone unpickled data from the dataset."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_arrow_extension_metadata_in_a_parquet_is_never_unpickled(tmp_path):
    marker = _Marker()
    marker.path = str(tmp_path / "unpickled")
    messages = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    table = pa.Table.from_pylist([{"messages": messages[0]}])
    # The metadata older pyarrow versions unpickled to rebuild a Python-defined extension type.
    hostile = table.schema.field("messages").with_metadata({
        b"ARROW:extension:name": b"arrow.py_extension_type",
        b"ARROW:extension:metadata": pickle.dumps(marker),
    })
    pq.write_table(table.cast(pa.schema([hostile])), tmp_path / "train.parquet")

    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "train.parquet"), "-o", str(tmp_path / "out"),
                                      "--quiet"])

    assert result.exit_code == 0, result.output
    assert not (tmp_path / "unpickled").exists()
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 1


def test_no_code_of_the_package_evaluates_or_unpickles_anything():
    dangerous = re.compile(
        r"\bpickle\.loads?\(|\bdill\.loads?\(|(?<![\w.])eval\(|(?<![\w.])exec\(|allow_pickle\s*=\s*True"
        r"|trust_remote_code\s*=\s*True|\btorch\.load\(|\byaml\.load\(|\bmarshal\.loads?\("
    )
    found = [f"{path.relative_to(PACKAGE)}:{number}"
             for path in PACKAGE.rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1) if dangerous.search(line)]
    assert found == []


def test_files_whose_names_are_not_utf8_on_disk_convert_with_every_row(tmp_path):
    from vlmdata.convert import convert

    folder = os.fsencode(tmp_path)
    png = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(png, "PNG")
    with open(os.path.join(folder, b"bad\xff.png"), "wb") as file:
        file.write(png.getvalue())
    row = {"messages": [{"role": "user", "content": [{"type": "image", "path": os.fsdecode(b"bad\xff.png")}]},
                        {"role": "assistant", "content": "Red."}]}
    rows = [json.dumps({**row, "id": f"row-{n}"}) for n in range(20)]
    source = os.path.join(folder, b"rows\xfe.jsonl")  # the source file's own name is not UTF-8 either
    with open(source, "w", encoding="utf-8") as file:
        file.write("\n".join(rows) + "\n")

    summary = convert([os.fsdecode(source)], tmp_path / "out", progress=False)

    assert (summary.rows_read, summary.rows_written) == (20, 20)
    dataset = datasets.load_from_disk(str(tmp_path / "out"))
    assert dataset[0]["images"][0].size == (8, 6)
    assert dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))[0]["images"][0]["path"] == "bad\\udcff.png"
    assert dataset[0]["source"].endswith("rows\\udcfe.jsonl")
