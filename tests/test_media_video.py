import base64
import io
import json

import datasets
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from httpserver import serve
from tests.video_fixtures import build, drawn_frames, encode_video, png
from vlmdata.cli import cli
from vlmdata.errors import RowError
from vlmdata.media import MediaLoader, MediaOptions
from vlmdata.media.options import Resize
from vlmdata.media.video import Sampling, decode_video
from vlmdata.schema import normalise


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return build(tmp_path_factory.mktemp("videos"))


def loader(**options) -> MediaLoader:
    return MediaLoader(MediaOptions(**options))


def pixels(stored_frame: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(stored_frame["bytes"])).convert("RGB"))


def close_to(decoded: np.ndarray, index: int) -> bool:
    # Lossy codecs change pixels a little; a neighbouring frame moves the square by 3 pixels, far more.
    return float(np.abs(decoded.astype(int) - drawn_frames(index + 1)[index].astype(int)).mean()) < 6


# --- sampling -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_fps_sampling_takes_frames_per_second_of_the_clip(videos, name):
    video = loader().load_video({"path": name}, str(videos))
    assert len(video["frames"]) == 4  # 2 s at the default 2 frames per second
    assert video["fps"] == 10.0 and video["total_frames"] == 20
    assert video["timestamps"] == pytest.approx([0.0, 0.6, 1.3, 1.9])
    for frame, second in zip(video["frames"], video["timestamps"]):
        assert close_to(pixels(frame), round(second * 10))


def test_num_frames_spreads_frames_uniformly_including_odd_counts(videos):
    video = loader(video_frames=7).load_video({"path": "clip.mp4"}, str(videos))
    assert video["timestamps"] == pytest.approx([0.0, 0.3, 0.6, 1.0, 1.3, 1.6, 1.9])
    assert len(loader(video_frames=1).load_video({"path": "clip.mp4"}, str(videos))["frames"]) == 1


def test_frames_are_capped_by_max_video_frames_and_by_the_clip(videos):
    capped = loader(video_fps=10.0, max_video_frames=5).load_video({"path": "clip.mp4"}, str(videos))
    assert len(capped["frames"]) == 5
    every = loader(video_frames=500, max_video_frames=500).load_video({"path": "clip.mp4"}, str(videos))
    assert len(every["frames"]) == 20


def test_a_parts_own_num_frames_or_fps_wins_over_the_options(videos):
    options = loader(video_frames=3)
    assert len(options.load_video({"path": "clip.mp4", "num_frames": 5}, str(videos))["frames"]) == 5
    assert len(options.load_video({"path": "clip.mp4", "fps": 1.0}, str(videos))["frames"]) == 2
    with pytest.raises(RowError, match="num_frames must be a positive integer"):
        options.load_video({"path": "clip.mp4", "num_frames": 0}, str(videos))


def test_a_parts_sampling_keys_travel_with_its_payload_also_from_the_column():
    conversation = normalise({
        "messages": [
            {"role": "user", "content": [{"type": "video", "path": "a.mp4", "fps": 1.0},
                                         {"type": "video", "num_frames": 3}, {"type": "image", "path": "b.png"}]},
            {"role": "assistant", "content": "x"},
        ],
        "videos": ["c.mp4"],
    })
    assert conversation.media["video"] == [{"path": "a.mp4", "fps": 1.0}, {"path": "c.mp4", "num_frames": 3}]
    assert conversation.images == [{"path": "b.png"}]


def test_sampling_count():
    assert Sampling(fps=2.0).count(3.0, 30) == 6
    assert Sampling(fps=0.1).count(3.0, 30) == 1
    assert Sampling(frames=100, max_frames=64).count(3.0, 30) == 30


@pytest.mark.parametrize("container, codec", [("mp4", "libx264"), ("webm", "libvpx")])
def test_seeking_gives_the_same_frames_as_decoding_every_frame(container, codec):
    # Keyframes every 5 frames, so that seeking really skips frames.
    data = encode_video(drawn_frames(60), container, codec, fps=10, gop=5)
    sampling = Sampling(frames=9)
    seeking = decode_video(data, "clip", sampling, seek=True)
    every = decode_video(data, "clip", sampling, seek=False)
    assert seeking.timestamps == every.timestamps and len(seeking.frames) == 9
    for a, b in zip(seeking.frames, every.frames):
        np.testing.assert_array_equal(a, b)


def test_resize_applies_to_every_frame_as_to_images(videos):
    video = loader(resize=Resize(32, 32)).load_video({"path": "clip.mp4"}, str(videos))
    assert {Image.open(io.BytesIO(f["bytes"])).size for f in video["frames"]} == {(32, 32)}
    frames = loader(resize=Resize(32, 32)).load_video({"path": ["frames/000.png", "frames/001.png"]}, str(videos))
    assert {Image.open(io.BytesIO(f["bytes"])).size for f in frames["frames"]} == {(32, 32)}


# --- sources --------------------------------------------------------------------------------------------------


def test_frames_list_of_paths_is_taken_as_it_is(videos):
    names = [f"frames/{i:03d}.png" for i in range(6)]
    video = loader(video_fps=3.0).load_video({"path": names}, str(videos))
    assert video["fps"] is None and video["total_frames"] == 6
    assert video["timestamps"] == pytest.approx([i / 3 for i in range(6)])
    assert [f["path"] for f in video["frames"]] == [f"{i:03d}.png" for i in range(6)]
    np.testing.assert_array_equal(pixels(video["frames"][4]), drawn_frames(5)[4])


def test_video_by_url_base64_and_bytes(videos):
    data = (videos / "clip.mp4").read_bytes()
    with serve({"/clip.mp4": data}) as server:
        by_url = loader().load_video({"url": server.url("/clip.mp4")}, None)
    encoded = base64.b64encode(data).decode()
    raw = loader().load_video({"base64": encoded}, None)
    uri = loader().load_video({"base64": "data:video/mp4;base64," + encoded}, None)
    embedded = loader().load_video({"video": {"bytes": data, "path": "clip.mp4"}}, None)
    plain = loader().load_video({"video": data}, None)
    for video in (by_url, raw, uri, embedded, plain):
        assert video["timestamps"] == pytest.approx([0.0, 0.6, 1.3, 1.9]) and video["total_frames"] == 20


def test_video_as_an_array_or_a_list_of_images():
    frames = np.stack(drawn_frames(4))
    from_array = loader().load_video({"video": frames}, None)
    from_pil = loader().load_video({"video": [Image.fromarray(f) for f in frames]}, None)
    for video in (from_array, from_pil):
        assert video["fps"] is None and video["total_frames"] == 4
        np.testing.assert_array_equal(pixels(video["frames"][2]), frames[2])


# --- bad input ------------------------------------------------------------------------------------------------


def test_bad_videos_are_rejected_with_their_reason(videos, tmp_path):
    (tmp_path / "not_video.mp4").write_bytes(b"this is plain text, not a video" * 4)
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases = {
        "not_video.mp4": "not a video",
        "empty.mp4": "empty",
        str(videos / "truncated.mp4"): "truncated",
        str(videos / "tone_only.m4a"): "has no video stream",
    }
    for path, reason in cases.items():
        with pytest.raises(RowError, match=reason):
            loader().load_video({"path": path}, str(tmp_path))
    with pytest.raises(RowError, match="over the limit of 1 s"):
        loader(max_video_seconds=1.0).load_video({"path": "clip.mp4"}, str(videos))
    with pytest.raises(RowError, match="3072 pixels, over the limit of 1000"):
        loader(max_image_pixels=1000).load_video({"path": "clip.mp4"}, str(videos))


@pytest.mark.parametrize("container, codec", [("webm", "libvpx"), ("matroska", "libx264")])
@pytest.mark.parametrize("kept", [0.2, 0.6, 0.9])
def test_a_cut_off_stream_is_rejected_as_truncated_not_shortened(container, codec, kept):
    data = encode_video(drawn_frames(20), container, codec)
    with pytest.raises(RowError, match="truncated"):
        decode_video(data[: int(len(data) * kept)], "'cut'", Sampling(frames=5))


@pytest.mark.parametrize("seek", [True, False])
@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_an_mp4_cut_off_after_its_index_is_rejected_as_truncated(seek, kept):
    data = encode_video(drawn_frames(20), "mp4", "libx264", faststart=True)
    assert data.find(b"moov") < data.find(b"mdat")
    with pytest.raises(RowError, match="truncated"):
        decode_video(data[: int(len(data) * kept)], "'cut'", Sampling(frames=5), seek=seek)


def test_frames_of_different_sizes_are_rejected(tmp_path):
    (tmp_path / "a.png").write_bytes(png(drawn_frames(1)[0]))
    (tmp_path / "b.png").write_bytes(png(drawn_frames(1, 32, 24)[0]))
    with pytest.raises(RowError, match="different sizes"):
        loader().load_video({"path": ["a.png", "b.png"]}, str(tmp_path))
    with pytest.raises(RowError, match="has no frames"):
        loader().load_video({"video": []}, None)


# --- end to end -----------------------------------------------------------------------------------------------


def video_row(row_id: str, part: dict | None, **columns) -> dict:
    content = [part or {"type": "video"}, {"type": "text", "text": "What moves?"}]
    return {"id": row_id, "messages": [{"role": "user", "content": content},
                                       {"role": "assistant", "content": "A red square."}], **columns}


def test_convert_end_to_end_stores_videos_and_rejects_bad_ones(videos, tmp_path):
    (tmp_path / "not_video.mp4").write_bytes(b"plain text" * 20)
    (tmp_path / "long.mp4").write_bytes(encode_video(drawn_frames(40), "mp4", "libx264", fps=10))
    (tmp_path / "a.png").write_bytes(png(drawn_frames(1)[0]))
    (tmp_path / "b.png").write_bytes(png(drawn_frames(1, 32, 24)[0]))
    for name in ("clip.mp4", "clip.webm", "truncated.mp4", "tone_only.m4a"):
        (tmp_path / name).write_bytes((videos / name).read_bytes())
    (tmp_path / "big.mp4").write_bytes(encode_video(drawn_frames(20, 320, 240), "mp4", "libx264"))
    huge = encode_video(drawn_frames(20, 160, 120), "mp4", "libx264")
    with serve({"/clip.mp4": (videos / "clip.mp4").read_bytes(), "/huge.mp4": huge}) as server:
        rows = [
            video_row("two", None, videos=["clip.mp4", "clip.webm"]) | {"messages": [
                {"role": "user", "content": [{"type": "video"}, {"type": "video", "num_frames": 3}, "?"]},
                {"role": "assistant", "content": "!"}]},
            video_row("url", {"type": "video", "url": server.url("/clip.mp4")}),
            video_row("frames", {"type": "video", "path": [f"{videos}/frames/000.png", f"{videos}/frames/001.png"]}),
            video_row("not_video", {"type": "video", "path": "not_video.mp4"}),
            video_row("truncated", {"type": "video", "path": "truncated.mp4"}),
            video_row("audio_only", {"type": "video", "path": "tone_only.m4a"}),
            video_row("zero", {"type": "video", "video": []}),
            video_row("sizes", {"type": "video", "path": ["a.png", "b.png"]}),
            video_row("long", {"type": "video", "path": "long.mp4"}),
            video_row("pixels", {"type": "video", "path": "big.mp4"}),
            video_row("download", {"type": "video", "url": server.url("/huge.mp4")}),
            video_row("count", None, videos=[]),
        ]
        source = tmp_path / "rows.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        result = CliRunner().invoke(cli, [
            "convert", str(source), "-o", str(tmp_path / "out"), "--quiet", "--video-fps", "1",
            "--max-video-seconds", "3", "--max-image-pixels", "20000", "--max-download-bytes", str(len(huge) - 1),
        ])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    rejects = {reject["id"]: reject["reason"] for reject in map(json.loads, lines)}
    assert set(rejects) == {"not_video", "truncated", "audio_only", "zero", "sizes", "long", "pixels", "download", "count"}
    assert "not a video" in rejects["not_video"]
    assert "truncated" in rejects["truncated"]
    assert "has no video stream" in rejects["audio_only"]
    assert "has no frames" in rejects["zero"]
    assert "different sizes" in rejects["sizes"]
    assert "over the limit of 3 s" in rejects["long"]
    assert "76800 pixels, over the limit of 20000" in rejects["pixels"]
    assert "over the limit" in rejects["download"] and "bytes" in rejects["download"]
    assert "video parts have no video" in rejects["count"]

    summary = json.loads((tmp_path / "out" / "vlmdata.json").read_text())["summary"]
    assert (summary["rows_read"], summary["rows_written"], summary["rows_rejected"]) == (12, 3, 9)
    assert summary["videos"] == 4 and sum(summary["rejects_by_reason"].values()) == 9
    dataset = datasets.load_from_disk(str(tmp_path / "out"))
    by_id = {row["id"]: row for row in dataset}
    assert set(by_id) == {"two", "url", "frames"}
    first, second = by_id["two"]["videos"]
    assert len(first["frames"]) == 2 and first["timestamps"] == pytest.approx([0.0, 1.9])
    assert len(second["frames"]) == 3 and second["total_frames"] == 20
    assert isinstance(first["frames"][0], Image.Image)
    assert by_id["frames"]["videos"][0]["fps"] is None
    assert by_id["frames"]["videos"][0]["timestamps"] == [0.0, 1.0]


def test_a_url_over_the_download_cap_is_rejected(videos):
    data = (videos / "clip.mp4").read_bytes()
    with serve({"/clip.mp4": data}) as server:
        with pytest.raises(RowError, match="larger|bytes"):
            loader(max_download_bytes=100).load_video({"url": server.url("/clip.mp4")}, None)
