"""inspect on videos: frame counts and durations in the summary, each video a strip of its frames with their
timestamps on the page as Chromium renders it."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import pytest
from PIL import Image, ImageDraw

from tests.browser import chromium, parse, render
from vlmdata.inspect import inspect
from vlmdata.inspect.report import summary_rows
from vlmdata.schema import NORMALISED_FEATURES

ARTIFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"


def frame(step: int) -> dict:
    """A 64x48 PNG of a square that moves with `step`, so every frame differs."""
    image = Image.new("RGB", (64, 48), (20, 40, 60))
    ImageDraw.Draw(image).rectangle([4 * step, 10, 4 * step + 12, 22], fill=(250, 200, 0))
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return {"bytes": encoded.getvalue(), "path": None}


def video(frames: int, fps: float | None, total: int) -> dict:
    rate = fps or 2.0
    return {"frames": [frame(i) for i in range(frames)], "timestamps": [i / rate * (total / frames if fps else 1) for i in range(frames)],
            "fps": fps, "total_frames": total}


def row(number: int, videos: list[dict]) -> dict:
    parts = [{"type": "video", "text": None} for _ in videos] + [{"type": "text", "text": "What moves?"}]
    return {
        "messages": [{"role": "user", "content": parts},
                     {"role": "assistant", "content": [{"type": "text", "text": "A square."}]}],
        "images": [], "videos": videos, "audios": [], "id": f"row-{number}", "source": "videos.jsonl",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # A 4 s clip at 10 fps sampled at 2 fps (8 frames), a 2 s clip sampled to 12 frames, a 3-frame frames list.
    rows = [row(0, [video(8, 10.0, 40)]), row(1, [video(12, 10.0, 20), video(3, None, 3)]), row(2, [])]
    folder = tmp_path_factory.mktemp("videos") / "data"
    datasets.Dataset.from_list(rows, features=NORMALISED_FEATURES).save_to_disk(str(folder))
    return folder


def test_the_summary_counts_videos_frames_and_seconds(data):
    statistics = inspect(data).statistics
    assert statistics.media.per_row["video"] == {1: 1, 2: 1, 0: 1}
    assert statistics.media.frames_per_video == {8: 1, 12: 1, 3: 1}
    figures = dict(summary_rows(statistics))
    assert figures["videos"] == "3"
    assert figures["frames per video"] == "min 3 · median 8 · max 12"
    # 40/10 + 20/10 seconds of clips, and the frames list's last frame at 1.0 s.
    assert figures["video seconds"] == "total 7.0 · median 2.0 · max 4.0"


def test_the_page_shows_each_video_as_a_strip_of_frames_with_their_timestamps(data, tmp_path):
    chromium()
    page = tmp_path / "page.html"
    inspect(data, html=page, ids=["row-1", "row-0"])
    dom = render(page, ARTIFACTS / "inspect-videos.png")
    cards = {card.attrs["data-id"]: card for card in parse(dom).find_all("article", "card")}

    strips = cards["row-1"].find_all("div", "video")
    assert [strip.attrs["data-frames"] for strip in strips] == ["12", "3"]
    # Twelve frames are shown as every second one, each captioned with its time in the source.
    first = strips[0]
    assert [caption.text() for caption in first.find_all("figcaption")] == [
        f"{t:.2f} s" for t in [0.0, 1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3]]
    assert all(img.attrs["src"].startswith("data:image/") for img in first.find_all("img"))
    assert "video 1 · 12 frames, 6 shown · 2.0 s" in first.text()
    assert "video 2 · 3 frames · 1.0 s" in strips[1].text()
    assert len(cards["row-0"].find_all("div", "video")) == 1
    details = dict(zip((dt.text() for dt in cards["row-1"].find_all("dt")), (dd.text() for dd in cards["row-1"].find_all("dd"))))
    assert details["videos"] == "2"
