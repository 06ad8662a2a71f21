"""Peak memory of `vlmdata convert` and `vlmdata tokenize` at a small and a large number of rows.

Both stages stream: rows go through in batches and are written as they come, so memory should not grow with the
size of the dataset. Each stage runs as its own process (the `vlmdata` command line), once with the small and
once with the large number of rows, and its peak resident memory is read from the kernel (wait4's
`ru_maxrss`: the high-water mark of the largest process). With `--num-proc` above 1 the processes of the run
are also added up, sampled every 50 ms, since that is what the machine has to hold.

Defaults, chosen to finish in minutes on a small machine:
- convert: 2000 and 20000 rows at `--image-size 256` with `--num-proc 2` (draft-mode decoding and both cores
  keep 20000 rows to a few minutes); the figure is then the whole run, main process and workers together;
- tokenize: the real-size gemma3 processor (896x896 pixels, 256 image tokens), 200 and 2000 rows of the
  workload converted at `--image-size 256` (13 and 125 batches of 16 rows), one process. Every image becomes
  896x896 pixels, so the shards of the large run take several GB of disk until they are deleted.

Example:
    python -m bench.bench_memory --convert-rows 2000,20000 --tokenize-rows 200,2000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench.build_processors import build_processors
from bench.common import (BENCH_DIR, Figure, Measured, check, mib, print_figures, ratio_text, run_measured,
                          vlmdata_command, write_results)
from bench.make_workload import JSONL_NAME, make_workload, normalised_workload

PEAK_GOAL_BYTES = 1.5 * 2**30
GROWTH_GOAL = 1.10
CONVERT_IMAGE_SIZE = "256"


def convert_run(rows: int, out: Path, num_proc: int) -> Measured:
    workload = make_workload(rows, quiet=True)
    command = vlmdata_command("convert", str(workload / JSONL_NAME), "-o", str(out), "--format", "jsonl",
                              "--image-size", CONVERT_IMAGE_SIZE, "--num-proc", str(num_proc), "--quiet",
                              "--overwrite")
    measured = check(run_measured(command), f"convert of {rows} rows")
    shutil.rmtree(out, ignore_errors=True)
    return measured


def tokenize_run(rows: int, out: Path, model: Path, num_proc: int) -> Measured:
    data = normalised_workload(rows, CONVERT_IMAGE_SIZE)
    command = vlmdata_command("tokenize", str(data), "-o", str(out), "--model", str(model),
                              "--num-proc", str(num_proc), "--quiet", "--overwrite")
    measured = check(run_measured(command), f"tokenize of {rows} rows")
    shutil.rmtree(out, ignore_errors=True)
    return measured


def stage_figures(stage: str, small_rows: int, large_rows: int, small: Measured, large: Measured,
                  num_proc: int, setting: str) -> list[Figure]:
    """The peak of the large run against the goal, and against the small run (flatness)."""
    use_tree = num_proc > 1
    peak_small = small.peak_tree_pss_bytes if use_tree else small.peak_rss_bytes
    peak_large = large.peak_tree_pss_bytes if use_tree else large.peak_rss_bytes
    which = "all its processes (PSS, sampled every 50 ms)" if use_tree else "one process (RSS high-water mark)"
    growth = peak_large / peak_small
    return [
        Figure(f"memory.{stage}.peak", f"{stage} peak RSS at {large_rows} rows", mib(peak_large),
               f"goal: {mib(PEAK_GOAL_BYTES)}", peak_large / PEAK_GOAL_BYTES,
               ratio_text(peak_large / PEAK_GOAL_BYTES), "< 1.5 GB",
               peak_large < PEAK_GOAL_BYTES,
               f"{setting}; {which}; largest process {mib(large.peak_rss_bytes)}; ran {large.wall_s:.0f} s"),
        Figure(f"memory.{stage}.growth", f"{stage} peak RSS, {large_rows} vs {small_rows} rows", mib(peak_large),
               f"{small_rows} rows: {mib(peak_small)}", growth, ratio_text(growth), "≤ 1.10x",
               growth <= GROWTH_GOAL, f"{setting}; {which}; small run {small.wall_s:.0f} s"),
    ]


def run(convert_rows: tuple[int, int], tokenize_rows: tuple[int, int], convert_num_proc: int,
        tokenize_num_proc: int) -> tuple[list[Figure], dict]:
    figures, details = [], {}
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="memory-") as scratch:
        out = Path(scratch) / "out"
        if convert_rows:
            small, large = (convert_run(rows, out, convert_num_proc) for rows in convert_rows)
            setting = f"--image-size {CONVERT_IMAGE_SIZE} --num-proc {convert_num_proc}"
            figures += stage_figures("convert", *convert_rows, small, large, convert_num_proc, setting)
            details["convert"] = {"rows": convert_rows, "small": vars(small), "large": vars(large)}
        if tokenize_rows:
            model = build_processors(("gemma3",))["gemma3"]
            small, large = (tokenize_run(rows, out, model, tokenize_num_proc) for rows in tokenize_rows)
            setting = f"gemma3 at real size (896x896), --num-proc {tokenize_num_proc}"
            figures += stage_figures("tokenize", *tokenize_rows, small, large, tokenize_num_proc, setting)
            details["tokenize"] = {"rows": tokenize_rows, "small": vars(small), "large": vars(large)}
    return figures, details


def row_pair(text: str) -> tuple[int, int] | tuple[()]:
    if text in ("", "0", "none"):
        return ()
    small, large = (int(value) for value in text.split(","))
    return small, large


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--convert-rows", default="2000,20000", help="SMALL,LARGE rows for convert ('none' skips)")
    parser.add_argument("--tokenize-rows", default="200,2000", help="SMALL,LARGE rows for tokenize ('none' skips)")
    parser.add_argument("--convert-num-proc", type=int, default=2,
                        help="--num-proc of convert (both cores, so that 20000 rows take minutes)")
    parser.add_argument("--tokenize-num-proc", type=int, default=1, help="--num-proc of tokenize")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "memory.json")
    args = parser.parse_args(argv)
    figures, details = run(row_pair(args.convert_rows), row_pair(args.tokenize_rows), args.convert_num_proc,
                           args.tokenize_num_proc)
    write_results(args.json, figures, details)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
