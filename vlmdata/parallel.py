"""Ordered maps over worker processes and threads, with bounded memory: the building blocks of
`vlmdata.executors` and of the stages' background work (decoding the next rows, writing the last batch)."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import TypeVar

from vlmdata.errors import FatalError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Batches in flight per worker: enough to keep workers busy, few enough that memory stays flat on huge sources.
BATCHES_IN_FLIGHT_PER_WORKER = 2


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Groups an iterable into lists of `size` items (the last one may be shorter)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def map_in_order(
    fn: Callable[[Item], Result], items: Iterable[Item], num_proc: int = 1, threads_per_process: int | None = None
) -> Iterator[Result]:
    """Yields `fn(item)` for every item, in input order, computed in `num_proc` processes.

    Unlike `Pool.imap`, which reads its whole input ahead, only a few items per worker are in flight at once.
    The result order never depends on `num_proc`, so the output of a stage is identical however it was run.
    `fn` must be a module-level function (workers are spawned, not forked, so they hold no inherited threads
    or open files). `threads_per_process` caps each worker's OpenMP (torch) threads.

    Raises:
        FatalError: a worker process died (killed, out of memory, a crash in native code); a `Pool` would
            wait for its result forever.
    """
    if num_proc <= 1:
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("spawn")
    start = (os.getpid(), threads_per_process)
    with ProcessPoolExecutor(num_proc, mp_context=context, initializer=_start_worker, initargs=start) as pool:
        pending = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= num_proc * BATCHES_IN_FLIGHT_PER_WORKER:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise FatalError(
                "A worker process died (killed, or out of memory); nothing was written. "
                "Run the same command again, with a lower --num-proc if memory is short."
            ) from None


def computed_ahead(fn: Callable[[Item], Result], items: Iterable[Item], ahead: int = 1) -> Iterator[tuple[Item, Future]]:
    """Yields each item with the Future of `fn(item)`, in order, while up to `ahead` further items are computed on
    a thread of its own.

    For work that leaves the GIL (Pillow decoding an image), so that it runs on another core while the caller
    works on the current item. At most `ahead + 1` results are held at once. A Future's `result()` raises what
    `fn` raised for that item.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="vlmdata-ahead") as thread:
        pending: deque[tuple[Item, Future]] = deque()
        for item in items:
            pending.append((item, thread.submit(fn, item)))
            if len(pending) > ahead:
                yield pending.popleft()
        while pending:
            yield pending.popleft()


class InBackground:
    """Runs calls one at a time, in order, on a thread of its own, while the caller goes on with the next batch.

    Writing a batch (building its Arrow table, writing and syncing the file) spends most of its time outside
    the GIL, so on another core it overlaps with tokenizing the next one. At most `pending` calls wait, which
    bounds the memory they hold; a call's error is raised in the caller, at its next `submit` or at the end of
    the block.

    Example:
        >>> with InBackground() as background:  # doctest: +SKIP
        ...     for table in tables:
        ...         background.submit(writer.write_table, table)
    """

    def __init__(self, pending: int = 1):
        self.pending = pending
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="vlmdata-writer")
        self._futures: deque[Future] = deque()

    def submit(self, fn: Callable[..., object], *args) -> None:
        self._futures.append(self._thread.submit(fn, *args))
        while len(self._futures) > self.pending:
            self._futures.popleft().result()

    def __enter__(self) -> "InBackground":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            while self._futures and exc_type is None:
                self._futures.popleft().result()
        finally:
            self._thread.shutdown(wait=True, cancel_futures=True)


def _start_worker(parent_pid: int, threads: int | None) -> None:
    """Sets a worker's thread count, and ends the worker once its parent is gone: a parent killed with SIGKILL
    cannot tell its workers to stop, and they would otherwise wait for work forever."""
    if threads is not None:
        # Read by OpenMP when torch is first imported, which in a fresh worker comes later, with the first batch.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
