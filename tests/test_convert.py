"""The convert stage end to end: real files and a real HTTP server in, a folder `datasets` loads out."""

import base64
import io
import json

import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from httpserver import Reply, serve
from vlmdata.convert import convert
from vlmdata.errors import FatalError
from vlmdata.media import MediaOptions, Resize


def draw(path, size, colour, fmt="PNG"):
    image = Image.new("RGB", size, colour)
    image.paste((255, 255, 255), (0, 0, size[0] // 3, size[1] // 3))  # a corner block, so pixels are not uniform
    image.save(path, fmt, quality=95)
    return image


def encoded(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pixels(image):
    return np.asarray(image.convert("RGB"))


@pytest.fixture
def media(tmp_path):
    """A folder of real media files next to where the JSONL goes."""
    folder = tmp_path / "media"
    folder.mkdir()
    images = {
        "red": draw(folder / "red.png", (40, 30), (200, 0, 0)),
        "green": draw(folder / "green.jpg", (30, 40), (0, 180, 0), "JPEG"),
        "blue": draw(folder / "blue.png", (24, 24), (0, 0, 220)),
    }
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 220 * t)], axis=1).astype(np.float32)
    soundfile.write(folder / "tone.wav", stereo * 0.5, 22050)
    return folder, images


def test_every_loading_key_is_resolved_and_the_output_loads_back(tmp_path, media):
    folder, images = media
    served = draw(tmp_path / "served.png", (16, 20), (120, 30, 200))
    with serve({"/served.png": encoded(served)}) as server:
        rows = [
            {
                "id": "keys",
                "messages": [
                    {"role": "system", "content": "You compare pictures."},
                    {"role": "user", "content": [
                        {"type": "image", "path": "media/red.png"},
                        {"type": "image", "url": server.url("/served.png")},
                        {"type": "image", "base64": base64.b64encode((folder / "blue.png").read_bytes()).decode()},
                        {"type": "text", "text": "Which is darkest?"},
                    ]},
                    {"role": "assistant", "content": "The blue one."},
                ],
            },
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Green."}]},
                ],
                "images": ["media/green.jpg"],
            },
            {
                "messages": [
                    {"role": "user", "content": [{"type": "audio", "path": "media/tone.wav"}, "What note?"]},
                    {"role": "assistant", "content": "A4."},
                ],
            },
        ]
        source = write_jsonl(tmp_path / "train.jsonl", rows)
        summary = convert([str(source)], tmp_path / "out", progress=False)

    assert (summary.rows_read, summary.rows_written, summary.rows_rejected) == (3, 3, 0)
    assert (summary.media["images"], summary.media["audios"]) == (4, 1)
    dataset = datasets.load_from_disk(str(tmp_path / "out"))
    assert dataset["id"] == ["keys", "train.jsonl:2", "train.jsonl:3"]
    assert set(dataset["source"]) == {str(source)}
    assert dataset[0]["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "You compare pictures."}]},
        {"role": "user", "content": [
            {"type": "image", "text": None}, {"type": "image", "text": None}, {"type": "image", "text": None},
            {"type": "text", "text": "Which is darkest?"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "The blue one."}]},
    ]
    for loaded, original in zip(dataset[0]["images"], [images["red"], served, images["blue"]]):
        assert np.array_equal(pixels(loaded), pixels(original))
    green = Image.open(folder / "green.jpg")
    assert np.array_equal(pixels(dataset[1]["images"][0]), pixels(green))
    audio = dataset[2]["audios"][0]
    assert audio["sampling_rate"] == 16000
    assert abs(len(audio["array"]) - 16000) <= 2
    assert dataset[2]["messages"][0]["content"] == [{"type": "audio", "text": None}, {"type": "text", "text": "What note?"}]

    # Images that need no change keep their original bytes.
    raw = datasets.load_from_disk(str(tmp_path / "out")).cast_column("images", datasets.List(datasets.Image(decode=False)))
    assert raw[1]["images"][0]["bytes"] == (folder / "green.jpg").read_bytes()
    metadata = json.loads((tmp_path / "out" / "vlmdata.json").read_text())
    assert metadata["stage"] == "convert" and metadata["summary"]["rows_written"] == 3
    assert (tmp_path / "out" / "rejects.jsonl").read_text() == ""


def test_bad_rows_go_to_the_rejects_file_and_every_row_is_accounted_for(tmp_path, media):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    source = tmp_path / "mixed.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps(good),
                "{not json",
                json.dumps({"id": "missing", "messages": [
                    {"role": "user", "content": [{"type": "image", "path": "media/nope.png"}, "?"]},
                    {"role": "assistant", "content": "!"}]}),
                json.dumps({"id": "narrator", "messages": [{"role": "narrator", "content": "x"}]}),
                json.dumps({"id": "count", "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
                    {"role": "assistant", "content": "x"}], "images": ["media/red.png"]}),
                json.dumps(good),
            ]
        )
        + "\n"
    )
    summary = convert([str(source)], tmp_path / "out", progress=False)

    assert (summary.rows_read, summary.rows_written, summary.rows_rejected) == (6, 2, 4)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    by_id = {reject["id"]: reject for reject in rejects}
    assert by_id["mixed.jsonl:2"]["stage"] == "read" and "JSON" in by_id["mixed.jsonl:2"]["reason"]
    assert by_id["missing"]["stage"] == "image" and "nope.png" in by_id["missing"]["reason"]
    assert by_id["narrator"]["stage"] == "normalise" and "narrator" in by_id["narrator"]["reason"]
    assert "2 image parts" in by_id["count"]["reason"] and "has 1" in by_id["count"]["reason"]
    assert all(reject["source"] == str(source) for reject in rejects)
    assert sum(summary.rejects_by_reason.values()) == 4
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 2


def test_strict_stops_at_the_first_bad_row_and_leaves_no_output(tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"id": "bad", "messages": [{"role": "user", "content": "no answer"}]},
    ])
    with pytest.raises(FatalError, match="row bad of .*s.jsonl was rejected \\(normalise\\): .*no assistant"):
        convert([str(source)], tmp_path / "out", strict=True, progress=False)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.partial").exists()


def test_image_size_applies_to_inline_and_column_images(tmp_path, media):
    source = write_jsonl(tmp_path / "r.jsonl", [{
        "messages": [
            {"role": "user", "content": [{"type": "image", "path": "media/red.png"}, {"type": "image"}, "?"]},
            {"role": "assistant", "content": "!"},
        ],
        "images": ["media/green.jpg"],
    }])
    for size, mode, expected in [("32", None, [(32, 32), (32, 32)]), ("20x10", None, [(20, 10), (20, 10)]),
                                 ("20", "fit", [(20, 15), (15, 20)])]:
        out = tmp_path / f"out-{size}-{mode}"
        convert([str(source)], out, media_options=MediaOptions(resize=Resize.parse(size, mode)), progress=False)
        assert [image.size for image in datasets.load_from_disk(str(out))[0]["images"]] == expected


def test_output_is_identical_whatever_num_proc(tmp_path, media):
    rows = []
    for i in range(40):
        name = ["media/red.png", "media/green.jpg", "media/blue.png"][i % 3]
        rows.append({"id": f"r{i}", "messages": [
            {"role": "user", "content": [{"type": "image", "path": name}, f"question {i}"]},
            {"role": "assistant", "content": f"answer {i}"}]})
    rows[7]["messages"][0]["content"][0]["path"] = "media/absent.png"
    source = write_jsonl(tmp_path / "many.jsonl", rows)
    options = MediaOptions(resize=Resize.parse("16"))
    convert([str(source)], tmp_path / "one", media_options=options, progress=False)
    convert([str(source)], tmp_path / "two", media_options=options, num_proc=2, progress=False)

    shards = sorted(p.name for p in (tmp_path / "one").glob("*.arrow"))
    assert shards == sorted(p.name for p in (tmp_path / "two").glob("*.arrow"))
    for name in shards + ["rejects.jsonl"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert len(datasets.load_from_disk(str(tmp_path / "two"))) == 39


def test_a_url_shared_by_many_rows_is_downloaded_once(tmp_path):
    png = encoded(Image.new("RGB", (8, 8), "orange"))
    with serve({"/shared.png": png, "/flaky.png": [Reply(status=503), png]}) as server:
        rows = [{"messages": [
            {"role": "user", "content": [{"type": "image", "url": server.url(path)}, "?"]},
            {"role": "assistant", "content": "!"}]} for path in ["/shared.png"] * 30 + ["/flaky.png"]]
        source = write_jsonl(tmp_path / "u.jsonl", rows)
        summary = convert([str(source)], tmp_path / "one", progress=False, media_options=MediaOptions(retries=2))
        assert summary.rows_written == 31
        assert server.hits["/shared.png"] == 1
        assert server.hits["/flaky.png"] == 2
        # Workers share a disk cache; two may still fetch the same URL at the same moment, never more.
        convert([str(source)], tmp_path / "two", num_proc=2, progress=False, media_options=MediaOptions(retries=2))
        assert server.hits["/shared.png"] <= 1 + 2


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    convert([str(source)], tmp_path / "out", progress=False)
    with pytest.raises(FatalError, match="already exists"):
        convert([str(source)], tmp_path / "out", progress=False)
    assert convert([str(source)], tmp_path / "out", overwrite=True, progress=False).rows_written == 1


def test_images_are_embedded_even_when_a_file_of_their_name_is_in_the_working_folder(tmp_path, media, monkeypatch):
    folder, _ = media
    source = write_jsonl(tmp_path / "r.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "image", "path": "media/red.png"}, "?"]},
        {"role": "assistant", "content": "!"}]}])
    monkeypatch.chdir(folder)  # red.png, the stored image name, now resolves to the original file
    convert([str(source)], tmp_path / "out", media_options=MediaOptions(resize=Resize.parse("8")), progress=False)
    (folder / "red.png").unlink()

    stored = datasets.load_from_disk(str(tmp_path / "out")).cast_column(
        "images", datasets.List(datasets.Image(decode=False)))[0]["images"][0]
    assert stored["path"] == "red.png" and stored["bytes"] is not None
    assert Image.open(io.BytesIO(stored["bytes"])).size == (8, 8)
