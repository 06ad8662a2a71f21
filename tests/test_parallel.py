"""Worker processes: order kept for any count, and a worker that dies ends the run instead of hanging it."""

from __future__ import annotations

import os
import signal

import pytest

from vlmdata.errors import FatalError
from vlmdata.parallel import batched, map_in_order


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
