"""Make a synthetic but realistic workload for `vlmdata convert`: JSONL conversations plus JPEG photos.

Each conversation has 1 to 4 photos and one to three user/assistant exchanges of realistic length (short
questions, answers of a few sentences to a few paragraphs, sometimes a system prompt). The photos are JPEGs
between 640x480 and 2048x1536 at camera quality, drawn from gradients, shapes and sensor-like noise, so that
they neither compress nor decode trivially (a flat test card decodes several times faster than a photo).

Photos come from a pool (`--photos`, 500 by default) that the conversations draw from. Every reference is
decoded again by the stages (nothing caches decoded images), so a pool costs the same CPU as unique files
while keeping the disk footprint of a 20000-row workload small. `--photos` as large as the number of image
references makes every photo unique.

The workload is cached under `out/bench/workloads/<parameters>/`; asking for the same parameters again
returns the folder at once. VLMDATA_BENCH_PHOTOS changes the default pool size of every benchmark script (the
smoke tests draw 3 photos instead of 500).

Example:
    python -m bench.make_workload --rows 2000            # prints the folder holding conversations.jsonl
    python -m bench.make_workload --rows 20000 --photos 2000
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bench.common import BENCH_DIR

# Bumped whenever the generator changes, so that stale cached workloads are not reused.
GENERATOR_VERSION = 1
WORKLOADS_DIR = BENCH_DIR / "workloads"
JSONL_NAME = "conversations.jsonl"
COMPLETE_MARKER = ".complete"
# Common camera and screen sizes from 640x480 to 2048x1536, landscape and portrait.
PHOTO_SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 720), (1280, 960), (1600, 1200), (1920, 1080),
               (2048, 1536), (480, 640), (768, 1024), (1536, 2048)]
# Typical of phone and camera JPEGs.
JPEG_QUALITY = 90
DEFAULT_PHOTOS = int(os.environ.get("VLMDATA_BENCH_PHOTOS") or 500)

WORDS = (
    "the a an of to in and is are was were on for with at by from this that these those it its there here image "
    "photo picture scene left right top bottom corner middle background foreground colour color red green blue "
    "yellow orange purple grey white black dark light bright shadow shape circle square triangle line curve edge "
    "object person people car tree building sky water road table chair window door sign text number chart graph "
    "shows appears looks seems contains includes has near behind above below between next around small large tall "
    "short wide narrow round flat smooth rough old new first second third several many few some each every both "
    "because while although however which where when what how why would could should might can will may about "
    "roughly almost exactly clearly probably likely possibly also only still just very quite rather more most "
    "less least than then so but or not no yes"
).split()
QUESTIONS = [
    "What is shown in this picture?", "Describe the image in detail.", "How many objects can you count here?",
    "What colours dominate the scene, and where?", "Compare the two images: what changed between them?",
    "Is there any text visible? If so, what does it say?", "What might have happened just before this photo?",
    "Which shape is closest to the top left corner?", "Write a short caption for each photo.",
    "Explain the chart and the trend it shows.",
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant that describes images accurately and concisely.",
    "You are an expert visual analyst. Answer with precise, well organised observations.",
]


def workload_dir(rows: int, photos: int, seed: int) -> Path:
    """The cache folder of a workload with these parameters."""
    return WORKLOADS_DIR / f"rows{rows}-photos{photos}-seed{seed}-v{GENERATOR_VERSION}"


def make_workload(rows: int = 2000, photos: int = DEFAULT_PHOTOS, seed: int = 0, quiet: bool = False) -> Path:
    """Builds (or finds in the cache) a workload and returns its folder.

    Args:
        rows: number of conversations.
        photos: size of the photo pool the conversations draw from.
        seed: random seed; the same parameters always give the same files.
        quiet: print nothing.

    Returns:
        The folder holding `conversations.jsonl` and `photos/*.jpg` (paths in the JSONL are relative to it).
    """
    folder = workload_dir(rows, photos, seed)
    if (folder / COMPLETE_MARKER).exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # Photos depend only on the pool size and seed: a 20000-row workload shares the pool of a 2000-row one.
    (partial / "photos").symlink_to(photo_pool(photos, seed, quiet).resolve(), target_is_directory=True)
    rng = random.Random(seed)
    with open(partial / JSONL_NAME, "w", encoding="utf-8") as out:
        for index in range(rows):
            out.write(json.dumps(conversation(rng, index, photos)) + "\n")
    partial.rename(folder)
    (folder / COMPLETE_MARKER).touch()
    if not quiet:
        print(f"workload: {rows} rows, {photos} photos in {folder}", file=sys.stderr)
    return folder


def photo_pool(photos: int, seed: int, quiet: bool = False) -> Path:
    """The folder of `photos` JPEG files for `seed`, generated once."""
    folder = WORKLOADS_DIR / f"photos{photos}-seed{seed}-v{GENERATOR_VERSION}"
    if (folder / COMPLETE_MARKER).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    # An interrupted build resumes where it stopped: only missing photos are drawn.
    missing = [(folder, seed, index) for index in range(photos) if not (folder / f"{index:06d}.jpg").exists()]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        for done, _ in enumerate(pool.imap_unordered(_write_photo, missing, chunksize=4), start=1):
            if not quiet and done % 100 == 0:
                print(f"  photos: {done}/{len(missing)}", file=sys.stderr)
    (folder / COMPLETE_MARKER).touch()
    return folder


def _write_photo(task: tuple[Path, int, int]) -> None:
    folder, seed, index = task
    path = folder / f"{index:06d}.jpg"
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(encode_jpeg(draw_photo(np.random.default_rng([seed, index]))))
    temporary.rename(path)


def draw_photo(rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image: a lit gradient, textured surfaces, overlapping shapes, soft focus and grain."""
    width, height = PHOTO_SIZES[rng.integers(len(PHOTO_SIZES))]
    # Background: a linear gradient between two colours, darker towards the corners as a lens makes it.
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    angle = rng.uniform(0, np.pi)
    t = (xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))) + np.float32(0.5)
    start, end = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    pixels = start + t[..., None] * (end - start)
    pixels *= (1 - 0.7 * (xs**2 + ys**2))[..., None]
    # Texture at several scales (foliage, fabric, gravel): what gives real photos their many JPEG coefficients.
    # Mostly brightness, a little colour, as in real scenes.
    for cell, amplitude in ((48, 18), (12, 10), (3, 6)):
        rows, columns = max(2, height // cell), max(2, width // cell)
        small = rng.standard_normal((rows, columns, 1), dtype=np.float32) + 0.3 * rng.standard_normal(
            (rows, columns, 3), dtype=np.float32)
        layer = Image.fromarray(np.clip(small * 40 + 128, 0, 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC)
        pixels += (np.asarray(layer, dtype=np.float32) - 128) * np.float32(amplitude / 40)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(12, 30)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(-width // 8, width)), int(rng.integers(-height // 8, height))
        x1 = x0 + int(rng.integers(width // 20, width // 3))
        y1 = y0 + int(rng.integers(height // 20, height // 3))
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            points = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(rng.integers(3, 7))]
            draw.polygon(points, fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 12)))
    # Real lenses are never perfectly sharp; the grain that follows is what real sensors add.
    image = image.filter(ImageFilter.BoxBlur(1))
    grain = rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(2, 5))
    pixels = np.asarray(image, dtype=np.float32) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def sentence(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(2, 2048)))
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", ";"])


def answer(rng: random.Random) -> str:
    """A reply of one to four paragraphs, 40 to 250 words in all."""
    paragraphs = []
    for _ in range(rng.randint(1, 4)):
        paragraphs.append(" ".join(sentence(rng, 6, 20) for _ in range(rng.randint(2, 5))))
    return "\n\n".join(paragraphs)


def conversation(rng: random.Random, index: int, photos: int) -> dict:
    """One JSONL record: 1-4 photo parts in the first user turn, then 1-3 exchanges."""
    images = [{"type": "image", "path": f"photos/{rng.randrange(photos):06d}.jpg"} for _ in range(rng.randint(1, 4))]
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for turn in range(rng.randint(1, 3)):
        question = rng.choice(QUESTIONS) + " " + sentence(rng, 4, 25)
        content = [*images, {"type": "text", "text": question}] if turn == 0 else [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": answer(rng)})
    return {"id": f"conv-{index:07d}", "messages": messages}


def normalised_workload(rows: int, image_size: str | None, resize_mode: str | None = None,
                        photos: int = DEFAULT_PHOTOS, seed: int = 0) -> Path:
    """The workload of `rows` rows converted by `vlmdata convert` (the input of `tokenize`), built once.

    Args:
        rows: number of conversations.
        image_size: `--image-size` of the conversion, or None to keep the photos as they are.
        resize_mode: `--resize-mode`, or None for the default of `image_size`.
        photos: size of the photo pool.
        seed: random seed of the workload.
    """
    from vlmdata.convert import convert
    from vlmdata.media import MediaOptions
    from vlmdata.media.options import Resize

    source = make_workload(rows, photos, seed, quiet=True)
    label = f"{image_size or 'original'}{'-' + resize_mode if resize_mode else ''}"
    folder = BENCH_DIR / "normalised" / f"{source.name}-{label}"
    # convert writes its folder only once complete, so an existing folder is a whole one.
    if not (folder / "dataset_info.json").exists():
        resize = Resize.parse(image_size, resize_mode) if image_size else None
        # Worker processes take seconds to start: worth it only for a large workload.
        num_proc = (os.cpu_count() or 1) if rows >= 200 else 1
        convert([str(source / JSONL_NAME)], folder, format="jsonl", media_options=MediaOptions(resize=resize),
                num_proc=num_proc, overwrite=True, progress=False)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="conversations (try 20000 or 200000 for big runs)")
    parser.add_argument("--photos", type=int, default=DEFAULT_PHOTOS,
                        help="distinct photos the conversations draw from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_workload(args.rows, args.photos, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
