"""Real video files for tests, encoded with PyAV by fixtures/make_videos.py into a test's own folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_make_videos():
    # fixtures/ is a folder of scripts, not a package: load the builder by its path.
    spec = importlib.util.spec_from_file_location("make_videos", REPO_ROOT / "fixtures" / "make_videos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_videos = _load_make_videos()
draw_frame = make_videos.draw_frame
drawn_frames = make_videos.drawn_frames
encode_video = make_videos.encode_video
encode_tone = make_videos.encode_tone
png = make_videos.png
build = make_videos.build
