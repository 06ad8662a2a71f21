"""Real video files for tests, encoded with PyAV by fixtures/make_videos.py into a test's own folder."""

from __future__ import annotations

from tests.fixture_data import load_fixture_script

make_videos = load_fixture_script("make_videos")
draw_frame = make_videos.draw_frame
drawn_frames = make_videos.drawn_frames
encode_video = make_videos.encode_video
encode_tone = make_videos.encode_tone
png = make_videos.png
build = make_videos.build
