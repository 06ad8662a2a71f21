"""What training shows and records as it runs: a progress bar, a JSON-lines loss log, a text log, the rows each
rank saw."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

from tqdm import tqdm
from transformers import TrainerCallback

LOG_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch")


class LossLog(TrainerCallback):
    """Appends one JSON line per logged step to `path` (main process only).

    On resume the lines after the checkpoint's step are dropped first, so the log continues the curve
    instead of repeating its tail.
    """

    def __init__(self, path: Path, resume_step: int | None = None, step_tokens=None):
        self.path = path
        self.step_tokens = step_tokens  # a `StepTokens`: each loss record gets the label tokens it averaged
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        record = {"step": state.global_step, **{key: logs[key] for key in LOG_KEYS if key in logs}}
        if "loss" in record and self.step_tokens is not None:
            record["trained_tokens"] = self.step_tokens.take()  # taken on every process, so each count restarts
        if not state.is_world_process_zero or ("loss" not in record and "eval_loss" not in record):
            return  # the end-of-training summary is kept in metrics.json
        record["tokens_seen"] = state.num_input_tokens_seen
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


class TextLog(TrainerCallback):
    """Appends the run's records, one readable line each, to `path` (main process only).

    Every log the Trainer makes is written (step losses, evals, the end-of-run summary), so the file holds what
    the progress bar showed after the terminal is gone. A resumed run appends to the same file.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            start = f"resumed at step {state.global_step}" if state.global_step else "started"
            self._write(f"training {start}: {state.max_steps} steps, {args.world_size} process(es), "
                        f"{args.per_device_train_batch_size} rows per device per batch, "
                        f"{args.gradient_accumulation_steps} batch(es) per step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        values = " ".join(f"{key}={_number(value)}" for key, value in logs.items())
        self._write(f"step {state.global_step}/{state.max_steps} {values}")

    def _write(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(f"{datetime.now().isoformat(sep=' ', timespec='seconds')} {line}\n")


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class ProgressBar(TrainerCallback):
    """One bar for the run: step, loss, steps per second and tokens per second."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit=" steps", dynamic_ncols=True)
            self.started, self.first_step, self.first_tokens = time.monotonic(), state.global_step, state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]
            self._show(state)  # the Trainer logs a step's loss after on_step_end: show it now, not a step late
        if self.bar is not None and logs and "eval_loss" in logs:
            self.bar.write(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")

    def on_step_end(self, args, state, control, **kwargs):
        self._show(state)

    def _show(self, state) -> None:
        if self.bar is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        postfix = {
            "loss": f"{self.loss:.4f}" if self.loss is not None else "-",
            "steps/s": f"{(state.global_step - self.first_step) / elapsed:.2f}",
            "tokens/s": f"{(state.num_input_tokens_seen - self.first_tokens) / elapsed:.0f}",
        }
        advanced = state.global_step - self.bar.n
        self.bar.set_postfix(postfix, refresh=not advanced)
        if advanced:
            self.bar.update(advanced)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class RowLog(TrainerCallback):
    """Writes the ids of the rows this process trained on, in order, to `folder/rows-rank<N>.txt`."""

    def __init__(self, folder: Path, seen_ids: list[str]):
        self.folder, self.seen_ids = folder, seen_ids

    def on_train_end(self, args, state, control, **kwargs):
        rank = args.process_index
        (self.folder / f"rows-rank{rank}.txt").write_text("".join(f"{row_id}\n" for row_id in self.seen_ids))
