"""Run every benchmark script and write BENCHMARKS.md: what `make bench` does.

Each script runs as its own process, one after the other, so that none inherits another's memory or warm
caches; a script that fails leaves its figures out and is named in the report, and the others still run.
Shard size is measured last.

Presets:
    default   about 24-27 minutes on 2 busy cores (200 and 2000 rows for the tokenize memory run)
    --full    larger samples and more repetitions (about an hour): 20000 rows for both convert runs,
              2000 rows for the large tokenize memory run, --num-proc 2 measured for both processors
    --smoke   a few rows of everything, for checking that the scripts work (a few minutes)

Example:
    python -m bench.run_all            # make bench
    python -m bench.run_all --full     # make bench BENCH_ARGS=--full
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import PYTHON, RESULTS_DIR, ROOT, machine_info
from bench.report import render

PRESETS = {
    "default": {
        "make_workload": ["--rows", "2000"],
        "bench_tokenize": ["--rows", "144", "--warm-rows", "32", "--repeats", "3"],
        "bench_convert": ["--rows", "80", "--image-sizes", "512,256", "--repeats", "5"],
        "bench_memory": ["--convert-rows", "2000,20000", "--tokenize-rows", "200,2000"],
        "profile_stages": ["--convert-rows", "100", "--tokenize-rows", "32"],
        "bench_storage": ["--rows", "16", "--check-rows", "4"],
        "bench_collate": ["--rows", "32", "--batch-size", "8", "--repeats", "3"],
        "bench_video": ["--rows", "8", "--seconds", "10", "--repeats", "3"],
        "bench_packing": ["--rows", "96", "--steps", "8", "--repeats", "3"],
        "bench_ray": ["--rows", "96,480", "--repeats", "3"],
    },
    "full": {
        "make_workload": ["--rows", "20000"],
        "bench_tokenize": ["--rows", "160", "--warm-rows", "32", "--repeats", "5",
                           "--two-process-families", "gemma3,qwen2_vl"],
        "bench_convert": ["--rows", "400", "--image-sizes", "512,256", "--repeats", "5"],
        "bench_memory": ["--convert-rows", "2000,20000", "--tokenize-rows", "200,2000"],
        "profile_stages": ["--convert-rows", "400", "--tokenize-rows", "64"],
        "bench_storage": ["--rows", "64", "--check-rows", "16"],
        "bench_collate": ["--rows", "128", "--batch-size", "8", "--repeats", "5"],
        "bench_video": ["--rows", "32", "--seconds", "20", "--repeats", "5"],
        "bench_packing": ["--rows", "256", "--steps", "16", "--repeats", "5"],
        "bench_ray": ["--rows", "192,576", "--repeats", "5"],
    },
    "smoke": {
        "make_workload": ["--rows", "20"],
        "bench_tokenize": ["--rows", "8", "--warm-rows", "4", "--repeats", "1"],
        "bench_convert": ["--rows", "8", "--image-sizes", "512", "--repeats", "1"],
        "bench_memory": ["--convert-rows", "8,16", "--tokenize-rows", "4,8", "--convert-num-proc", "1"],
        "profile_stages": ["--convert-rows", "8", "--tokenize-rows", "4"],
        "bench_storage": ["--rows", "4", "--check-rows", "2"],
        "bench_collate": ["--rows", "4", "--batch-size", "2", "--repeats", "1"],
        "bench_video": ["--rows", "1", "--seconds", "2", "--repeats", "1"],
        "bench_packing": ["--rows", "4", "--steps", "1", "--repeats", "1", "--families", "qwen2_vl"],
        "bench_ray": ["--rows", "8,16", "--repeats", "1"],
    },
}
# Scripts whose results go into the report, in running order (storage last: it reads the newest shards).
SCRIPTS = ["bench_tokenize", "bench_convert", "bench_memory", "profile_stages", "bench_collate", "bench_video",
           "bench_packing", "bench_ray", "bench_storage"]


def run_script(name: str, arguments: list[str], results: Path) -> str | None:
    """Runs `python -m bench.<name>`; returns None, or why it failed."""
    command = [PYTHON, "-m", f"bench.{name}", *arguments]
    if name in SCRIPTS:
        command += ["--json", str(results / f"{name.removeprefix('bench_').removesuffix('_stages')}.json")]
    print(f"== {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    print(f"   {time.perf_counter() - started:.0f} s", flush=True)
    if finished.returncode != 0:
        print(finished.stderr[-3000:], file=sys.stderr)
        last = [line for line in finished.stderr.strip().splitlines() if line.strip()]
        return f"exit status {finished.returncode}: {last[-1] if last else 'no message'}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--full", action="store_true", help="larger samples, more repetitions")
    preset.add_argument("--smoke", action="store_true", help="a few rows of everything")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    name = "full" if args.full else "smoke" if args.smoke else "default"
    shutil.rmtree(args.results, ignore_errors=True)
    args.results.mkdir(parents=True)
    started = time.perf_counter()
    failures = {}
    for script in ["make_workload", *SCRIPTS]:
        reason = run_script(script, PRESETS[name][script], args.results)
        if reason:
            failures[script] = reason
    command = "make bench" + ("" if name == "default" else f" BENCH_ARGS=--{name}")
    elapsed = time.perf_counter() - started
    # Kept with the results, so that `python -m bench.report` renders the same page again.
    run = {"command": command, "elapsed_s": elapsed, "failures": failures, "machine": machine_info(),
           "date": datetime.date.today().isoformat()}
    (args.results / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    args.out.write_text(render(args.results, run), encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
