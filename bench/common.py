"""What every benchmark script shares: paths, machine facts, interleaved timing, peak memory of a command."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
# Under out/, which git ignores: workloads, processors, stage outputs and results are all rebuilt on demand.
# VLMDATA_BENCH_DIR moves them elsewhere (the smoke tests use a temporary folder).
BENCH_DIR = Path(os.environ.get("VLMDATA_BENCH_DIR") or ROOT / "out" / "bench")
RESULTS_DIR = BENCH_DIR / "results"
FIXTURE_MODELS = ROOT / "fixtures" / "data" / "models"
PYTHON = sys.executable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Figure:
    """One row of the table in BENCHMARKS.md.

    Attributes:
        key: a short stable name (`tokenize.gemma3.floor`).
        what: what was measured, in words.
        value: the measured figure, formatted with its unit.
        baseline: the baseline and its figure, formatted.
        ratio: the measured value over the baseline.
        goal: the goal in words ("≥ 2x"), or "" for a figure given for information.
        met: whether the goal is met; None when there is no goal or nothing was measured.
        note: how it was measured, or why not.
    """

    key: str
    what: str
    value: str
    baseline: str = ""
    ratio: float | None = None
    ratio_text: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""


def write_results(path: str | Path, figures: list[Figure], details: dict[str, Any]) -> None:
    """Saves a script's figures and details as JSON for `bench/report.py`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"figures": [asdict(figure) for figure in figures], "details": details}
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def print_figures(figures: list[Figure]) -> None:
    """One line per figure, for a script run by hand."""
    for figure in figures:
        print(f"{figure.what}: {figure.value} vs {figure.baseline} -> {figure.ratio_text}"
              + (f"; {figure.note}" if figure.note else ""))


def read_results(path: str | Path) -> tuple[list[Figure], dict[str, Any]]:
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    known = {item.name for item in fields(Figure)}
    figures = [Figure(**{key: value for key, value in figure.items() if key in known}) for figure in payload["figures"]]
    return figures, payload["details"]


def machine_info() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine, and the versions that decide the figures."""
    from importlib import metadata

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("vlmdata", "transformers", "datasets", "torch", "torchvision", "pillow", "pyarrow", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Runs every variant `repeats` times, round after round, and returns the seconds each run reported.

    Each callable does its own set-up and returns only the seconds of the measured work. Rounds alternate the
    variants (A B C, A B C, ...) so that a burst of load from another user of the machine hits all of them,
    instead of skewing whichever one happened to run during it.
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            samples[name].append(run())
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Measured:
    """A finished command: its wall time, its peak memory and its exit status."""

    wall_s: float
    peak_rss_bytes: int
    peak_tree_pss_bytes: int
    returncode: int
    stderr_tail: str


def run_measured(command: list[str], env: dict[str, str] | None = None, sample_every_s: float = 0.05) -> Measured:
    """Runs a command and measures its peak resident memory.

    `peak_rss_bytes` is exact: the kernel's high-water mark for the command's process (or its largest waited
    child), read with wait4. `peak_tree_pss_bytes` adds up the proportional set size (PSS) of all processes of
    the command's tree, sampled every `sample_every_s`: what worker processes cost together, with the library
    pages they share counted once (it can miss a spike shorter than the period).
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    tree_peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        try:
            root = psutil.Process(process.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                members = [root, *root.children(recursive=True)]
                total = 0
                for member in members:
                    try:
                        total += member.memory_full_info().pss
                    except psutil.NoSuchProcess:
                        pass
                tree_peak = max(tree_peak, total)
            except psutil.NoSuchProcess:
                return
            stop.wait(sample_every_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr_chunks = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    reader.join()
    stderr = b"".join(stderr_chunks).decode("utf-8", "replace")
    # ru_maxrss is in KiB on Linux.
    peak = usage.ru_maxrss * 1024
    return Measured(wall, peak, tree_peak, process.returncode, stderr[-2000:])


def check(measured: Measured, what: str) -> Measured:
    if measured.returncode != 0:
        raise RuntimeError(f"{what} failed with exit status {measured.returncode}:\n{measured.stderr_tail}")
    return measured


def vlmdata_command(*arguments: str) -> list[str]:
    """The vlmdata command line, run with this interpreter so that it uses the same environment."""
    return [PYTHON, "-m", "vlmdata.cli", *arguments]


def folder_bytes(folder: str | Path, pattern: str = "*.arrow") -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob(pattern) if path.is_file())


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def ratio_text(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}x"
