"""Convert throughput on large JPEGs with `--image-size`, and what JPEG draft mode is worth.

When the target is much smaller than the photo, vlmdata asks Pillow's JPEG decoder for a reduced scale
(`Image.draft`, see `vlmdata/media/images.py`), so the decoder skips detail the resize would discard anyway.
Three ways to shrink the same photos, timed on the same rows, round after round:

- `vlmdata convert --image-size N` (the `convert` function, in this process);
- the same convert with draft mode turned off (the benchmark replaces vlmdata's draft step by a no-op), which
  isolates what draft mode gives;
- a plain Pillow loop, `Image.open(path).convert("RGB").resize(...)` to the same size, which is what a user
  script does. It neither encodes nor writes anything, so it is a generous baseline.

Example:
    python -m bench.bench_convert --rows 120 --image-sizes 512,256 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench.common import BENCH_DIR, Figure, interleaved, median, print_figures, ratio_text, write_results
from bench.make_workload import DEFAULT_PHOTOS, JSONL_NAME, make_workload


def image_paths(workload: Path) -> list[Path]:
    """Every image reference of the workload, in reading order (a photo used twice is read twice)."""
    paths = []
    with open(workload / JSONL_NAME, encoding="utf-8") as lines:
        for line in lines:
            for message in json.loads(line)["messages"]:
                if isinstance(message["content"], list):
                    paths += [workload / part["path"] for part in message["content"] if part["type"] == "image"]
    return paths


def pillow_seconds(paths: list[Path], size: int) -> float:
    """The plain Pillow loop: open, convert to RGB, resize to fit inside size x size (letterbox content)."""
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            scale = min(size / rgb.width, size / rgb.height)
            rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                       Image.Resampling.BILINEAR)
    return time.perf_counter() - started


@contextlib.contextmanager
def draft_disabled():
    """Turns vlmdata's JPEG draft step into a no-op, so that every JPEG is decoded at full size."""
    from vlmdata.media import images

    original = getattr(images, "_draft_for", None)
    if original is None:
        raise RuntimeError("vlmdata.media.images._draft_for is gone: update bench_convert.draft_disabled")
    images._draft_for = lambda *arguments, **keywords: None
    try:
        yield
    finally:
        images._draft_for = original


def vlmdata_seconds(workload: Path, out: Path, image_size: str, draft: bool = True) -> float:
    """Seconds for one `convert` run over the workload."""
    from vlmdata.convert import convert
    from vlmdata.media import MediaOptions
    from vlmdata.media.options import Resize

    options = MediaOptions(resize=Resize.parse(image_size))
    with contextlib.nullcontext() if draft else draft_disabled():
        started = time.perf_counter()
        summary = convert([str(workload / JSONL_NAME)], out, format="jsonl", media_options=options,
                          overwrite=True, progress=False)
        elapsed = time.perf_counter() - started
    if summary.rows_rejected:
        raise RuntimeError(f"convert rejected rows: {dict(summary.rejects_by_reason)}")
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def run(rows: int, image_sizes: list[int], repeats: int, photos: int = DEFAULT_PHOTOS) -> tuple[list[Figure], dict]:
    workload = make_workload(rows, photos, quiet=True)
    paths = image_paths(workload)
    megapixels = 0.0
    for path in paths:
        with Image.open(path) as image:
            megapixels += image.width * image.height / 1e6
    figures, details = [], {"rows": rows, "images": len(paths), "megapixels": round(megapixels, 1)}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for size in image_sizes:
        with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="convert-") as scratch:
            out = Path(scratch) / "normalised"
            variants = {
                "vlmdata": lambda: vlmdata_seconds(workload, out, str(size)),
                "vlmdata_no_draft": lambda: vlmdata_seconds(workload, out, str(size), draft=False),
                "pillow": lambda: pillow_seconds(paths, size),
            }
            # Untimed: imports, and the photos into the page cache.
            vlmdata_seconds(make_workload(16, photos, quiet=True), out, str(size))
            samples = interleaved(variants, repeats)
        seconds = {name: median(values) for name, values in samples.items()}
        rate = {name: rows / value for name, value in seconds.items()}
        where = (f"{rows} rows, {len(paths)} JPEGs of 640x480 to 2048x1536 "
                 f"({megapixels / len(paths):.1f} MP on average), letterboxed to {size}x{size}, 1 process")
        draft_gain = rate["vlmdata"] / rate["vlmdata_no_draft"]
        figures += [
            Figure(f"convert.draft.{size}", f"convert --image-size {size}: JPEG draft mode on vs off",
                   f"{rate['vlmdata']:.1f} rows/s", f"draft off: {rate['vlmdata_no_draft']:.1f} rows/s",
                   draft_gain, ratio_text(draft_gain), note=where),
            Figure(f"convert.pillow.{size}", f"convert --image-size {size} vs a plain Pillow loop",
                   f"{rate['vlmdata']:.1f} rows/s", f"Image.open().convert().resize(): {rate['pillow']:.1f} rows/s",
                   rate["vlmdata"] / rate["pillow"], ratio_text(rate["vlmdata"] / rate["pillow"]),
                   note="the loop only decodes and resizes; convert also validates, encodes JPEG and writes Arrow"),
        ]
        details[str(size)] = {"median_seconds": seconds, "samples_seconds": samples, "rows_per_s": rate}
    return figures, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--image-sizes", default="512,256", help="letterbox sizes (--image-size N), comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "convert.json")
    args = parser.parse_args(argv)
    figures, details = run(args.rows, [int(size) for size in args.image_sizes.split(",")], args.repeats)
    write_results(args.json, figures, details)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
