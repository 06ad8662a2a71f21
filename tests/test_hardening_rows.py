"""Bad input never crashes a run or loses a row: one convert run over every kind of bad row at once.

A single JSON Lines file (with a byte order mark, blank lines, a broken line and no final newline) holds one
row per problem, between good rows; its media are real files and a real HTTP server on 127.0.0.1 that
misbehaves in every way a server can. The run must finish, write the good rows, and put each bad row in
rejects.jsonl with a reason that says what is wrong.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import struct
import zlib

import datasets
import numpy as np
import pytest
from PIL import Image

from httpserver import Reply, redirect, serve
from vlmdata.convert import convert
from vlmdata.media import MediaOptions


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: the shape of a decompression bomb."""
    small = encode(Image.new("L", (1, 1)), "PNG")
    chunk = b"IHDR" + struct.pack(">II", width, height) + small[24:29]
    return small[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + small[33:]


def exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # a red mark top-left as stored; upright, it is top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=100, exif=exif)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def palette_png() -> bytes:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([200, 10, 10] + [0, 0, 0] * 255)
    return encode(image, "PNG")


GOOD_PNG = encode(Image.new("RGB", (6, 4), (10, 120, 200)), "PNG")
JPEG = encode(Image.new("RGB", (64, 64), (90, 90, 90)), "JPEG")
MEDIA_FILES = {
    "good.png": GOOD_PNG,
    "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"this is not an image at all",
    "truncated.jpg": JPEG[: len(JPEG) // 2],
    "empty.png": b"",
    "huge.png": png_claiming_size(30_000, 30_000),
    "noise.wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40),
    "palette.png": palette_png(),
    "la.png": encode(Image.new("LA", (4, 4), (30, 128)), "PNG"),
    "cmyk.jpg": encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100),
    "grey16.png": encode(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), "PNG"),
    "rgba.png": encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"),
    "animated.gif": animated_gif(),
    "rotated.jpg": exif_rotated_jpeg(),
}
ROUTES = {
    "/good.png": GOOD_PNG,
    "/flaky.png": [Reply(status=500), GOOD_PNG],
    "/png-labelled-html": Reply(body=GOOD_PNG, headers={"Content-Type": "text/html"}),
    "/down.png": Reply(status=500),
    "/login.html": Reply(body=b"<html><body>Please sign in</body></html>", headers={"Content-Type": "text/html"}),
    "/slow.png": Reply(body=GOOD_PNG, delay=2.0),
    "/loop": redirect("/loop"),
    "/drip.png": Reply(body=GOOD_PNG, drip=0.05),
    "/endless": Reply(body=b"x" * 4096, endless=True, piece_bytes=4096),
}
OPTIONS = MediaOptions(timeout=0.3, retries=1, download_deadline=1.0, max_download_bytes=100_000)


def ask(row_id: str, *parts, answer="Fine.", **columns) -> dict:
    return {"id": row_id, "messages": [{"role": "user", "content": list(parts) or "Hello?"},
                                       {"role": "assistant", "content": answer}], **columns}


def image(key: str, value: str) -> dict:
    return {"type": "image", key: value}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def source_rows(url) -> list[dict]:
    refused = f"http://127.0.0.1:{free_port()}/gone.png"
    return [
        ask("written-string-content"),
        {"id": "written-list-content", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]},
        *[ask(f"written-{name}", image("path", f"media/{name}"), "What is it?") for name in (
            "palette.png", "la.png", "cmyk.jpg", "grey16.png", "rgba.png", "animated.gif", "rotated.jpg")],
        ask("written-url-after-a-500", image("url", url("/flaky.png"))),
        {"id": "written-one-empty-reply-among-others", "messages": [
            {"role": "user", "content": "One?"}, {"role": "assistant", "content": ""},
            {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "Two."}]},
        ask("written-url-with-wrong-content-type", image("url", url("/png-labelled-html"))),
        ask("corrupt-image", image("path", "media/corrupt.png")),
        ask("truncated-jpeg", image("path", "media/truncated.jpg")),
        ask("zero-byte-file", image("path", "media/empty.png")),
        ask("missing-path", image("path", "media/nope.png")),
        ask("huge-image", image("path", "media/huge.png")),
        ask("corrupt-audio", {"type": "audio", "path": "media/noise.wav"}),
        ask("invalid-base64", image("base64", "not base64 at all!")),
        ask("more-parts-than-images", {"type": "image"}, {"type": "image"}, images=["media/good.png"]),
        {"id": "empty-messages", "messages": []},
        {"id": "message-without-role", "messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]},
        {"id": "unknown-role", "messages": [{"role": "narrator", "content": "x"},
                                            {"role": "assistant", "content": "y"}]},
        ask("text-not-a-string", {"type": "text", "text": 42}),
        {"id": "no-assistant-turn", "messages": [{"role": "user", "content": "Anyone?"}]},
        {"id": "every-reply-empty", "messages": [
            {"role": "user", "content": "One?"}, {"role": "assistant", "content": "  "},
            {"role": "user", "content": "Two?"}, {"role": "assistant", "content": [{"type": "text", "text": ""}]}]},
        ask("url-404", image("url", url("/missing.png"))),
        ask("url-500", image("url", url("/down.png"))),
        ask("url-html-instead-of-image", image("url", url("/login.html"))),
        ask("url-connection-refused", image("url", refused)),
        ask("url-timeout", image("url", url("/slow.png"))),
        ask("url-redirect-loop", image("url", url("/loop"))),
        ask("url-slow-drip", image("url", url("/drip.png"))),
        ask("url-endless-body", image("url", url("/endless"))),
        ask("url-ftp", image("url", "ftp://example.com/cat.png")),
        ask("url-file-scheme", {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}),
    ]


# Each bad row: the stage that rejects it and what its reason must say.
REJECTED = {
    "corrupt-image": ("image", r"cannot decode image 'media/corrupt.png'"),
    "truncated-jpeg": ("image", r"(?i)cannot decode image 'media/truncated.jpg': .*truncated"),
    "zero-byte-file": ("image", r"cannot decode image 'media/empty.png': the file is empty"),
    "missing-path": ("image", r"image file not found: 'media/nope.png'"),
    "huge-image": ("image", r"'media/huge.png' is too large to decode safely: 900000000 pixels, over the limit"),
    "corrupt-audio": ("audio", r"cannot decode audio 'media/noise.wav'"),
    "invalid-base64": ("image", r"invalid base64 image data"),
    "more-parts-than-images": ("normalise", r"2 image parts have no image of their own but the images column has 1"),
    "empty-messages": ("normalise", r"messages is empty"),
    "message-without-role": ("normalise", r"message 0 has no role"),
    "unknown-role": ("normalise", r"message 0: unknown role 'narrator'"),
    "text-not-a-string": ("normalise", r"part 0: text is a int, expected a string"),
    "no-assistant-turn": ("normalise", r"the conversation has no assistant message"),
    "every-reply-empty": ("normalise", r"every assistant turn is empty \(2 of them\)"),
    "url-404": ("image", r"GET http://127.0.0.1:\d+/missing.png failed: 404 Not Found"),
    "url-500": ("image", r"/down.png failed: 500 Internal Server Error \(after 2 attempts\)"),
    "url-html-instead-of-image": ("image", r"cannot decode image 'http://\S+/login.html': not a recognised image"),
    "url-connection-refused": ("image", r"/gone.png failed: connection failed \(.*Connection refused"),
    "url-timeout": ("image", r"/slow.png failed: no answer within 0.3s"),
    "url-redirect-loop": ("image", r"/loop failed: more than 5 redirects"),
    "url-slow-drip": ("image", r"/drip.png failed: not complete within the download deadline of 1s"),
    "url-endless-body": ("image", r"/endless failed: the body is over the limit of 100000 bytes"),
    "url-ftp": ("image", r"scheme 'ftp' is not supported \(only http and https\)"),
    "url-file-scheme": ("image", r"scheme 'file' is not supported"),
    "source.jsonl:4": ("read", r"line 4: invalid JSON: Expecting property name enclosed in double quotes"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Converts the bad-rows file once; yields (summary, rejects by id, dataset, ids of the source rows)."""
    folder = tmp_path_factory.mktemp("hardening")
    (folder / "media").mkdir()
    for name, data in MEDIA_FILES.items():
        (folder / "media" / name).write_bytes(data)
    with serve(ROUTES) as server:
        rows = [json.dumps(row) for row in source_rows(server.url)]
        # A byte order mark, blank lines, a broken line (line 4) and no newline after the last row.
        lines = [rows[0], "", "   ", "{bad json", *rows[1:]]
        source = folder / "source.jsonl"
        source.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())
        summary = convert([str(source)], folder / "out", media_options=OPTIONS, progress=False)
    rejects_file = (folder / "out" / "rejects.jsonl").read_text().splitlines()
    rejects = {reject["id"]: reject for reject in map(json.loads, rejects_file)}
    ids = [json.loads(line)["id"] for line in rows] + ["source.jsonl:4"]
    return summary, rejects, datasets.load_from_disk(str(folder / "out")), ids, source


@pytest.mark.parametrize("row_id", sorted(REJECTED))
def test_each_bad_row_is_rejected_with_a_clear_reason(run, row_id):
    _, rejects, _, _, source = run
    stage, reason = REJECTED[row_id]
    assert row_id in rejects, f"{row_id} was not rejected"
    assert rejects[row_id]["stage"] == stage
    assert rejects[row_id]["source"] == str(source)
    assert re.search(reason, rejects[row_id]["reason"]), rejects[row_id]["reason"]


def test_every_row_read_is_written_or_rejected(run):
    summary, rejects, dataset, ids, _ = run
    written = [row_id for row_id in ids if row_id.startswith("written-")]
    assert dataset["id"] == written
    assert set(rejects) == set(REJECTED) == set(ids) - set(written)
    assert summary.rows_read == len(ids) == summary.rows_written + summary.rows_rejected
    assert (summary.rows_written, summary.rows_rejected) == (len(written), len(REJECTED))
    assert sum(summary.rejects_by_reason.values()) == len(rejects)
    # Reasons are grouped without their names, paths and URLs, so that the summary stays short.
    assert summary.rejects_by_reason["image: image N: image file not found: '…' (looked for …)"] == 1
    assert summary.rejects_by_reason["image: image N: GET … failed: N Not Found"] == 1


def test_images_in_awkward_modes_are_written_as_upright_rgb(run):
    _, _, dataset, _, _ = run
    stored = {row["id"]: row["images"][0] for row in dataset if row["images"]}
    assert {image.mode for image in stored.values()} == {"RGB"}
    assert stored["written-palette.png"].getpixel((1, 1)) == (200, 10, 10)
    assert stored["written-rgba.png"].getpixel((1, 1)) == (255, 255, 255)  # transparent becomes white
    assert stored["written-grey16.png"].getpixel((1, 1)) == (255, 255, 255)  # 16-bit white stays white
    red, green, blue = stored["written-cmyk.jpg"].getpixel((4, 4))
    assert red > 240 and green < 15 and blue < 15
    red, green, blue = stored["written-animated.gif"].getpixel((4, 4))  # the first frame
    assert red > 240 and green < 15 and blue < 15
    rotated = stored["written-rotated.jpg"]
    assert rotated.size == (20, 40) and rotated.getpixel((15, 5))[0] > 200
    assert np.array_equal(np.asarray(stored["written-url-after-a-500"]), np.asarray(Image.open(io.BytesIO(GOOD_PNG))))


def test_content_may_be_a_string_in_one_row_and_a_list_in_the_next(run):
    _, _, dataset, _, _ = run
    first, second = dataset[0]["messages"], dataset[1]["messages"]
    assert first[0]["content"] == [{"type": "text", "text": "Hello?"}]
    assert second[1]["content"] == [{"type": "text", "text": "Hello."}]


def test_a_base64_image_that_decodes_but_is_not_an_image_is_a_bad_row(tmp_path):
    row = ask("fake", image("base64", base64.b64encode(b"GIF89a but not really").decode()))
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    summary = convert([str(tmp_path / "rows.jsonl")], tmp_path / "out", progress=False)
    assert (summary.rows_read, summary.rows_rejected) == (1, 1)
    assert "cannot decode image from base64 data" in (tmp_path / "out" / "rejects.jsonl").read_text()


def test_text_with_no_utf8_form_is_a_bad_row_and_the_rejects_file_stays_readable(tmp_path):
    # JSON may spell lone surrogates, which have no UTF-8 form and so cannot be stored in Arrow.
    lines = [
        '{"id": "text", "messages": [{"role": "user", "content": "q \\ud800"}, {"role": "assistant", "content": "a"}]}',
        '{"id": "id \\ud800", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        '{"id": "path", "messages": [{"role": "user", "content": [{"type": "image", "path": "x\\udcff.png"}]},'
        ' {"role": "assistant", "content": "a"}]}',
        json.dumps(ask("fine")),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")

    summary = convert([str(tmp_path / "rows.jsonl")], tmp_path / "out", progress=False)

    # An id, like a file name, is kept with the odd code escaped: the row's content is whole.
    assert (summary.rows_written, summary.rows_rejected) == (2, 2)
    assert datasets.load_from_disk(str(tmp_path / "out"))["id"] == ["id \\ud800", "fine"]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [reject["id"] for reject in rejects] == ["text", "path"]
    assert rejects[0]["reason"] == "message 0, part 0: the text is not valid Unicode (surrogates not allowed)"
    assert rejects[1]["reason"].startswith("image 0: image file not found: 'x\udcff.png'")
