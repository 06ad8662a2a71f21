"""The stages' options: the commands and `run_recipe` share their defaults, build the same arguments from them and
record the same settings, so a folder made one way is complete for the other."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vlmdata.cli import cli
from vlmdata.errors import FatalError
from vlmdata.media.options import MediaOptions
from vlmdata.readers.options import ReaderOptions
from vlmdata.recipe import command_options, load_recipe, parse_recipe, run_recipe, stage_settings
from vlmdata.recipe.record import fingerprint
from vlmdata.recipe.stages import (
    CONVERT_DEFAULTS,
    STAGES,
    TRAIN_DEFAULTS,
    OptionError,
    convert_arguments,
    tokenize_arguments,
    train_arguments,
)

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"convert": {"sources", "out_dir"}, "tokenize": {"data", "out_dir", "model"}, "train": {"shards", "out_dir"}}
# Every key a recipe can set, each to a value other than the command's default.
EVERY_KEY = {
    "base_model": "gemma3",
    "chat_template": "gemma3",
    "datasets": [{"path": "data/rows.jsonl", "split": "train[:50%]", "field_messages": "conversation"}],
    "image_size": [640, 480],
    "image_resize_algorithm": "lanczos",
    "sequence_len": 1024,
    "train_on_inputs": True,
    "adapter": "qlora",
    "lora_r": 8,
    "lora_alpha": 32,
    "lora_dropout": 0.1,
    "lora_target_modules": ["q_proj", "v_proj"],
    "micro_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "num_epochs": 3,
    "max_steps": 7,
    "learning_rate": "1e-4",
    "lr_scheduler": "linear",
    "warmup_steps": 2,
    "bf16": False,
    "gradient_checkpointing": True,
    "seed": 3,
    "val_set_size": 2,
    "eval_steps": 5,
    "logging_steps": 2,
    "save_steps": 4,
    "save_total_limit": 1,
    "report_to": "none",
    "vlmdata": {"format": "jsonl", "resize_mode": "fit", "audio_sampling_rate": 24000, "truncate": "text",
                "num_proc": 2, "strict": True, "train_vision": True},
}


def test_the_commands_declare_every_option_but_the_required_ones_with_the_stages_defaults():
    for name, stage in STAGES.items():
        command = cli.commands[name]
        context = click.Context(command)
        params = [param for param in command.params if param.expose_value]
        assert {param.name for param in params if param.required} == REQUIRED[name]
        declared = {param.name: param.get_default(context) for param in params if not param.required}
        # Compared with their types: 1 and 1.0 are equal, but not in the settings' JSON and hash.
        assert {option: (value, type(value)) for option, value in declared.items()} == \
            {option: (value, type(value)) for option, value in stage.defaults.items()}, name


@pytest.mark.parametrize("document", [EVERY_KEY, "tiny-gemma3.yaml", "mllama.yaml"], ids=["every key", "tiny", "mllama"])
def test_a_recipe_records_the_settings_its_commands_resolve_from_it(document, tmp_path):
    """The settings `vlmdata run` recorded before it called the stages directly: each command's options as click
    resolves them with the recipe as defaults. Output folders made then must still read as complete."""
    recipe = load_recipe(ROOT / "recipes" / document) if isinstance(document, str) else parse_recipe(document)
    options = command_options(recipe)
    # The paths click checks must exist for it to resolve them.
    options["tokenize"]["data"] = str(tmp_path)
    if isinstance(document, dict):
        options["convert"]["media_root"] = str(tmp_path)
    for name, stage in STAGES.items():
        with cli.commands[name].make_context(name, [], default_map=options[name]) as context:
            resolved = stage_settings(context.params)
        settings = stage_settings({**stage.defaults, **options[name]})
        assert settings == resolved and fingerprint(settings) == fingerprint(resolved), name


def test_the_defaults_are_the_stage_functions_own():
    from vlmdata.convert import convert
    from vlmdata.tokenize import tokenize
    from vlmdata.train import TrainOptions, train

    arguments = convert_arguments({**CONVERT_DEFAULTS, "sources": ("a.jsonl",), "out_dir": "out"})
    assert arguments["media_options"] == MediaOptions() and arguments["reader_options"] == ReaderOptions()
    arguments = train_arguments({**TRAIN_DEFAULTS, "shards": "shards", "out_dir": "out"})
    assert arguments["options"] == TrainOptions()
    tokenize_call = tokenize_arguments({**STAGES["tokenize"].defaults, "data": "d", "out_dir": "o", "model": "m"})
    calls = [(convert, convert_arguments({**CONVERT_DEFAULTS, "sources": ["a"], "out_dir": "o"})),
             (tokenize, tokenize_call), (train, arguments)]
    for function, built in calls:
        signature = inspect.signature(function)
        assert set(built) == set(signature.parameters), function.__name__
        for name, parameter in signature.parameters.items():
            if parameter.default is not inspect.Parameter.empty and name not in ("reader_options", "media_options"):
                assert built[name] == parameter.default, (function.__name__, name)


@pytest.mark.parametrize(
    "stage, changes, option, message",
    [
        ("convert", {"resize_mode": "fit"}, None, "--resize-mode needs --image-size."),
        ("convert", {"image_size": "0x5"}, "--image-size", "image size must be positive, got '0x5'"),
        ("convert", {"media_root": "no/such/folder"}, "--media-root", "the media root no/such/folder is not a folder."),
        ("train", {"load_in_4bit": True, "load_in_8bit": True}, None, "--load-in-4bit and --load-in-8bit exclude each other."),
        ("train", {"resume": True, "resume_from": "out/checkpoints/checkpoint-2"}, None, "--resume and --resume-from exclude each other."),
    ],
)
def test_options_that_cannot_run_are_refused_before_the_stage_starts(stage, changes, option, message):
    build = {"convert": convert_arguments, "train": train_arguments}[stage]
    required = {"convert": {"sources": ["a.jsonl"]}, "train": {"shards": "shards"}}[stage]
    with pytest.raises(OptionError) as error:
        build({**STAGES[stage].defaults, **required, "out_dir": "out", **changes})
    assert (str(error.value), error.value.option) == (message, option)


def test_on_the_command_line_they_are_usage_errors(tmp_path):
    result = CliRunner().invoke(cli, ["convert", "a.jsonl", "-o", str(tmp_path / "out"), "--resize-mode", "fit"])
    assert result.exit_code == 2 and "Error: --resize-mode needs --image-size." in result.output
    assert not (tmp_path / "out").exists()


def test_in_a_recipe_they_are_one_sentence_naming_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    recipe.write_text(f"base_model: gemma3\ndatasets:\n  - path: {rows}\noutput_dir: {tmp_path / 'lora'}\n"
                      f"vlmdata:\n  media_root: {tmp_path / 'missing'}\n")
    lines = []
    with pytest.raises(FatalError) as error:
        run_recipe(recipe, quiet=True, echo=lines.append)
    assert str(error.value) == f"{recipe}: the media root {tmp_path / 'missing'} is not a folder."
    assert lines == ["convert: running, as it has not run yet"]
    assert not (tmp_path / "lora-prepared").exists()


def test_tokenize_asks_openmp_threads_to_sleep_before_torch_is_imported(tmp_path):
    # OpenMP reads OMP_WAIT_POLICY once, when torch is first imported; the audit hook sees that import happen.
    code = """
import os, sys
seen = []
def on_import(event, args):
    if event == "import" and args[0] == "torch" and not seen:
        seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.addaudithook(on_import)
from vlmdata.errors import FatalError
from vlmdata.recipe.stages import STAGES
try:
    STAGES["tokenize"].run({**STAGES["tokenize"].defaults, "data": sys.argv[1], "out_dir": sys.argv[2], "model": "gemma3"})
except FatalError:
    pass
print(seen)
"""
    environment = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['PASSIVE']"
