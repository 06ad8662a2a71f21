"""Where a stage's batches run: the executor seam (docs/architecture.md, "Executors").

`run_stage` hands an executor a picklable batch worker and the stage's work units (consecutive batches); the
executor returns the worker's results in input order, so the output never depends on how or where the batches
ran. `LocalExecutor` runs the batches in this process or in a pool of local processes and returns their tables
for this process to write. `vlmdata.ray_engine.RayExecutor` runs whole units on a Ray cluster, whose workers
write each unit's shard files themselves and return the `WrittenUnit`s that describe them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vlmdata.errors import FatalError
from vlmdata.optional import require
from vlmdata.parallel import map_in_order

if TYPE_CHECKING:
    from vlmdata.stage import BatchResult, WorkUnit, WrittenUnit

# A work unit is this many consecutive rows, and its written rows are one shard file (more if it passes the
# shard size): set before the run, so that the files are the same whichever engine ran the units and however
# many workers.
ROWS_PER_UNIT = 256


class Executor(Protocol):
    """Runs `worker` on every batch of every unit; yields, in input order, a `BatchResult` per batch (the last of
    a unit marked `ends_unit`) or a `WrittenUnit` per unit whose files a worker wrote into `units_dir`."""

    # Whether a rerun after a killed run keeps the units already written (see ArrowFolderWriter's `job`).
    resumes: bool

    def map(self, worker: Callable, units: Iterable[WorkUnit], units_dir: Path) -> Iterator[BatchResult | WrittenUnit]: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class LocalExecutor:
    """Batches run in this process (`num_proc=1`) or in `num_proc` spawned processes of this machine.

    With several processes, each gets an equal share of the cores for its OpenMP (torch) threads: N workers
    that each ran a thread per core would spend their time switching between threads.
    """

    num_proc: int = 1
    resumes = False

    def map(self, worker: Callable[[list], BatchResult], units: Iterable[WorkUnit], units_dir: Path) -> Iterator[BatchResult]:
        ends: deque[bool] = deque()

        def batches() -> Iterator[list]:
            for unit in units:
                for number, batch in enumerate(unit.batches):
                    ends.append(number == len(unit.batches) - 1)
                    yield batch

        for result in map_in_order(worker, batches(), self.num_proc, threads_per_process=self.threads_per_process()):
            result.ends_unit = ends.popleft()
            yield result

    def threads_per_process(self) -> int | None:
        if self.num_proc <= 1:
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.num_proc)

    def describe(self) -> dict:
        return {"engine": "local", "num_proc": self.num_proc}


def openmp_threads_wait_passively() -> None:
    """Asks OpenMP (torch) threads to sleep between operations instead of spinning on their cores, where the
    decoding and writing threads and the other worker processes want them (bench/notes.md has the figures).

    OpenMP reads the setting when torch is first imported, so this must run before; spawned workers inherit
    it. A value the user set is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


ENGINES = ("local", "ray")


def make_executor(engine: str = "local", num_proc: int = 1, ray_address: str | None = None,
                  num_workers: int | None = None) -> Executor:
    """The executor of `--engine`, refusing the options of the other engine."""
    if engine not in ENGINES:
        raise FatalError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
    if num_proc < 1:
        raise FatalError(f"--num-proc must be at least 1, got {num_proc}.")
    if engine == "local":
        if ray_address is not None or num_workers is not None:
            raise FatalError("--ray-address and --num-workers are options of --engine ray.")
        return LocalExecutor(num_proc)
    if num_proc != 1:
        raise FatalError("--num-proc is an option of --engine local; with --engine ray, --num-workers sets the workers.")
    if num_workers is not None and num_workers < 1:
        raise FatalError(f"--num-workers must be at least 1, got {num_workers}.")
    require("ray", "ray", "--engine ray")  # before any work, rather than once the output folder is made
    from vlmdata.ray_engine import RayExecutor

    return RayExecutor(ray_address, num_workers)
