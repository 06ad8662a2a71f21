"""Shard size per image against float32 pixel values, and a check that the rebuilt tensors are exact.

A naive Arrow cache (a `datasets.map` over the processor) holds every image's `pixel_values` as float32, the
processor's own output. vlmdata's shards hold token ids, labels and the pixels in its compact storage; the
figure is the whole shard folder's Arrow bytes per image against the float32 bytes of the same images' pixel
values. The datasets.map cache of the same rows is measured too, for reference.

Compact storage only counts when it loses nothing: for `--check-rows` rows, `vlmdata.shards.model_inputs` must
give back exactly what the processor (saved beside the shards) returns for the row: same names, shapes, dtypes
and bits.

Example:
    python -m bench.bench_storage --rows 16 --check-rows 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets
import torch

from bench.bench_tokenize import chat_messages, datasets_map_seconds, for_each_family
from bench.common import BENCH_DIR, Figure, folder_bytes, print_figures, ratio_text, write_results

GOAL = 0.5
STRETCH_GOAL = 0.25
# Outputs of the processor that are not model inputs: the assistant mask becomes the labels.
NOT_MODEL_INPUTS = {"assistant_masks"}


def mismatches(rebuilt: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """What differs between the tensors rebuilt from a shard row and the processor's output, in words."""
    problems = []
    for name, tensor in expected.items():
        if name in NOT_MODEL_INPUTS:
            continue
        if name not in rebuilt:
            problems.append(f"{name} missing")
        elif rebuilt[name].dtype != tensor.dtype or rebuilt[name].shape != tensor.shape:
            problems.append(f"{name}: {rebuilt[name].dtype} {list(rebuilt[name].shape)} "
                            f"instead of {tensor.dtype} {list(tensor.shape)}")
        elif not torch.equal(rebuilt[name], tensor):
            problems.append(f"{name}: values differ")
    return problems


def bench_family(family: str, processor_dir: Path, data: Path, check_rows: int, scratch: Path) -> tuple[Figure, dict]:
    from transformers import AutoProcessor

    from vlmdata.shards import load_shards, model_inputs, read_layout
    from vlmdata.tokenize import tokenize

    shards = scratch / f"shards-{family}"
    summary = tokenize(data, shards, model=str(processor_dir), overwrite=True, progress=False)
    shard_bytes = folder_bytes(shards)

    # The processor saved with the shards holds the template they were made with: the oracle of every row.
    processor = AutoProcessor.from_pretrained(shards / "processor")
    layout, rows = read_layout(shards), load_shards(shards)
    float32_bytes, problems = 0, []
    for index, row in enumerate(datasets.load_from_disk(str(data))):
        expected = processor.apply_chat_template(chat_messages(row), tokenize=True, return_dict=True,
                                                 return_tensors="pt")
        float32_bytes += expected["pixel_values"].numel() * 4
        if index < check_rows:
            rebuilt = model_inputs(rows[index], layout)
            problems += [f"row {index}: {problem}" for problem in mismatches(rebuilt, expected)]
    map_processor = AutoProcessor.from_pretrained(processor_dir)
    datasets_map_seconds(data, map_processor, scratch, keep=scratch / "map-cache.arrow")
    map_bytes = (scratch / "map-cache.arrow").stat().st_size

    images = summary.media["images"]
    ratio = shard_bytes / float32_bytes
    exact = not problems
    checked = f"{min(check_rows, summary.rows_written)} rows rebuilt bit-exactly" if exact else (
        "NOT exact: " + "; ".join(problems[:3]))
    figure = Figure(
        f"storage.{family}", f"shard bytes per image, {family}", f"{shard_bytes / images / 2**20:.2f} MiB/image",
        f"float32 pixel_values: {float32_bytes / images / 2**20:.2f} MiB/image", ratio, ratio_text(ratio, 3),
        f"≤ {GOAL:.2f}x (stretch ≤ {STRETCH_GOAL:.2f}x), exact", exact and ratio <= GOAL,
        f"{summary.rows_written} rows, {images} images; {checked}; "
        f"datasets.map cache: {map_bytes / images / 2**20:.2f} MiB/image"
        + ("; stretch goal met" if exact and ratio <= STRETCH_GOAL else "; stretch goal not met"),
    )
    details = {"rows": summary.rows_written, "images": images, "shard_bytes": shard_bytes,
               "float32_pixel_bytes": float32_bytes, "datasets_map_cache_bytes": map_bytes,
               "exact": exact, "problems": problems, "checked_rows": check_rows}
    return figure, details


def run(families: list[str], rows: int, check_rows: int) -> tuple[list[Figure], dict]:
    def measure(family, processor, data, scratch):
        figure, details = bench_family(family, processor, data, check_rows, scratch)
        return [figure], details

    return for_each_family(families, rows, "storage-", measure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--families", default="gemma3,qwen2_vl")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--check-rows", type=int, default=4, help="rows whose rebuilt tensors are compared")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "storage.json")
    args = parser.parse_args(argv)
    figures, details = run(args.families.split(","), args.rows, args.check_rows)
    write_results(args.json, figures, details)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
