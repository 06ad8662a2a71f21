"""The pack planner: every row in exactly one pack, capacities held, the same plan for the same seed and epoch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from vlmdata.errors import FatalError
from vlmdata.pack_plan import PackOptions, media_token_counts, padding_fraction, plan_packs

# A spread like the benchmark workload's: many short rows, some long ones.
LENGTHS = np.random.default_rng(7).integers(20, 900, 3000)
MEDIA = np.random.default_rng(8).integers(0, 300, 3000)


@pytest.mark.parametrize("window", [1, 50, 1000, 10_000])
def test_every_row_is_in_exactly_one_pack_and_capacities_hold(window):
    options = PackOptions(pack_length=2048, media_budget=600, window=window)
    plan = plan_packs(LENGTHS, options, seed=3, media=MEDIA)

    rows = [row for pack in plan.packs for row in pack]
    assert sorted(rows) == list(range(len(LENGTHS)))
    assert all(LENGTHS[pack].sum() <= 2048 for pack in plan.packs)
    assert all(MEDIA[pack].sum() <= 600 for pack in plan.packs)
    assert plan.pack_tokens == [int(LENGTHS[pack].sum()) for pack in plan.packs]


def test_the_plan_is_the_same_for_a_seed_and_epoch_and_changes_with_either():
    options = PackOptions(pack_length=2048, window=200)
    plan = plan_packs(LENGTHS, options, seed=1, epoch=0)

    assert plan_packs(LENGTHS, options, seed=1, epoch=0).packs == plan.packs
    assert plan_packs(LENGTHS, options, seed=2, epoch=0).packs != plan.packs
    assert plan_packs(LENGTHS, options, seed=1, epoch=1).packs != plan.packs


def test_windows_carry_open_packs_forward():
    # With one row per window, only packs kept open across windows can ever hold two rows.
    lengths = np.array([6, 2, 6, 2, 6, 2])
    plan = plan_packs(lengths, PackOptions(pack_length=8, window=1), seed=0)

    assert len(plan.packs) == 3 and all(lengths[pack].sum() == 8 for pack in plan.packs)


def test_best_fit_decreasing_fills_the_packs_of_a_realistic_spread():
    plan = plan_packs(LENGTHS, PackOptions(pack_length=4096), seed=0)

    assert plan.fill_ratio > 0.97
    lower_bound = int(np.ceil(LENGTHS.sum() / 4096))
    assert len(plan.packs) <= lower_bound + 2


def test_a_row_longer_than_the_pack_length_is_named():
    with pytest.raises(FatalError, match=r"Row 1 \('long'\) has 50 tokens, more than the pack length 40"):
        plan_packs(np.array([10, 50, 20]), PackOptions(pack_length=40), seed=0, row_ids=["a", "long", "c"])


def test_a_row_over_the_media_budget_is_named():
    with pytest.raises(FatalError, match=r"Row 0 holds 30 media tokens, more than the pack media budget 20"):
        plan_packs(np.array([10, 10]), PackOptions(pack_length=40, media_budget=20), seed=0, media=np.array([30, 0]))


def test_media_tokens_are_counted_per_row_from_the_arrow_column():
    column = pa.chunked_array([pa.array([[1, 9, 9, 2], [3]], pa.list_(pa.int32())), pa.array([[9, 8, 9]], pa.list_(pa.int32()))])

    assert media_token_counts(column, {9, 8}).tolist() == [2, 0, 3]


def test_padding_fraction_pads_each_batch_to_its_longest():
    assert padding_fraction([4, 2, 3, 3], batch_size=2) == pytest.approx(1 - 12 / 14)
    assert padding_fraction([4, 2, 3], batch_size=1) == 0.0
