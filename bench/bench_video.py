"""Videos: convert's decoding with seeking against decoding every frame, and shard bytes per video against
float32 `pixel_values_videos`.

The clips are H.264 made here with PyAV (moving shapes over a gradient, a keyframe every second, as camera and
web encoders write them). Convert samples them at its default 2 frames per second; seeking jumps to the
keyframe before each sampled frame, while the baseline decodes every frame and keeps the sampled ones. Both
produce the same frames. Convert's figure is end to end: decoding, JPEG encoding and the Arrow write.

For the shards, the same sampled videos are tokenized for Qwen2-VL (its processor at real size) and Qwen2.5-VL
(the tiny fixture's processor, the same video processor class); the baseline is the float32
`pixel_values_videos` the processor returns for the same rows, which is what a cache of the processor's
output would hold. Every row is rebuilt from the shards and compared with the processor's output bit for bit.

Example:
    python -m bench.bench_video --rows 8 --seconds 10 --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.build_processors import build_processors
from bench.common import BENCH_DIR, FIXTURE_MODELS, Figure, folder_bytes, interleaved, median, print_figures, ratio_text, write_results

CLIP_FPS = 30
CLIP_SIZE = (640, 360)
# --video-frames for the sparse figure: frames further apart than a keyframe interval.
SPARSE_FRAMES = 4
STORAGE_GOAL = 0.25
# Qwen's temporal patches pair two frames; the goal for it counts one stored frame per pair.
QWEN_PAIR_GOAL = 0.125


def make_clip(path: Path, seconds: int, seed: int) -> Path:
    """An H.264 clip of moving shapes, `seconds` long at CLIP_FPS, one keyframe a second."""
    import av

    width, height = CLIP_SIZE
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([xs * 255 // width, ys * 255 // height, np.full_like(xs, 96)], axis=-1).astype(np.uint8)
    starts = rng.integers(0, min(width, height) // 2, size=(3, 2))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(CLIP_FPS), "preset": "veryfast"}
        for index in range(seconds * CLIP_FPS):
            frame = background.copy()
            for shape, (x, y) in enumerate(starts):
                left, top = (x + 4 * index * (shape + 1)) % (width - 40), (y + 3 * index) % (height - 40)
                frame[top:top + 40, left:left + 40] = (255, 60 * shape, 255 - 80 * shape)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_inputs(folder: Path, rows: int, seconds: int) -> Path:
    """A JSONL file of `rows` rows, each asking about a clip of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "videos.jsonl", "w", encoding="utf-8") as lines:
        for row in range(rows):
            clip = make_clip(folder / f"clip-{row}.mp4", seconds, seed=row)
            lines.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "video", "path": clip.name}, {"type": "text", "text": "What moves?"}]},
                {"role": "assistant", "content": "Three squares."}]}) + "\n")
    return folder / "videos.jsonl"


def decode_seconds(clips: list[bytes], seek: bool, frames: int | None = None) -> tuple[float, int]:
    """Seconds to decode the sampled frames of every clip (`frames` per clip, else 2 per second), and the
    frames decoded."""
    from vlmdata.media.video import Sampling, decode_video

    sampling = Sampling(frames=frames)
    started = time.perf_counter()
    frames = sum(len(decode_video(data, "'clip'", sampling, seek=seek).frames) for data in clips)
    return time.perf_counter() - started, frames


def convert_seconds(source: Path, out: Path, seek: bool) -> float:
    """Seconds of one `convert` run over the clips."""
    from vlmdata import convert as convert_module
    from vlmdata.media import loader, video

    original = loader.decode_video
    loader.decode_video = functools.partial(video.decode_video, seek=seek)
    try:
        started = time.perf_counter()
        summary = convert_module.convert([str(source)], out, format="jsonl", overwrite=True, progress=False)
        elapsed = time.perf_counter() - started
    finally:
        loader.decode_video = original
    if summary.rows_rejected:
        raise RuntimeError(f"convert rejected rows: {dict(summary.rejects_by_reason)}")
    return elapsed


def stored_frames(folder: Path) -> int:
    """The frames a normalised dataset stores, from its list offsets."""
    from vlmdata.inspect.columns import batches
    from vlmdata.inspect.videos import video_summaries

    files = sorted(folder.glob("*.arrow"))
    return sum(count for batch in batches(files, ["videos"]) for count, _ in video_summaries(batch.column("videos")))


def decoding_figures(source: Path, scratch: Path, repeats: int) -> tuple[list[Figure], dict]:
    clips = [path.read_bytes() for path in sorted(source.parent.glob("clip-*.mp4"))]
    out = scratch / "normalised"
    convert_seconds(source, out, seek=True)  # untimed: imports, and the clips into the page cache
    written, decoded = stored_frames(out), decode_seconds(clips, True)[1]
    sparse = decode_seconds(clips, True, SPARSE_FRAMES)[1]
    variants = {
        "decode_seek": lambda: decode_seconds(clips, True)[0],
        "decode_all": lambda: decode_seconds(clips, False)[0],
        "sparse_seek": lambda: decode_seconds(clips, True, SPARSE_FRAMES)[0],
        "sparse_all": lambda: decode_seconds(clips, False, SPARSE_FRAMES)[0],
        "convert_seek": lambda: convert_seconds(source, out, True),
        "convert_all": lambda: convert_seconds(source, out, False),
    }
    samples = interleaved(variants, repeats)
    seconds = {name: median(values) for name, values in samples.items()}
    counts = {"convert": written, "decode": decoded, "sparse": sparse}
    rate = {name: counts[name.split("_")[0]] / value for name, value in seconds.items()}
    stored = folder_bytes(out) / written
    where = f"{len(clips)} H.264 clips of {CLIP_SIZE[0]}x{CLIP_SIZE[1]} at {CLIP_FPS} fps, sampled at 2 fps ({written} frames), 1 process"
    figures = [
        Figure("video.decode.seek", "video decoding: seeking to the sampled frames vs decoding every frame",
               f"{rate['decode_seek']:.1f} frames/s", f"decode every frame: {rate['decode_all']:.1f} frames/s",
               rate["decode_seek"] / rate["decode_all"], ratio_text(rate["decode_seek"] / rate["decode_all"]),
               note=where + "; frames per second of sampled frames"),
        Figure("video.decode.sparse", f"video decoding, {SPARSE_FRAMES} frames per clip: seeking vs decoding every frame",
               f"{rate['sparse_seek']:.1f} frames/s", f"decode every frame: {rate['sparse_all']:.1f} frames/s",
               rate["sparse_seek"] / rate["sparse_all"], ratio_text(rate["sparse_seek"] / rate["sparse_all"]),
               note=where.replace("sampled at 2 fps", f"--video-frames {SPARSE_FRAMES}").split(" (")[0]
               + f", {sparse} frames"),
        Figure("video.convert.seek", "convert on videos (decode, JPEG, Arrow): seeking vs decoding every frame",
               f"{rate['convert_seek']:.1f} frames/s", f"decode every frame: {rate['convert_all']:.1f} frames/s",
               rate["convert_seek"] / rate["convert_all"], ratio_text(rate["convert_seek"] / rate["convert_all"]),
               note=where + f"; frames stored as JPEG quality 95, {stored / 1024:.0f} KiB per frame"),
    ]
    return figures, {"median_seconds": seconds, "samples_seconds": samples, "frames_per_s": rate,
                     "stored_bytes_per_frame": stored, "frames": written}


def storage_figure(family: str, processor_dir: Path, normalised: Path, scratch: Path) -> tuple[Figure, dict]:
    import datasets
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    from bench.bench_storage import mismatches
    from vlmdata.shards import load_shards, model_inputs, read_layout
    from vlmdata.tokenize import tokenize

    shards = scratch / f"shards-{family}"
    summary = tokenize(normalised, shards, model=str(processor_dir), overwrite=True, progress=False)
    if summary.rows_rejected:
        raise RuntimeError(f"tokenize rejected rows: {dict(summary.rejects_by_reason)}")
    processor = AutoProcessor.from_pretrained(shards / "processor")
    layout, rows = read_layout(shards), load_shards(shards)
    float32_bytes, problems, videos = 0, [], 0
    for index, row in enumerate(datasets.load_from_disk(str(normalised))):
        video = row["videos"][0]
        frames = np.stack([np.asarray(frame.convert("RGB")) for frame in video["frames"]])
        metadata = VideoMetadata(total_num_frames=video["total_frames"], fps=video["fps"],
                                 frames_indices=[round(t * video["fps"]) for t in video["timestamps"]],
                                 width=frames.shape[2], height=frames.shape[1])
        messages = [{"role": "user", "content": [{"type": "video", "video": frames},
                                                 {"type": "text", "text": "What moves?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Three squares."}]}]
        expected = processor.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"videos_kwargs": {"do_sample_frames": False, "video_metadata": [metadata]}})
        float32_bytes += expected["pixel_values_videos"].numel() * 4
        videos += 1
        problems += [f"row {index}: {problem}" for problem in mismatches(model_inputs(rows[index], layout), expected)]
    shard_bytes = folder_bytes(shards)
    ratio = shard_bytes / float32_bytes
    exact = not problems
    checked = f"all {videos} rows rebuilt bit-exactly" if exact else "NOT exact: " + "; ".join(problems[:3])
    figure = Figure(
        f"video.storage.{family}", f"shard bytes per video, {family}", f"{shard_bytes / videos / 2**20:.2f} MiB/video",
        f"float32 pixel_values_videos: {float32_bytes / videos / 2**20:.2f} MiB/video", ratio, ratio_text(ratio, 3),
        f"≤ {STORAGE_GOAL:.2f}x (one frame per temporal pair ≤ {QWEN_PAIR_GOAL:.3f}x), exact",
        exact and ratio <= STORAGE_GOAL,
        f"{videos} videos; {checked}" + ("" if ratio <= QWEN_PAIR_GOAL else "; the one-frame-per-pair goal not met"),
    )
    return figure, {"videos": videos, "shard_bytes": shard_bytes, "float32_pixel_bytes": float32_bytes,
                    "exact": exact, "problems": problems}


def run(rows: int, seconds: int, repeats: int, families: list[str]) -> tuple[list[Figure], dict]:
    from vlmdata.convert import convert

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    figures, details = [], {"rows": rows, "seconds": seconds}
    with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="video-") as scratch:
        scratch = Path(scratch)
        source = make_inputs(scratch / "clips", rows, seconds)
        decoding, details["decoding"] = decoding_figures(source, scratch, repeats)
        figures += decoding
        normalised = scratch / "normalised-for-tokenize"
        convert([str(source)], normalised, format="jsonl", overwrite=True, progress=False)
        processors = {"qwen2_vl": build_processors(("qwen2_vl",))["qwen2_vl"], "qwen2_5_vl": FIXTURE_MODELS / "qwen2_5_vl"}
        for family in families:
            figure, details[family] = storage_figure(family, processors[family], normalised, scratch)
            figures.append(figure)
        shutil.rmtree(scratch / "clips", ignore_errors=True)
    return figures, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="videos, one per row")
    parser.add_argument("--seconds", type=int, default=10, help="length of each clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default="qwen2_vl,qwen2_5_vl")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "video.json")
    args = parser.parse_args(argv)
    figures, details = run(args.rows, args.seconds, args.repeats, [name for name in args.families.split(",") if name])
    write_results(args.json, figures, details)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
