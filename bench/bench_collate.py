"""Collate time per training batch: from token shards vs processing the batch in the collator, TRL-style.

Both sides start from a list of dataset indices, as a DataLoader hands them over, and end with the batch of
tensors the model's forward takes:
- shards: the rows read the way `vlmdata train` reads them (`open_shards`, then `ArrowRows`: memory-mapped
  Arrow, no copy) and `vlmdata.train.ShardCollator` as `vlmdata train` sets it up: it pads and stacks, and
  leaves pixel codes as uint8 for the model's pre-hook to decode on the GPU;
- shards, decoded on the CPU: the same, with the collator decoding the codes into float32 itself (what a run
  whose model is on the CPU pays in all, given for information);
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
import time
from pathlib import Path

import datasets
import torch

from bench.bench_tokenize import chat_messages, for_each_family
from bench.common import BENCH_DIR, Figure, interleaved, median, print_figures, write_results

GOAL = 20.0


def batches_of(count: int, batch_size: int) -> list[list[int]]:
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


def shard_collate_seconds(rows, collate, batches: list[list[int]], pixel_dtype: torch.dtype) -> float:
    started = time.perf_counter()
    for indices in batches:
        batch = collate([rows[index] for index in indices])
        assert batch["pixel_values"].dtype == pixel_dtype
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
    from vlmdata.train.data import ArrowRows, open_shards

    summary = tokenize(data, scratch / "shards", model=str(processor_dir), progress=False)
    if summary.rows_rejected:
        raise RuntimeError(f"tokenize rejected rows: {dict(summary.rejects_by_reason)}")
    shards = open_shards(str(scratch / "shards"))
    rows = ArrowRows(shards.dataset)  # as `vlmdata train` hands the rows to its data loader
    processor = AutoProcessor.from_pretrained(shards.processor_dir)  # with the template the shards were made with
    pad = processor.tokenizer.pad_token_id
    codes_collate = ShardCollator(shards.layout, pad_token_id=pad, decode_pixels=False)
    floats_collate = ShardCollator(shards.layout, pad_token_id=pad)
    dataset = datasets.load_from_disk(str(data))
    batches = batches_of(len(dataset), batch_size)
    samples = interleaved({
        "shards": lambda: shard_collate_seconds(rows, codes_collate, batches, torch.uint8),
        "shards_cpu_decoded": lambda: shard_collate_seconds(rows, floats_collate, batches, torch.float32),
        "on_the_fly": lambda: on_the_fly_seconds(dataset, processor, batches),
    }, repeats)
    per_batch = {name: median(times) / len(batches) * 1000 for name, times in samples.items()}
    on_the_fly_ms = per_batch["on_the_fly"]
    baseline = f"TRL-style on-the-fly collator: {on_the_fly_ms:.0f} ms/batch"
    how = (f"{len(batches)} batches of {batch_size} rows ({summary.media['images']} images), median of {repeats} rounds; "
           "both sides read their rows from Arrow")
    ratio = on_the_fly_ms / per_batch["shards"]
    cpu_ratio = on_the_fly_ms / per_batch["shards_cpu_decoded"]
    figures = [
        Figure(f"collate.{family}", f"collate time per batch of {batch_size} from shards, {family}",
               f"{per_batch['shards']:.1f} ms/batch", baseline, ratio, f"{ratio:.0f}x faster", f"≥ {GOAL:.0f}x faster",
               ratio >= GOAL, f"{how}; pixels left as uint8 codes for the model's pre-hook, as `vlmdata train` runs"),
        Figure(f"collate.{family}.cpu_decoded", f"the same, pixels decoded to float32 in the collator, {family}",
               f"{per_batch['shards_cpu_decoded']:.1f} ms/batch", baseline, cpu_ratio, f"{cpu_ratio:.1f}x faster",
               note=f"{how}; what a model on the CPU pays in all (the pre-hook does this decoding there)"),
    ]
    details = {"batches": len(batches), "batch_size": batch_size, "images": summary.media["images"], "samples_s": samples,
               "shard_ms_per_batch": per_batch["shards"],
               "shard_cpu_decoded_ms_per_batch": per_batch["shards_cpu_decoded"],
               "on_the_fly_ms_per_batch": on_the_fly_ms}
    return figures, details


def run(families: list[str], rows: int, batch_size: int, repeats: int) -> tuple[list[Figure], dict]:
    def measure(family, processor, data, scratch):
        return bench_family(family, processor, data, batch_size, repeats, scratch)

    return for_each_family(families, rows, "collate-", measure)


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
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
