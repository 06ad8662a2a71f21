"""Packing: padding and trained tokens per second, packed against unpacked, at equal tokens per optimizer step.

Both sides train the same tiny model (`fixtures/build_tiny_models.py`) with `vlmdata train` in this process, on
shards of the benchmark workload tokenized by that model's processor, so the rows have the workload's spread of
lengths. Unpacked, a step is a batch of `--batch-size` rows padded to the longest; packed, a step is a batch of
packs as long as the longest row (what `--pack-length` defaults to: the shards' max length), as many as make
the same tokens per step, `--batch-size` times the mean row length.
Each side runs `--steps` optimizer steps, the two alternating over `--repeats` rounds after one round that warms
both up and is left out; throughput is the label
tokens trained (`trained_tokens` of `loss.jsonl`) over the Trainer's own runtime, which leaves out loading.
Padding is the share of the tokens of the batches that is padding: for the unpacked side, batches drawn in a
random order as the Trainer draws them; for the packed side, the pack plan's.
The attention figure times forward and backward passes over the same packs, `--attention-packs` of them at
`--attention-multiple` times the longest row, with `sdpa_packed` (each sample's block, what training uses)
against sdpa over the whole pack, in one thread.

Example:
    python -m bench.bench_packing --rows 96 --steps 12 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_tokenize import INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE
from bench.common import BENCH_DIR, FIXTURE_MODELS, Figure, interleaved, median, print_figures, write_results
from bench.make_workload import normalised_workload

PADDING_GOAL = 0.05
SPEED_GOAL = 1.5


def train_once(shards: Path, out: Path, steps: int, batch_size: int, pack_length: int | None) -> tuple[float, int]:
    """Runtime in seconds and label tokens trained, for one run of `steps` steps of `batch_size` rows or packs."""
    from vlmdata.train import AdapterOptions, TrainOptions, train

    options = TrainOptions(adapter=AdapterOptions(lora_dropout=0.0), max_steps=steps, learning_rate=1e-4,
                           batch_size=batch_size, packing=pack_length is not None,
                           pack_length=pack_length, report_to="none", logging_steps=1)
    summary = train(str(shards), out, options=options, overwrite=True, progress=False)
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    return summary.metrics["train_runtime"], sum(record.get("trained_tokens", 0) for record in records)


def bench_family(family: str, rows: int, steps: int, batch_size: int, repeats: int, scratch: Path) -> tuple[list[Figure], dict]:
    from vlmdata.pack_plan import PackOptions, padding_fraction, plan_packs
    from vlmdata.shards import load_shards
    from vlmdata.tokenize import tokenize

    data = normalised_workload(rows, INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE)
    shards = scratch / "shards"
    tokenize(data, shards, model=str(FIXTURE_MODELS / family), progress=False)
    lengths = np.array(load_shards(shards)["length"])
    pack_length = int(lengths.max())
    packs_per_step = max(1, round(batch_size * lengths.mean() / pack_length))
    rates: dict[str, list[float]] = {"unpacked": [], "packed": []}

    def run(side: str) -> float:
        packed = side == "packed"
        seconds, tokens = train_once(shards, scratch / side, steps, packs_per_step if packed else batch_size,
                                     pack_length if packed else None)
        rates[side].append(tokens / seconds)
        return seconds

    interleaved({"unpacked": lambda: run("unpacked"), "packed": lambda: run("packed")}, repeats + 1)
    # The first round warms both sides up (allocator, thread pools, kernels chosen per shape): left out.
    rate = {side: median(values[1:]) for side, values in rates.items()}
    unpacked_padding = padding_fraction(lengths[np.random.default_rng(42).permutation(len(lengths))], batch_size)
    packed_padding = plan_packs(lengths, PackOptions(pack_length=pack_length), seed=42).padding_fraction(packs_per_step)
    speedup = rate["packed"] / rate["unpacked"]
    how = (f"{len(lengths)} rows of {int(lengths.min())} to {int(lengths.max())} tokens (mean {lengths.mean():.0f}); "
           f"batches of {batch_size} rows against batches of {packs_per_step} packs of {pack_length} tokens; "
           f"{steps} steps, median of {repeats} rounds")
    figures = [
        Figure(f"packing.{family}.padding", f"padding fraction packed, {family}", f"{packed_padding:.1%}",
               f"unpacked batches of {batch_size}: {unpacked_padding:.1%}",
               packed_padding / unpacked_padding if unpacked_padding else None,
               f"{packed_padding / unpacked_padding:.2f}x" if unpacked_padding else "—",
               f"< {PADDING_GOAL:.0%} packed", packed_padding < PADDING_GOAL, how),
        Figure(f"packing.{family}.speed", f"trained tokens per second, packed vs unpacked, {family} (tiny model, CPU)",
               f"{rate['packed']:.0f} tokens/s", f"unpacked: {rate['unpacked']:.0f} tokens/s", speedup,
               f"{speedup:.2f}x", f"≥ {SPEED_GOAL:.1f}x", speedup >= SPEED_GOAL, how),
    ]
    details = {"lengths": lengths.tolist(), "pack_length": pack_length, "packs_per_step": packs_per_step, "rates": rates,
               "unpacked_padding": unpacked_padding, "packed_padding": packed_padding}
    return figures, details


def bench_attention(family: str, shards: Path, multiple: int, packs: int, repeats: int) -> Figure:
    """Seconds of forward and backward over packs of about `multiple` rows: sdpa_packed against sdpa whole."""
    import torch

    from vlmdata.pack_plan import PackOptions, plan_packs
    from vlmdata.shards import load_shards, read_layout
    from vlmdata.train.collator import PixelDecoding
    from vlmdata.train.model import load_model
    from vlmdata.train.packed_attention import SDPA_PACKED, use_packed_attention
    from vlmdata.train.packing import packing_collator

    rows, layout = list(load_shards(shards)), read_layout(shards)
    lengths = np.array([len(row["input_ids"]) for row in rows])
    plan = plan_packs(lengths, PackOptions(pack_length=int(lengths.max()) * multiple), seed=42)
    chosen = plan.packs[:packs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a step's own work, the same for both, without the other core's noise

    def run(attention: str) -> float:
        model = load_model(str(FIXTURE_MODELS / family), dtype=torch.float32)
        if attention == SDPA_PACKED:
            use_packed_attention(model)
        model.register_forward_pre_hook(PixelDecoding(layout, torch.float32), with_kwargs=True)
        collate = packing_collator(layout, 0, model, family)
        batches = [collate([[rows[row] for row in pack]]) for pack in chosen]
        start = time.perf_counter()
        for batch in batches:
            model(**batch).loss.backward()
        return time.perf_counter() - start

    try:
        seconds = interleaved({SDPA_PACKED: lambda: run(SDPA_PACKED), "sdpa": lambda: run("sdpa")}, repeats + 1)
    finally:
        torch.set_num_threads(threads)
    packed, whole = median(seconds[SDPA_PACKED][1:]), median(seconds["sdpa"][1:])
    per_pack = np.mean([len(pack) for pack in chosen])
    return Figure(f"packing.{family}.attention", f"packed step time, sdpa_packed vs sdpa over the pack, {family} "
                  f"(tiny model, CPU, 1 thread)", f"{packed:.2f} s", f"sdpa: {whole:.2f} s", whole / packed,
                  f"{whole / packed:.2f}x", "", None,
                  f"forward and backward over {len(chosen)} packs of {per_pack:.1f} samples "
                  f"({int(lengths.max()) * multiple} tokens each at most); median of {repeats} rounds after a warm-up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--families", default="qwen2_vl,gemma3")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--attention-multiple", type=int, default=4)
    parser.add_argument("--attention-packs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "packing.json")
    args = parser.parse_args(argv)
    figures, details = [], {}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="packing-") as scratch:
            found, details[family] = bench_family(family, args.rows, args.steps, args.batch_size, args.repeats, Path(scratch))
            found.append(bench_attention(family, Path(scratch) / "shards", args.attention_multiple,
                                         args.attention_packs, args.repeats))
        figures += found
    write_results(args.json, figures, details)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
