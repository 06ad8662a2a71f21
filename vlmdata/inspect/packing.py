"""What `vlmdata train --packing` would make of token shards: packs, how full they are, and the padding saved.

The plan is the one training makes for the same pack length and seed (`vlmdata.pack_plan`), from the shards'
`length` column alone; nothing is tokenized or loaded.
"""

from __future__ import annotations

import numpy as np

from vlmdata.errors import FatalError
from vlmdata.inspect.columns import batches
from vlmdata.inspect.detect import SHARDS, Target
from vlmdata.pack_plan import PackOptions, padding_fraction, plan_packs


def packing_lines(target: Target, pack_length: int, seed: int = 42, batch_size: int = 1) -> list[str]:
    """The lines `vlmdata inspect --pack-length N` prints after the statistics."""
    from vlmdata.train.packing import packing_refusal

    if target.kind != SHARDS:
        raise FatalError(f"--pack-length needs token shards; {target.path} is a {target.description}.")
    lengths = np.concatenate([batch.column("length").to_numpy(zero_copy_only=False)
                              for batch in batches(target.data_files, ["length"])] or [np.zeros(0, np.int64)])
    plan = plan_packs(lengths, PackOptions(pack_length=pack_length), seed)
    unpadded = padding_fraction(lengths[np.random.default_rng(seed).permutation(len(lengths))], batch_size)
    lines = [
        f"  packing at {pack_length} tokens (seed {seed}):",
        f"    {len(plan.packs)} packs for {plan.rows} rows, {plan.samples_per_pack:.2f} samples per pack",
        f"    fill ratio {plan.fill_ratio:.1%}, padding {plan.padding_fraction(batch_size):.1%} "
        f"(unpacked batches of {batch_size} rows: {unpadded:.1%} padding, {len(lengths)} sequences)",
    ]
    family = target.metadata.get("model", {}).get("family")
    refusal = packing_refusal(family, pack_length)
    if refusal is not None:
        lines.append(f"    note: {refusal}")
    return lines
