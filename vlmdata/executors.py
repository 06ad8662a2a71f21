"""Where a stage's batches run: the executor seam (docs/architecture.md, "Executors").

`run_stage` hands an executor a picklable batch worker and the stage's input batches; the executor returns the
worker's results in input order, so the output never depends on how or where the batches ran.
`LocalExecutor` runs them in this process or in a pool of local processes. An engine that runs them elsewhere
(a Ray cluster) is one more class with the same `map`, whose remote workers may write their shard files
themselves and return the results that describe them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from vlmdata.parallel import map_in_order

Batch = TypeVar("Batch")
Result = TypeVar("Result")


class Executor(Protocol):
    """Runs `worker` on every batch and yields the results in the order of `batches`."""

    def map(self, worker: Callable[[Batch], Result], batches: Iterable[Batch]) -> Iterator[Result]: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class LocalExecutor:
    """Batches run in this process (`num_proc=1`) or in `num_proc` spawned processes of this machine.

    With several processes, each gets an equal share of the cores for its OpenMP (torch) threads: N workers
    that each ran a thread per core would spend their time switching between threads.
    """

    num_proc: int = 1

    def map(self, worker: Callable[[Batch], Result], batches: Iterable[Batch]) -> Iterator[Result]:
        return map_in_order(worker, batches, self.num_proc, threads_per_process=self.threads_per_process())

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
