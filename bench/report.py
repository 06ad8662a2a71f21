"""Render the results of the benchmark scripts as BENCHMARKS.md.

Every script writes `out/bench/results/<name>.json` (figures and details); this module turns them into one
table, with the machine, the command, and the notes that explain how each figure was made. Figures that cannot
be measured here are stub rows that say why. Hand-written analysis (profile findings and recommended fixes) lives
in `bench/notes.md` and is copied in as it is, so regenerating the file keeps it.

Example:
    python -m bench.report --results out/bench/results --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from bench.common import RESULTS_DIR, ROOT, Figure, machine_info, read_results

NOTES_FILE = Path(__file__).resolve().parent / "notes.md"
# The order of the table, and the number each group of figures carries in it.
GROUPS = [
    ("1", lambda key: key.startswith("tokenize.") and not key.endswith(".datasets_map")),  # vs the floor
    ("2", lambda key: key.endswith(".datasets_map")),  # vs what users write today
    ("3", lambda key: key.startswith("convert.")),
    ("4", lambda key: key.startswith("memory.")),
    ("5", lambda key: key.startswith("storage.")),
    ("6", lambda key: key.startswith("collate.")),
    ("7", lambda key: key.startswith("video.")),
    ("8", lambda key: key.startswith("packing.")),
    ("9", lambda key: key.startswith("ray.")),
]
STUBS = [
    ("10", Figure("gpu", "GPU figures (training step time, GPU idle time waiting on data)",
                 "not measured: no GPU on this machine")),
]
RESULT_FILES = ["tokenize", "convert", "memory", "storage", "collate", "video", "packing", "ray", "profile"]


def met_text(figure: Figure) -> str:
    if figure.met is None:
        return "—" if not figure.goal else "not measured"
    return "met" if figure.met else "**not met**"


def figure_rows(figures: list[Figure]) -> tuple[list[str], list[str]]:
    """The table lines and the numbered notes of every measured figure and stub."""
    lines, notes = [], []
    for number, belongs in GROUPS:
        group = [figure for figure in figures if belongs(figure.key)]
        for index, figure in enumerate(group):
            label = f"{number}{chr(ord('a') + index)}" if len(group) > 1 else number
            lines.append(f"| {label} | {figure.what} | {figure.value} | {figure.baseline} | {figure.ratio_text} | "
                         f"{figure.goal or '—'} | {met_text(figure)} |")
            if figure.note:
                notes.append(f"- **{label}**: {figure.note}")
    for number, stub in STUBS:
        lines.append(f"| {number} | {stub.what} | {stub.value} | — | — | — | — |")
        if stub.note:
            notes.append(f"- **{number}**: {stub.note}")
    return lines, notes


def profile_section(details: dict) -> list[str]:
    """The top costs of each profiled stage, as the profile script summarised them."""
    lines = ["## Where the time goes (profiles)", ""]
    for stage, summary in details.items():
        lines += [f"`{summary['command']}`: {summary['seconds']:.1f} s wall, profiled with pyinstrument "
                  f"(full report: `{summary['report']}`).", "",
                  "| own time | share | function | called from |", "| --- | --- | --- | --- |"]
        for entry in summary["top"]:
            lines.append(f"| {entry['seconds']:.2f} s | {entry['share']:.0%} | `{entry['function']}` | "
                         f"{'`' + entry['caller'] + '`' if entry['caller'] else ''} |")
        lines.append("")
    return lines


def render(results_dir: Path, run: dict) -> str:
    """The whole page, from the scripts' results and the run's record (`run.json`, written by run_all).

    Args:
        results_dir: the folder of the scripts' JSON results.
        run: "command", and optionally "elapsed_s", "failures", "date" and "machine" (as `machine_info`
            returns it, taken at the end of the run; the current machine when absent).
    """
    command, elapsed_s, failures = run["command"], run.get("elapsed_s"), run.get("failures", {})
    figures, profile = [], None
    for name in RESULT_FILES:
        path = results_dir / f"{name}.json"
        if not path.exists():
            continue
        found, details = read_results(path)
        figures += found
        if name == "profile":
            profile = details
    machine = run.get("machine") or machine_info()
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    lines = [
        "# Benchmarks",
        "",
        "Throughput, memory and shard size of `vlmdata convert` and `vlmdata tokenize`, side by side with the",
        "processor floor and the tools users have today. Every ratio compares two things measured in the same run,",
        "on the same rows, repeated in alternating rounds; each figure is the median of the repetitions.",
        "Regenerate with `make bench` (bigger runs: see the notes); the workload is synthetic, built by",
        "`bench/make_workload.py`.",
        "",
        f"Produced by: `{command}`" + (f" in {elapsed_s / 60:.1f} min" if elapsed_s else "") +
        f" on {run.get('date') or datetime.date.today().isoformat()}.",
        "",
        "| machine | |",
        "| --- | --- |",
        f"| CPU | {machine['cpu_model']} |",
        f"| cores | {machine['cores']} ({machine['usable_cores']} usable), shared with other work: load average "
        f"{' / '.join(str(x) for x in machine['load_average'])} at the end of the run |",
        f"| memory | {machine['ram_gib']} GiB |",
        f"| system | {machine['os']}, Python {machine['python']} |",
        f"| libraries | {versions} |",
        "",
        "## Figures",
        "",
        "| # | figure | measured | baseline (same run) | ratio (measured / baseline) | goal | |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    table, notes = figure_rows(figures)
    lines += table
    if failures:
        lines += ["", "Scripts that failed in this run (their figures are missing):", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in failures.items()]
    lines += ["", "### How each figure was measured", "", *notes, ""]
    if profile:
        lines += profile_section(profile)
    if NOTES_FILE.exists():
        lines += [NOTES_FILE.read_text(encoding="utf-8").rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    # Written by run_all: the command, its duration and the scripts that failed.
    run_path = args.results / "run.json"
    run = json.loads(run_path.read_text()) if run_path.exists() else {"command": "make bench"}
    args.out.write_text(render(args.results, run), encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
