"""Tokenize throughput against the processor floor and against what users write today.

Three ways to turn the same normalised rows into model inputs, with processors of real size
(`bench/build_processors.py`):

- the floor: a bare loop calling `processor.apply_chat_template(..., tokenize=True)` on images that are already
  decoded PIL images in memory. Nothing is read, decoded, labelled or written: no tool can go faster with this
  processor in one process.
- `vlmdata tokenize` (the `tokenize` function, in this process), with `--num-proc 1` and `--num-proc 2`;
- `datasets.map` calling `processor.apply_chat_template(..., tokenize=True)` per row and writing its cache file,
  as the TRL and transformers docs show.

vlmdata's throughput is measured in steady state: each repetition tokenizes the first `--rows` rows and the
first `--warm-rows` rows, and the rows in between are divided by the difference of the two times. Start-up
(loading the processor, probing it, spawning workers, saving the processor) is a fixed cost that a large
dataset pays once; the time of the short run, start-up included, is reported beside. Each worker loads the
processor on its first batch, so the short run must give every worker a batch (`--warm-rows` at least 16 per
worker) or the difference counts a worker's start-up as work. The floor and `datasets.map` run on exactly the
rows in between.

Tokenize against the floor is measured a second time in a process pinned to one core before torch starts its
threads (`--one-core`, on by default): there tokenize's decoding and writing threads cannot run beside the
processor, and the floor's torch runs one thread.

Example:
    python -m bench.bench_tokenize --rows 144 --warm-rows 32 --repeats 3 --json out/bench/results/tokenize.json
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch

from bench.build_processors import build_processors
from bench.common import (BENCH_DIR, Figure, interleaved, median, print_figures, ratio_text, read_results,
                          write_results)
from bench.make_workload import normalised_workload

# Saving the small input subsets would print a progress bar each time.
datasets.disable_progress_bars()

# The tokenize input: the workload converted with the longest side at 768, as a user shrinks photos once
# (below Qwen2-VL's default budget of about 1 MP, so its processor keeps their size).
INPUT_IMAGE_SIZE = "768"
INPUT_RESIZE_MODE = "fit"
FLOOR_GOAL = 1.0
TWO_PROCESS_GOAL = 1.8
MAP_GOAL = 2.0


def for_each_family(families: list[str], rows: int, prefix: str, measure) -> tuple[list[Figure], dict]:
    """Runs `measure(family, processor_dir, data, scratch)`, which returns `(figures, details)`, for each family
    on the tokenize input of `rows` rows, each in a scratch folder of its own."""
    processors = build_processors(tuple(families))
    data = normalised_workload(rows, INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE)
    figures, details = [], {}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for family in families:
        with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix=prefix) as scratch:
            family_figures, details[family] = measure(family, processors[family], data, Path(scratch))
        figures.extend(family_figures)
    return figures, details


def chat_messages(row: dict) -> list[dict]:
    """A normalised row (images decoded by `datasets`) in the processor's chat format."""
    images = iter(row["images"])
    messages = []
    for message in row["messages"]:
        content = []
        for part in message["content"]:
            if part["type"] == "image":
                content.append({"type": "image", "image": next(images)})
            else:
                content.append({"type": "text", "text": part["text"] or ""})
        messages.append({"role": message["role"], "content": content})
    return messages


def decoded_conversations(dataset: datasets.Dataset) -> list[list[dict]]:
    """Every row's messages with its images fully decoded in memory, ready for the floor loop."""
    conversations = []
    for row in dataset:
        messages = chat_messages(row)
        for message in messages:
            for part in message["content"]:
                if part["type"] == "image":
                    part["image"].load()
        conversations.append(messages)
    return conversations


def floor_seconds(processor, template: str, conversations: list[list[dict]], assistant_masks: bool = False) -> float:
    """Seconds for the bare processor loop over decoded conversations."""
    started = time.perf_counter()
    for messages in conversations:
        processor.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                      return_tensors="pt", return_assistant_tokens_mask=assistant_masks)
    return time.perf_counter() - started


def vlmdata_seconds(data_dir: Path, out_dir: Path, model: Path, num_proc: int) -> float:
    """Seconds for one `tokenize` run, start-up included."""
    from vlmdata.tokenize import tokenize

    started = time.perf_counter()
    summary = tokenize(data_dir, out_dir, model=str(model), num_proc=num_proc, overwrite=True, progress=False)
    elapsed = time.perf_counter() - started
    if summary.rows_rejected:
        raise RuntimeError(f"tokenize rejected rows: {dict(summary.rejects_by_reason)}")
    shutil.rmtree(out_dir, ignore_errors=True)
    return elapsed


def datasets_map_seconds(data_dir: Path, processor, scratch: Path, keep: Path | None = None) -> float:
    """Seconds for the usual `datasets.map` preprocessing, cache file written (and kept at `keep`, if given)."""
    dataset = datasets.load_from_disk(str(data_dir))

    def process(row: dict) -> dict:
        # What users write: the processor's own template; per-token tensors lose their batch dimension of one.
        outputs = processor.apply_chat_template(chat_messages(row), tokenize=True, return_dict=True,
                                                return_tensors="pt")
        length = outputs["input_ids"].shape[1]
        return {name: value[0] if value.ndim == 2 and value.shape == (1, length) else value
                for name, value in outputs.items()}

    cache = keep or scratch / "map-cache.arrow"
    started = time.perf_counter()
    processed = dataset.map(process, remove_columns=dataset.column_names, cache_file_name=str(cache))
    elapsed = time.perf_counter() - started
    del processed
    if keep is None:
        cache.unlink(missing_ok=True)
    return elapsed


def versus(key: str, what: str, value: float, baseline_name: str, baseline: float, goal: float | None,
           note: str) -> Figure:
    """A throughput figure against its baseline; `goal` is the least acceptable ratio, or None."""
    ratio = value / baseline
    if math.isnan(ratio):
        return Figure(key, what, "no figure: timing noise exceeded the work, use more --rows",
                      f"{baseline_name}: {baseline:.2f} rows/s", None, "—",
                      f"≥ {goal:.2f}x" if goal else "", None, note)
    return Figure(key, what, f"{value:.2f} rows/s", f"{baseline_name}: {baseline:.2f} rows/s", ratio,
                  ratio_text(ratio), f"≥ {goal:.2f}x" if goal else "", ratio >= goal if goal else None, note)


def subset(dataset_dir: Path, start: int, stop: int, scratch: Path) -> Path:
    folder = scratch / f"rows-{start}-{stop}"
    datasets.load_from_disk(str(dataset_dir)).select(range(start, stop)).save_to_disk(str(folder))
    return folder


def bench_family(family: str, processor_dir: Path, rows: int, warm_rows: int, repeats: int,
                 two_processes: bool, scratch: Path, one_core: bool = False) -> tuple[list[Figure], dict]:
    """The figures of one processor family; `one_core`: only tokenize against the floor, this process being
    pinned to one core."""
    from transformers import AutoProcessor

    from vlmdata.models.registry import load_template

    source = normalised_workload(rows, INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE)
    small, steady = subset(source, 0, warm_rows, scratch), subset(source, warm_rows, rows, scratch)
    full = subset(source, 0, rows, scratch)
    steady_rows = rows - warm_rows
    processor = AutoProcessor.from_pretrained(processor_dir)
    template = load_template(family)
    conversations = decoded_conversations(datasets.load_from_disk(str(steady)))
    images = sum(len(row["images"]) for row in datasets.load_from_disk(str(steady)))
    out = scratch / "shards"

    variants = {
        "floor": lambda: floor_seconds(processor, template, conversations),
        "floor_with_masks": lambda: floor_seconds(processor, template, conversations, assistant_masks=True),
        "vlmdata_1_small": lambda: vlmdata_seconds(small, out, processor_dir, 1),
        "vlmdata_1_full": lambda: vlmdata_seconds(full, out, processor_dir, 1),
        "datasets_map": lambda: datasets_map_seconds(steady, processor, scratch),
    }
    if one_core:
        del variants["floor_with_masks"], variants["datasets_map"]
    if two_processes:
        variants["vlmdata_2_small"] = lambda: vlmdata_seconds(small, out, processor_dir, 2)
        variants["vlmdata_2_full"] = lambda: vlmdata_seconds(full, out, processor_dir, 2)
    if repeats > 1:
        # Untimed: the first run in a process pays for imports and caches that later runs do not.
        vlmdata_seconds(small, out, processor_dir, 1)
    samples = interleaved(variants, repeats)
    seconds = {name: median(values) for name, values in samples.items()}
    rate = {name: steady_rows / seconds[name] for name in ("floor", "floor_with_masks", "datasets_map") if name in seconds}
    first_rows_s = {}
    for processes in (1, 2) if two_processes else (1,):
        small_s, full_s = seconds[f"vlmdata_{processes}_small"], seconds[f"vlmdata_{processes}_full"]
        # A difference at or below zero means noise swamped the rows in between: no figure rather than a wrong one.
        rate[f"vlmdata_{processes}"] = steady_rows / (full_s - small_s) if full_s > small_s else float("nan")
        first_rows_s[processes] = small_s
    where = f"steady state over {steady_rows} rows ({images} images), {family} at real size"

    figures = [
        versus(f"tokenize.{family}.floor" + ("_one_core" if one_core else ""),
               f"tokenize throughput, 1 process, {family}" + (", both pinned to one core" if one_core else ""),
               rate["vlmdata_1"], "processor floor", rate["floor"], FLOOR_GOAL,
               f"{where}; start-up excluded (the first {warm_rows} rows took {first_rows_s[1]:.1f} s in all); "
               "the floor loop asks for no assistant masks"
               + ("; pinned to one core (as `taskset -c 0` pins), where tokenize's decoding and writing threads share it"
                  if one_core else "")),
    ]
    if two_processes:
        figures.append(versus(
            f"tokenize.{family}.two_processes", f"tokenize throughput, --num-proc 2, {family}", rate["vlmdata_2"],
            "processor floor (1 process)", rate["floor"], TWO_PROCESS_GOAL,
            f"{where}; start-up excluded (spawning 2 workers: the first {warm_rows} rows took "
            f"{first_rows_s[2]:.1f} s in all); on {os.cpu_count()} cores, which the floor's torch threads "
            "already use in part (see the notes)"))
    figures += [] if one_core else [
        versus(f"tokenize.{family}.datasets_map", f"tokenize vs datasets.map + apply_chat_template, {family}",
               rate["vlmdata_1"], "datasets.map", rate["datasets_map"], MAP_GOAL,
               f"{where}, both 1 process; datasets.map writes its cache file (pixel_values as nested float32 lists)"),
        versus(f"tokenize.{family}.masks", f"processor floor with assistant masks, {family}",
               rate["floor_with_masks"], "processor floor", rate["floor"], None,
               "the floor loop with return_assistant_tokens_mask=True and return_tensors='pt', as vlmdata calls it"),
    ]
    details = {
        "family": family,
        "rows": rows,
        "warm_rows": warm_rows,
        "steady_rows": steady_rows,
        "steady_images": images,
        "median_seconds": seconds,
        "samples_seconds": samples,
        "rows_per_s": rate,
        "first_rows_s": first_rows_s,
        "input": f"workload converted with --image-size {INPUT_IMAGE_SIZE} --resize-mode {INPUT_RESIZE_MODE}",
        "image_processor": type(processor.image_processor).__name__,
        "torch_threads": torch.get_num_threads(),
    }
    return figures, details


def run(families: list[str], rows: int, warm_rows: int, repeats: int,
        two_process_families: list[str], one_core: bool = False) -> tuple[list[Figure], dict]:
    """Measures every family in turn; `two_process_families` are also run with `--num-proc 2`."""
    processors = build_processors(tuple(families))
    figures, details = [], {}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    for family in families:
        with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="tokenize-") as scratch:
            family_figures, details[family] = bench_family(
                family, processors[family], rows, warm_rows, repeats, family in two_process_families, Path(scratch),
                one_core)
        figures += family_figures
    return figures, details


def pinned_run(args: argparse.Namespace) -> tuple[list[Figure], dict]:
    """This script's floor figures again, in a process pinned to one core before torch starts its threads."""
    core = min(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="tokenize-pinned-") as scratch:
        results = Path(scratch) / "pinned.json"
        command = [sys.executable, "-m", "bench.bench_tokenize", "--pinned", "--families", args.families,
                   "--rows", str(args.rows), "--warm-rows", str(args.warm_rows), "--repeats", str(args.repeats),
                   "--json", str(results)]
        subprocess.run(command, check=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
        figures, details = read_results(results)
    return figures, {**details, "core": core}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--families", default="gemma3,qwen2_vl", help="real-size processors to measure")
    parser.add_argument("--two-process-families", default="gemma3",
                        help="families also measured with --num-proc 2 (spawning workers costs several seconds)")
    parser.add_argument("--rows", type=int, default=144, help="rows tokenized per repetition (a multiple of 16)")
    parser.add_argument("--warm-rows", type=int, default=32,
                        help="rows of the run whose time is subtracted to remove start-up costs (16 per worker at least)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one-core", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure tokenize against the floor in a second process pinned to one core")
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)  # that second process
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "tokenize.json")
    args = parser.parse_args(argv)
    if not 0 < args.warm_rows < args.rows:
        parser.error("--warm-rows must be between 0 and --rows")
    families = args.families.split(",")
    two_process_families = [] if args.pinned else args.two_process_families.split(",")
    figures, details = run(families, args.rows, args.warm_rows, args.repeats, two_process_families, args.pinned)
    if args.one_core and not args.pinned:
        pinned_figures, details["one_core"] = pinned_run(args)
        figures += pinned_figures
    write_results(args.json, figures, details)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
