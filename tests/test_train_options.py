"""`vlmdata train` options: the vision side, bf16, checkpointing, seeds, the progress bar, the run's logs and the
output folder's safety. Each run is a few steps of a tiny model on real shards."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import warnings

import pytest
import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForImageTextToText, TrainerControl, TrainerState
from transformers.integrations import is_tensorboard_available

from tests.test_train import MEMORISE, data_dir, shards  # noqa: F401 (fixtures)
from tests.tokenize_fixtures import tiny_model
from vlmdata.cli import cli
from vlmdata.errors import FatalError
from vlmdata.optional import require
from vlmdata.train import AdapterOptions, TrainOptions, train
from vlmdata.train.callbacks import ProgressBar
from vlmdata.train.model import known_notices_silenced

VISION = ("model.vision_tower.", "model.multi_modal_projector.")
FEW_STEPS = ["--max-steps", "3", "--batch-size", "1", "--learning-rate", "5e-2", "--quiet"]
BF16_ON_THIS_MACHINE = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _quick(**overrides) -> TrainOptions:
    return TrainOptions(**{**dict(max_steps=2, learning_rate=5e-2, report_to="none"), **overrides})


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cli_run(shards, tmp_path_factory):
    """One `vlmdata train --report-to none` run through the command line, with TENSORBOARD_LOGGING_DIR unset."""
    out = tmp_path_factory.mktemp("cli") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
        result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(out), "--seed", "1",
                                          "--report-to", "none", *FEW_STEPS])
        leaked = os.environ.get("TENSORBOARD_LOGGING_DIR")
    assert result.exit_code == 0, result.output
    return out, result, leaked


def test_train_vision_trains_the_vision_side_and_saves_it_while_without_it_stays_bit_identical(shards, tmp_path):
    original = AutoModelForImageTextToText.from_pretrained(tiny_model("gemma3")).state_dict()
    vision = [name for name in original if name.startswith(VISION)]

    frozen = train(str(shards("gemma3")), tmp_path / "frozen", options=_quick(), progress=False)
    after = frozen.model.get_base_model().state_dict()
    assert vision and all(torch.equal(after[name], original[name]) for name in vision)

    out = tmp_path / "vision"
    trained = train(str(shards("gemma3")), out, options=_quick(adapter=AdapterOptions(train_vision=True)), progress=False)
    copies = {name.replace("modules_to_save.default.", ""): parameter for name, parameter
              in trained.model.get_base_model().named_parameters() if "modules_to_save.default." in name}
    assert sorted(copies) == sorted(vision) and all(parameter.requires_grad for parameter in copies.values())
    assert any(not torch.equal(copies[name], original[name]) for name in vision)

    # The trained vision weights travel with the adapter.
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_model("gemma3")), out)
    saved = {name.replace("modules_to_save.default.", ""): tensor for name, tensor
             in reloaded.get_base_model().state_dict().items() if "modules_to_save.default." in name}
    assert all(torch.equal(saved[name], copies[name]) for name in vision)


@pytest.mark.skipif(BF16_ON_THIS_MACHINE, reason="this machine trains in bf16")
def test_bf16_without_a_gpu_is_one_clear_error_and_keeps_the_previous_output(shards, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("the previous run")
    result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(out), "--bf16", "--overwrite", "--quiet"])
    assert result.exit_code == 1
    assert "--bf16 needs a GPU with bfloat16 support" in result.output and "Traceback" not in result.output
    assert (out / "adapter_model.safetensors").read_text() == "the previous run"


def test_a_mistyped_shards_path_with_overwrite_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("the previous run")
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "shrads"), "-o", str(out), "--overwrite", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (out / "adapter_model.safetensors").read_text() == "the previous run"


def test_a_model_folder_that_does_not_exist_is_one_sentence_and_keeps_the_previous_output(shards, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("the previous run")
    missing = tmp_path / "nope"
    result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(out), "--model", str(missing),
                                      "--overwrite", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"error: Cannot load the model {missing}: the model folder {missing} does not exist."
    assert (out / "adapter_model.safetensors").read_text() == "the previous run"


def test_shards_tokenized_for_a_folder_that_has_moved_say_so(shards, tmp_path):
    moved = tmp_path / "shards"
    shutil.copytree(shards("gemma3"), moved)
    metadata = json.loads((moved / "vlmdata.json").read_text())
    metadata["model"]["checkpoint"] = str(tmp_path / "moved-model")
    (moved / "vlmdata.json").write_text(json.dumps(metadata))
    with pytest.raises(FatalError, match=r"the model folder .*moved-model does not exist\. The shards were tokenized"):
        train(str(moved), tmp_path / "out", options=_quick(), progress=False)


@pytest.mark.parametrize("missing, extra, alias", [("peft", "train", "gemma3"), ("accelerate", "train", "gemma3"),
                                                   ("timm", "gemma3n", "gemma3n")])
def test_a_missing_optional_dependency_is_one_sentence_naming_its_extra_before_any_work(
    shards, tmp_path, monkeypatch, missing, extra, alias
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("the previous run")
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ModuleNotFoundError
    result = CliRunner().invoke(cli, ["train", str(shards(alias)), "-o", str(out), "--overwrite", "--quiet"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # no traceback
    line = result.output.strip()
    assert line.startswith("error: ") and line.endswith(
        f"needs {missing}, which is not installed: pip install 'vlmdata[{extra}]'."), line
    assert (out / "adapter_model.safetensors").read_text() == "the previous run"


def test_quantization_without_bitsandbytes_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(FatalError, match=re.escape(
            "--load-in-4bit needs bitsandbytes, which is not installed: pip install 'vlmdata[quantization]'.")):
        require("bitsandbytes", "quantization", "--load-in-4bit")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="quantization needs a CUDA GPU, checked first")
def test_train_with_quantization_without_bitsandbytes_is_one_sentence(shards, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(tmp_path / "out"), "--load-in-4bit"])
    assert result.exit_code == 1
    assert "--load-in-4bit needs bitsandbytes, which is not installed: pip install 'vlmdata[quantization]'." in result.output
    assert not (tmp_path / "out").exists()


def test_a_training_run_shows_none_of_the_known_library_notices(shards, tmp_path):
    # A LoRA on the tied lm_head of Gemma 3, saved at a checkpoint and at the end: every notice would show.
    options = _quick(adapter=AdapterOptions(lora_target_modules=MEMORISE), save_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(str(shards("gemma3")), tmp_path / "out", options=options, progress=False)
    shown = [str(warning.message) for warning in caught]
    for notice in ("is_gradient_checkpointing", "tie_word_embeddings=True", "save_embedding_layers"):
        assert not [message for message in shown if notice in message], notice


def test_only_the_known_library_notices_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with known_notices_silenced():
            warnings.warn("Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`.")
            warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)
            warnings.warn("`is_gradient_checkpointing` is deprecated, as a UserWarning")
            warnings.warn("a real problem", RuntimeWarning)
    assert [str(warning.message) for warning in caught] == [
        "`is_gradient_checkpointing` is deprecated, as a UserWarning", "a real problem"]


def test_one_step_with_gradient_checkpointing_gives_a_finite_loss(shards, tmp_path):
    summary = train(str(shards("gemma3")), tmp_path / "out", options=_quick(max_steps=1, gradient_checkpointing=True),
                    progress=False)
    assert summary.steps == 1 and math.isfinite(summary.first_loss)
    assert summary.model.get_base_model().is_activation_checkpointing


def test_the_same_seed_gives_the_same_losses_and_another_seed_others(shards, cli_run, tmp_path):
    out, _, _ = cli_run
    options = dict(max_steps=3, batch_size=1, learning_rate=5e-2, report_to="none")
    again = tmp_path / "again"
    train(str(shards("gemma3")), again, options=TrainOptions(seed=1, **options), progress=False)
    other = tmp_path / "other"
    train(str(shards("gemma3")), other, options=TrainOptions(seed=2, **options), progress=False)
    assert len(_losses(out)) == 3
    assert _losses(again) == _losses(out)
    assert _losses(other) != _losses(out)


def test_data_loader_workers_give_the_losses_of_the_main_process(shards, cli_run, tmp_path):
    # Worker processes read the rows (zero-copy Arrow views) and collate them: the batches must be the same.
    out, _, _ = cli_run
    options = dict(max_steps=3, batch_size=1, learning_rate=5e-2, report_to="none", seed=1, num_workers=2)
    train(str(shards("gemma3")), tmp_path / "workers", options=TrainOptions(**options), progress=False)
    assert _losses(tmp_path / "workers") == _losses(out)


def test_the_progress_bar_shows_the_steps_loss_steps_per_second_and_tokens_per_second(capsys):
    bar, state, control = ProgressBar(), TrainerState(max_steps=2), TrainerControl()
    bar.on_train_begin(None, state, control)
    for step, loss in enumerate([2.5, 1.25], start=1):
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        bar.on_step_end(None, state, control)
        bar.on_log(None, state, control, logs={"loss": loss})
        postfix = bar.bar.postfix
        assert f"loss={loss:.4f}" in postfix and "steps/s=" in postfix and "tokens/s=" in postfix  # this step's loss
    bar.on_train_end(None, state, control)
    shown = capsys.readouterr().err
    assert "2/2" in shown and "loss=1.2500" in shown and "tokens/s=" in shown


def test_the_command_line_shows_the_progress_bar(shards, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(tmp_path / "out"), "--max-steps", "1",
                                      "--report-to", "none"])
    assert result.exit_code == 0, result.output
    assert "1/1" in result.output and "loss=" in result.output and "tokens/s=" in result.output


def test_train_log_holds_every_step_record(cli_run):
    out, result, _ = cli_run
    lines = (out / "train.log").read_text().splitlines()
    assert "training started: 3 steps" in lines[0]
    for step, loss in enumerate(_losses(out), start=1):
        assert any(f"step {step}/3 loss={loss:.6g} " in line for line in lines), (step, lines)
    assert any("train_runtime=" in line for line in lines)
    assert "train.log" in result.output


def test_report_to_none_writes_no_tensorboard_folder_and_sets_no_environment(cli_run):
    out, _, leaked = cli_run
    assert not (out / "logs").exists()
    assert not list(out.rglob("events.out.tfevents*")) and not list(out.rglob("runs"))
    assert leaked is None  # the folder of one run never reaches the next run in the same process


@pytest.mark.skipif(is_tensorboard_available(), reason="tensorboard is installed")
def test_report_to_tensorboard_without_tensorboard_is_one_clear_error(shards, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(tmp_path / "out"), "--report-to", "tensorboard"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "needs tensorboard, which is not installed: pip install 'vlmdata[tensorboard]'" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not is_tensorboard_available(), reason="tensorboard is not installed")
def test_each_run_in_one_process_writes_tensorboard_events_to_its_own_folder(shards, tmp_path):
    for name in ("first", "second"):
        train(str(shards("gemma3")), tmp_path / name, options=_quick(max_steps=1, report_to="tensorboard"), progress=False)
        assert list((tmp_path / name / "logs").glob("events.out.tfevents*")), name
