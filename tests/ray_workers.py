"""Convert workers that fail the way cluster workers do, for tests/test_ray.py; Ray's actors import them from
here (the tests put the repository on their PYTHONPATH).

Run as a script, it is a driver that gets killed: it converts a JSON Lines file on a Ray cluster with a worker
that hangs from its third work unit on, so that the test can kill it once two units are written.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vlmdata.convert import ConvertStage, ConvertWorker
from vlmdata.media import MediaOptions
from vlmdata.readers import ReaderOptions


@dataclass(frozen=True)
class DyingWorker(ConvertWorker):
    """Kills its own process (as the out-of-memory killer would) on the batch holding the row `row_id`: the
    first time only when `once_marker` is set (the file records that it happened), else every time."""

    row_id: str = ""
    once_marker: str = ""

    def process(self, batch, loader):
        if any(row.id == self.row_id for row in batch):
            if not self.once_marker:
                os._exit(1)
            if not os.path.exists(self.once_marker):
                Path(self.once_marker).write_text("killed", encoding="utf-8")
                os._exit(1)
        return super().process(batch, loader)


@dataclass(frozen=True)
class HangingWorker(ConvertWorker):
    """Works as ConvertWorker until the batch holding the row `row_id`, on which it waits for good."""

    row_id: str = ""

    def process(self, batch, loader):
        if any(row.id == self.row_id for row in batch):
            time.sleep(3600)
        return super().process(batch, loader)


class StageWith(ConvertStage):
    """ConvertStage with another worker: the same settings, so the same job for a rerun."""

    def __init__(self, sources: list[str], make_worker, media_options: MediaOptions):
        super().__init__(sources, "auto", ReaderOptions(), media_options)
        self.make_worker = make_worker

    def worker(self, scratch_dir: Path) -> ConvertWorker:
        return self.make_worker(super().worker(scratch_dir).media_options)


if __name__ == "__main__":
    from vlmdata.ray_engine import RayExecutor
    from vlmdata.stage import run_stage

    source, out, address, hang_at = sys.argv[1:5]
    stage = StageWith([source], lambda options: HangingWorker(options, row_id=hang_at), MediaOptions())
    run_stage(stage, out, RayExecutor(address, num_workers=2), rows_per_unit=16, progress=False)
