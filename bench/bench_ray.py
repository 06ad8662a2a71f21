"""`convert --engine ray` against `convert --engine local --num-proc N` at equal CPUs, in steady state.

Both engines convert the benchmark workload (camera JPEGs, `--image-size 512`) at two sizes, round after round;
the steady-state rate of each is the extra rows of the larger run over its extra seconds, which cancels what a
run pays once (Ray's actors starting and loading their media loaders, the local pool spawning). Ray's start-up
is reported on its own: `ray.init` of a Ray of this machine, and the actors' start-up as each run reports it.
Both write the same bytes (tests/test_ray.py), so only the time differs.

Scaling across nodes is not measured here: that needs a real cluster (see BENCHMARKS.md).

Example:
    python -m bench.bench_ray --rows 96,480 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BENCH_DIR, Figure, interleaved, median, print_figures, ratio_text, write_results
from bench.make_workload import DEFAULT_PHOTOS, JSONL_NAME, make_workload

ROWS_PER_UNIT = 32  # both engines: several units per worker even for the smaller run


def convert_seconds(workload: Path, out: Path, engine: str, cpus: int, startups: list[float]) -> float:
    from vlmdata.convert import convert
    from vlmdata.media import MediaOptions
    from vlmdata.media.options import Resize

    parallel = {"num_workers": cpus} if engine == "ray" else {"num_proc": cpus}
    started = time.perf_counter()
    summary = convert([str(workload / JSONL_NAME)], out, format="jsonl", rows_per_unit=ROWS_PER_UNIT,
                      media_options=MediaOptions(resize=Resize.parse("512")), engine=engine, overwrite=True,
                      progress=False, **parallel)
    elapsed = time.perf_counter() - started
    if summary.rows_rejected:
        raise RuntimeError(f"convert rejected rows: {dict(summary.rejects_by_reason)}")
    if engine == "ray":
        startups.append(summary.engine["startup_s"])
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def run(rows: tuple[int, int], repeats: int, photos: int = DEFAULT_PHOTOS) -> tuple[list[Figure], dict]:
    import ray

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    small, large = (make_workload(count, photos, quiet=True) for count in rows)
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    init_s = time.perf_counter() - started
    startups: list[float] = []
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="ray-") as scratch:
            out = Path(scratch) / "normalised"
            variants = {
                f"{engine}.{size}": (lambda engine=engine, workload=workload:
                                     convert_seconds(workload, out, engine, cpus, startups))
                for engine in ("local", "ray") for size, workload in (("small", small), ("large", large))
            }
            convert_seconds(small, out, "local", cpus, [])  # untimed: imports, photos into the page cache
            samples = interleaved(variants, repeats)
    finally:
        ray.shutdown()
    seconds = {name: median(values) for name, values in samples.items()}
    steady = {engine: (rows[1] - rows[0]) / (seconds[f"{engine}.large"] - seconds[f"{engine}.small"])
              for engine in ("local", "ray")}
    ratio = steady["ray"] / steady["local"]
    where = (f"{rows[0]} and {rows[1]} rows of camera JPEGs, --image-size 512, {ROWS_PER_UNIT} rows a unit; "
             f"steady state = extra rows / extra seconds of the larger run; {cpus} CPUs for each engine")
    figures = [
        Figure("ray.convert.steady", f"convert --engine ray ({cpus} workers) vs --engine local --num-proc {cpus}",
               f"{steady['ray']:.1f} rows/s", f"local: {steady['local']:.1f} rows/s", ratio, ratio_text(ratio),
               "≥ 0.9x", ratio >= 0.9, where),
        Figure("ray.startup", "Ray's fixed start-up cost",
               f"ray.init {init_s:.1f} s + actors {median(startups):.1f} s a run",
               note="a Ray of this machine started by the run; actors: started and their media loaders made"),
    ]
    details = {"rows": rows, "cpus": cpus, "median_seconds": seconds, "samples_seconds": samples,
               "steady_rows_per_s": steady, "ray_init_s": init_s, "actor_startup_s": startups}
    return figures, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", default="96,480", help="the two run sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "ray.json")
    args = parser.parse_args(argv)
    small, large = (int(count) for count in args.rows.split(","))
    figures, details = run((small, large), args.repeats)
    write_results(args.json, figures, details)
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
