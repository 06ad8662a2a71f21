"""Worker processes: order kept for any count, and a worker that dies ends the run instead of hanging it;
background threads: order kept, memory bounded, errors raised where they are waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from vlmdata.errors import FatalError
from vlmdata.executors import openmp_threads_wait_passively
from vlmdata.parallel import InBackground, batched, computed_ahead, map_in_order


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


def torch_threads(batch: list[int]):
    import pyarrow as pa
    import torch

    from vlmdata.stage import BatchResult, Tally

    return BatchResult(pa.table({}), [], Tally(rows_read=torch.get_num_threads()))


def test_each_local_worker_gets_its_share_of_the_cores(tmp_path):
    from vlmdata.executors import LocalExecutor
    from vlmdata.stage import work_units

    executor = LocalExecutor(2)
    share = executor.threads_per_process()
    assert share == max(1, len(os.sched_getaffinity(0)) // 2)
    results = list(executor.map(torch_threads, work_units(batched(range(8), 2), 3), tmp_path))
    assert {result.tally.rows_read for result in results} == {share}
    assert [result.ends_unit for result in results] == [False, False, True, True]


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


def test_items_are_computed_one_ahead_of_the_caller_and_in_order():
    computed: list[int] = []
    seen = []
    for item, future in computed_ahead(lambda value: computed.append(value) or value * 10, range(6)):
        assert future.result() == item * 10
        # The caller holds `item`; the thread works on the next one at most, never further.
        assert computed[-1] <= item + 1
        seen.append(item)
    assert seen == list(range(6)) and computed == list(range(6))


def test_an_error_computed_ahead_is_raised_for_its_own_item_only():
    def decode(value: int) -> int:
        if value == 2:
            raise ValueError("row 2 is damaged")
        return value

    outcomes = []
    for item, future in computed_ahead(decode, range(4)):
        try:
            outcomes.append(future.result())
        except ValueError as error:
            outcomes.append(str(error))
    assert outcomes == [0, 1, "row 2 is damaged", 3]


def test_openmp_threads_are_asked_to_sleep_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    openmp_threads_wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    openmp_threads_wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_command_line_imports_no_torch_before_tokenize_sets_openmp_up():
    # OpenMP reads its settings when torch is imported: an import of torch by the CLI would make them too late.
    code = "import sys, vlmdata.cli, vlmdata.recipe; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
