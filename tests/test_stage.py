"""The stage runner on a stage of its own: every row written or rejected, whatever the executor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest

from vlmdata.errors import FatalError, RowError
from vlmdata.executors import LocalExecutor
from vlmdata.parallel import batched
from vlmdata.rows import Reject
from vlmdata.stage import BatchWorker, Stage, StageSummary, WrittenRow, guarded, run_stage

FEATURES = datasets.Features({"text": datasets.Value("string"), "id": datasets.Value("string"),
                              "source": datasets.Value("string")})
# Row 3's text has no UTF-8 form, which only Arrow notices; row 5 raises a RowError; row 7 something unforeseen.
TEXTS = [f"row {number}" for number in range(20)]
TEXTS[3] = "lone \ud800 surrogate"


@dataclass(frozen=True)
class UpperWorker(BatchWorker[int, str]):
    suffix: str
    features = FEATURES

    def setup(self) -> str:
        return self.suffix

    def process(self, batch: list[int], suffix: str) -> list[WrittenRow | Reject]:
        return [guarded("numbers", str(number), "read", lambda progress, n=number: self._row(n, suffix, progress))
                for number in batch]

    def _row(self, number: int, suffix: str, progress) -> WrittenRow:
        progress.step = "normalise"
        if number == 5:
            raise RowError("five is not allowed")
        if number == 7:
            return {}["missing"]
        columns = {"text": TEXTS[number].upper() + suffix, "id": str(number), "source": "numbers"}
        return WrittenRow(columns, {"images": number % 2})


class UpperStage(Stage[StageSummary]):
    name = "upper"

    def batches(self):
        return batched(range(len(TEXTS)), 3)

    def features(self):
        return FEATURES

    def worker(self, scratch_dir: Path) -> UpperWorker:
        return UpperWorker("!")

    def summary(self, out_dir: str) -> StageSummary:
        return StageSummary(out_dir)

    def settings(self):
        return {"suffix": "!"}

    def metadata(self, summary, executor):
        return {"arguments": executor.describe()}


@pytest.mark.parametrize("num_proc", [1, 2])
def test_every_row_is_written_or_rejected_with_its_step(tmp_path, num_proc):
    summary = run_stage(UpperStage(), tmp_path / "out", LocalExecutor(num_proc), progress=False)

    written = datasets.load_from_disk(str(tmp_path / "out"))
    assert written["id"] == [str(n) for n in range(20) if n not in (3, 5, 7)]
    assert written["text"][:2] == ["ROW 0!", "ROW 1!"]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["stage"]) for r in rejects] == [("3", "write"), ("5", "normalise"), ("7", "normalise")]
    assert rejects[0]["reason"].startswith("cannot be written: ")
    assert rejects[1]["reason"] == "five is not allowed"
    assert rejects[2]["reason"] == "unexpected KeyError: 'missing'"
    assert (summary.rows_read, summary.rows_written, summary.rows_rejected) == (20, 17, 3)
    assert summary.media["images"] == sum(n % 2 for n in range(20) if n not in (3, 5, 7))
    metadata = json.loads((tmp_path / "out" / "vlmdata.json").read_text())
    assert metadata["stage"] == "upper" and metadata["arguments"]["num_proc"] == num_proc
    assert metadata["summary"]["rows_rejected"] == 3 and metadata["summary"]["images"] == summary.media["images"]


def test_strict_stops_at_the_first_reject_and_leaves_no_output(tmp_path):
    with pytest.raises(FatalError, match="row 3 of numbers was rejected \\(write\\)"):
        run_stage(UpperStage(), tmp_path / "out", LocalExecutor(1), strict=True, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
