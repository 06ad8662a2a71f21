"""Worker processes: order kept for any count, and a worker that dies ends the run instead of hanging it."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from vlmdata.errors import FatalError
from vlmdata.parallel import InBackground, batched, map_in_order


def square(batch: list[int]) -> list[int]:
    return [value * value for value in batch]


def die_on_seven(batch: list[int]) -> list[int]:
    if 7 in batch:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    return batch


def test_results_come_back_in_input_order_for_any_number_of_workers():
    expected = [square(batch) for batch in batched(range(50), 4)]
    assert list(map_in_order(square, batched(range(50), 4), 1)) == expected
    assert list(map_in_order(square, batched(range(50), 4), 2)) == expected


def test_a_worker_killed_from_outside_ends_the_run_with_a_clear_error():
    with pytest.raises(FatalError, match="worker process died"):
        list(map_in_order(die_on_seven, batched(range(20), 2), 2))


def test_background_calls_run_in_order_and_at_most_one_waits():
    started = threading.Event()
    release = threading.Event()
    done: list[int] = []

    def slow(index: int) -> None:
        started.set()
        release.wait(5)
        done.append(index)

    with InBackground(pending=1) as background:
        background.submit(slow, 0)  # runs on the thread: the caller goes on at once
        assert started.wait(5) and done == []
        release.set()
        for index in range(1, 6):
            background.submit(done.append, index)
            assert len(done) >= index  # every call but the last has finished: at most one waits
    assert done == [0, 1, 2, 3, 4, 5]


def test_an_error_in_a_background_call_is_raised_in_the_caller():
    def fail(message: str) -> None:
        raise OSError(message)

    with pytest.raises(OSError, match="disk full"):
        with InBackground() as background:
            background.submit(fail, "disk full")
            background.submit(lambda: None)
            background.submit(lambda: None)
