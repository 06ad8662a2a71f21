"""Collate time per training batch: from token shards vs processing the batch in the collator, TRL-style.

Both sides start from a list of dataset indices, as a DataLoader hands them over, and end with the batch of
tensors the model's forward takes:
- shards: the rows read from the shard folder the way `vlmdata train` opens it (`open_shards`: numpy format,
  memory-mapped Arrow) and `vlmdata.train.ShardCollator`, which pads, stacks and decodes pixel codes;
- on the fly: the rows read from the normalised dataset (`datasets` decodes their JPEGs on access), then
  `processor.apply_chat_template` on the whole batch with padding, and labels made from the input ids with
  padding and image tokens masked: the vision collator that TRL's documentation and examples write.
The on-the-fly side makes no assistant-only labels, which would only add to its time.

Example:
    python -m bench.bench_collate --rows 32 --batch-size 8 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch

from bench.bench_tokenize import INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE, chat_messages
from bench.build_processors import build_processors
from bench.common import BENCH_DIR, Figure, interleaved, median, ratio_text, write_results
from bench.make_workload import normalised_workload

GOAL = 20.0


def batches_of(count: int, batch_size: int) -> list[list[int]]:
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


def shard_collate_seconds(shards, collate, batches: list[list[int]]) -> float:
    started = time.perf_counter()
    for indices in batches:
        batch = collate([shards.dataset[index] for index in indices])
        assert batch["pixel_values"].dtype == torch.float32
    return time.perf_counter() - started


def on_the_fly_seconds(dataset: datasets.Dataset, processor, batches: list[list[int]]) -> float:
    image_token_ids = [processor.tokenizer.convert_tokens_to_ids(token) for token in
                       (getattr(processor, "image_token", None), getattr(processor, "boi_token", None),
                        getattr(processor, "eoi_token", None)) if token]
    started = time.perf_counter()
    for indices in batches:
        conversations = [chat_messages(dataset[index]) for index in indices]
        batch = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                              processor_kwargs={"padding": True})
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        labels[torch.isin(labels, torch.tensor(image_token_ids))] = -100
        batch["labels"] = labels
    return time.perf_counter() - started


def bench_family(family: str, processor_dir: Path, data: Path, batch_size: int, repeats: int,
                 scratch: Path) -> tuple[Figure, dict]:
    from transformers import AutoProcessor

    from vlmdata.tokenize import tokenize
    from vlmdata.train.collator import ShardCollator
    from vlmdata.train.data import open_shards

    summary = tokenize(data, scratch / "shards", model=str(processor_dir), progress=False)
    if summary.rows_rejected:
        raise RuntimeError(f"tokenize rejected rows: {dict(summary.rejects_by_reason)}")
    shards = open_shards(str(scratch / "shards"))
    processor = AutoProcessor.from_pretrained(shards.processor_dir)  # with the template the shards were made with
    collate = ShardCollator(shards.layout, pad_token_id=processor.tokenizer.pad_token_id)
    dataset = datasets.load_from_disk(str(data))
    batches = batches_of(len(dataset), batch_size)
    samples = interleaved({
        "shards": lambda: shard_collate_seconds(shards, collate, batches),
        "on_the_fly": lambda: on_the_fly_seconds(dataset, processor, batches),
    }, repeats)
    shard_ms = median(samples["shards"]) / len(batches) * 1000
    on_the_fly_ms = median(samples["on_the_fly"]) / len(batches) * 1000
    ratio = on_the_fly_ms / shard_ms
    figure = Figure(
        f"collate.{family}", f"collate time per batch of {batch_size} from shards, {family}",
        f"{shard_ms:.1f} ms/batch", f"TRL-style on-the-fly collator: {on_the_fly_ms:.0f} ms/batch", ratio,
        f"{ratio:.0f}x faster", f"≥ {GOAL:.0f}x faster", ratio >= GOAL,
        f"{len(batches)} batches of {batch_size} rows ({summary.images} images), median of {repeats} rounds; "
        "both sides read their rows from Arrow; pixels decoded to float32",
    )
    details = {"batches": len(batches), "batch_size": batch_size, "images": summary.images,
               "samples_s": samples, "shard_ms_per_batch": shard_ms, "on_the_fly_ms_per_batch": on_the_fly_ms}
    return figure, details


def run(families: list[str], rows: int, batch_size: int, repeats: int) -> tuple[list[Figure], dict]:
    processors = build_processors(tuple(families))
    data = normalised_workload(rows, INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE)
    figures, details = [], {}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for family in families:
        with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="collate-") as scratch:
            figure, details[family] = bench_family(family, processors[family], data, batch_size, repeats, Path(scratch))
        figures.append(figure)
    return figures, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--families", default="gemma3,qwen2_vl")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "collate.json")
    args = parser.parse_args(argv)
    figures, details = run(args.families.split(","), args.rows, args.batch_size, args.repeats)
    write_results(args.json, figures, details)
    for figure in figures:
        print(f"{figure.what}: {figure.value} vs {figure.baseline} -> {figure.ratio_text}; {figure.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
