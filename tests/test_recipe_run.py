"""`vlmdata run` and `--config`: the seeds' axolotl config runs end to end, offline, and reruns only what changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.fixture_data import build_once, hub_offline
from tests.tokenize_fixtures import tiny_model
from vlmdata.cli import cli
from vlmdata.recipe import Recipe, load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[1]
VLMDATA = str(Path(sys.executable).parent / "vlmdata")

# The example of the seeds' multimodal documentation, as written there (its comments included).
SEED_CONFIG = r"""
processor_type: AutoProcessor
skip_prepare_dataset: true
remove_unused_columns: false # leave columns in place as they are needed to handle image embeddings during training
sample_packing: false # not yet supported with multimodal
chat_template: # see in next section
# example dataset
datasets:
  - path: HuggingFaceH4/llava-instruct-mix-vsft
    type: chat_template
    split: train[:1%]
    field_messages: messages
# (optional) if doing lora, only finetune the Language model,
# leave the vision model and vision tower frozen
# load_in_8bit: true
adapter: lora
lora_target_modules: 'model.language_model.layers.[\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj'
# (optional) if you want to resize images to a set size
image_size: 512
image_resize_algorithm: bilinear
"""


@pytest.fixture
def seed_recipe(tmp_path_factory, tmp_path, monkeypatch) -> Path:
    """The seed config pointed at the tiny Gemma 3 and the llava-instruct-mix fixture, with a few steps."""
    hub_offline(monkeypatch)
    llava = build_once(tmp_path_factory) / "llava_instruct_mix"
    text = SEED_CONFIG.replace("HuggingFaceH4/llava-instruct-mix-vsft", str(llava))
    # The fixture's train split holds 12 rows, of which 1% is none.
    text = text.replace("split: train[:1%]", "split: train")
    text = f"base_model: {tiny_model('gemma3')}\n" + text
    text += f"chat_template: gemma3\nmax_steps: 2\nmicro_batch_size: 2\noutput_dir: {tmp_path / 'lora'}\n"
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace("chat_template: # see in next section\n", ""))
    return path


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def stage_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.split(":")[0] in ("convert", "tokenize", "train")]


def test_the_seed_config_runs_end_to_end_and_again_only_where_settings_changed(seed_recipe, tmp_path):
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 0, output
    assert stage_lines(output) == [
        "convert: running, as it has not run yet",
        "tokenize: running, as an earlier stage ran",
        "train: running, as an earlier stage ran",
    ]
    normalised, shards, lora = tmp_path / "lora-prepared" / "normalised", tmp_path / "lora-prepared" / "shards", tmp_path / "lora"
    rows = datasets.load_from_disk(str(normalised))
    assert len(rows) == 12 and rows[0]["images"][0].size == (512, 512)  # image_size 512, letterboxed
    assert json.loads((shards / "vlmdata.json").read_text())["chat_template"] == "gemma3"
    trained = json.loads((lora / "vlmdata.json").read_text())
    assert trained["steps"] == 2 and trained["options"]["batch_size"] == 2
    assert trained["options"]["adapter"]["lora_target_modules"].startswith("model.language_model.layers.")
    assert (lora / "adapter_model.safetensors").is_file()
    adapter_written = (lora / "adapter_model.safetensors").stat().st_mtime_ns

    code, output = run("run", seed_recipe, "--quiet")
    assert code == 0, output
    assert stage_lines(output) == [
        f"convert: skipped, {normalised} is complete for these settings",
        f"tokenize: skipped, {shards} is complete for these settings",
        f"train: skipped, {lora} is complete for these settings",
    ]
    assert (lora / "adapter_model.safetensors").stat().st_mtime_ns == adapter_written

    seed_recipe.write_text(seed_recipe.read_text().replace("max_steps: 2", "max_steps: 3"))
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 0, output
    assert stage_lines(output)[:2] == [
        f"convert: skipped, {normalised} is complete for these settings",
        f"tokenize: skipped, {shards} is complete for these settings",
    ]
    assert stage_lines(output)[2] == "train: running, as its settings changed (max_steps: 2 -> 3)"
    assert json.loads((lora / "vlmdata.json").read_text())["steps"] == 3


def test_a_recipe_runs_from_python_and_the_command_line_finds_its_stages_done(seed_recipe, tmp_path):
    seed_recipe.write_text(seed_recipe.read_text() + "report_to: none\n")
    lines = []
    result = run_recipe(seed_recipe, quiet=True, echo=lines.append)
    prepared, lora = tmp_path / "lora-prepared", tmp_path / "lora"
    assert [(stage.name, stage.ran, stage.reason, stage.out_dir) for stage in result.stages.values()] == [
        ("convert", True, "it has not run yet", str(prepared / "normalised")),
        ("tokenize", True, "an earlier stage ran", str(prepared / "shards")),
        ("train", True, "an earlier stage ran", str(lora)),
    ]
    convert, tokenize, train = (result.stages[name].summary for name in ("convert", "tokenize", "train"))
    assert convert.rows_written == 12 and tokenize.rows_written == len(datasets.load_from_disk(str(prepared / "shards")))
    assert train.steps == 2 and train.last_loss is not None
    assert json.loads((lora / "vlmdata.json").read_text())["options"]["report_to"] == "none"
    assert not (lora / "logs").exists()
    # What `vlmdata run` prints, through echo: each stage's line and summary, then the folders.
    assert stage_lines("\n".join(lines)) == ["convert: running, as it has not run yet",
                                            "tokenize: running, as an earlier stage ran",
                                            "train: running, as an earlier stage ran"]
    assert f"Converted 12 of 12 rows in {convert.elapsed_s:.1f} s -> {prepared / 'normalised'}" in lines
    assert f"Trained 2 steps -> {lora}" in lines
    assert lines[-4:] == [f"Recipe {seed_recipe} done:", f"  normalised dataset  {prepared / 'normalised'}",
                          f"  token shards        {prepared / 'shards'}", f"  trained model       {lora}"]

    # The command line finds every stage complete for the same settings, and prints what Python is given.
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 0, output
    skipped = []
    result = run_recipe(seed_recipe, echo=skipped.append)
    assert output.splitlines() == skipped
    assert [(stage.ran, stage.summary) for stage in result.stages.values()] == [(False, None)] * 3
    assert result.stages["train"].reason == f"{lora} is complete for these settings"

    # A Recipe changed in Python: only training runs again.
    recipe = load_recipe(seed_recipe)
    result = run_recipe(Recipe(recipe.source, {**recipe.values, "max_steps": 3}), quiet=True, echo=lambda line: None)
    assert [stage.ran for stage in result.stages.values()] == [False, False, True]
    assert result.stages["train"].reason == "its settings changed (max_steps: 2 -> 3)"
    assert result.stages["train"].summary.steps == 3


def test_a_changed_data_key_reruns_its_stage_and_every_later_one(seed_recipe, tmp_path):
    # Convert and tokenize only: training is covered above, and a folder of something else stops the run.
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "notes.txt").write_text("mine")
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 1
    assert f"error: {tmp_path / 'lora'} exists and holds no output of train;" in output
    assert (tmp_path / "lora" / "notes.txt").read_text() == "mine"

    seed_recipe.write_text(seed_recipe.read_text().replace("image_size: 512", "image_size: 32"))
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 1
    assert stage_lines(output)[:2] == [
        'convert: running, as its settings changed (image_size: "512" -> "32")',
        "tokenize: running, as an earlier stage ran",
    ]
    assert datasets.load_from_disk(str(tmp_path / "lora-prepared" / "normalised"))[0]["images"][0].size == (32, 32)


def test_config_fills_a_command_and_options_given_override_it(seed_recipe, tmp_path):
    seed_recipe.write_text(seed_recipe.read_text().replace("image_resize_algorithm: bilinear", "image_resize_algorithm: bicubic"))
    out = tmp_path / "override"
    code, output = run("convert", "--config", seed_recipe, "-o", out, "--image-size", "40x30", "--quiet")
    assert code == 0, output
    arguments = json.loads((out / "vlmdata.json").read_text())["arguments"]
    assert arguments["media"]["resize"] == {"width": 40, "height": 30, "mode": "exact", "algorithm": "bicubic"}
    assert arguments["reader"]["split"] == "train" and arguments["sources"][0].endswith("llava_instruct_mix")
    assert datasets.load_from_disk(str(out))[0]["images"][0].size == (40, 30)


def test_a_recipe_mistake_is_one_sentence_and_a_non_zero_exit(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_model: gemma3\nlora_rank: 8\n")
    for args in (["run", recipe], ["train", "--config", recipe]):
        result = subprocess.run([VLMDATA, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert result.stderr.strip() == f"error: {recipe}: unknown key 'lora_rank'; did you mean 'lora_r'?"
    recipe.write_text("base_model: gemma3\nlr_scheduler: rex\n")
    result = subprocess.run([VLMDATA, "run", str(recipe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f'error: {recipe}: lr_scheduler is "rex", but it takes one of linear, cosine')


def test_run_needs_a_model_and_data(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base_model: gemma3\n")
    code, output = run("run", recipe)
    assert code == 1
    assert output.strip() == f"error: {recipe} has no datasets, which running the whole pipeline needs."


def test_tokenize_and_train_take_their_options_from_config_and_flags_override_it(seed_recipe, tmp_path):
    text = seed_recipe.read_text().replace("max_steps: 2", "max_steps: 3")
    seed_recipe.write_text(text + "sequence_len: 512\ntrain_on_inputs: true\nlora_r: 8\n")
    code, output = run("convert", "--config", seed_recipe, "--quiet")
    assert code == 0, output
    prepared = tmp_path / "lora-prepared"

    # The recipe says train_on_inputs (train on all) and sequence_len; --train-on on the command line wins.
    code, output = run("tokenize", "--config", seed_recipe, "--train-on", "last", "--quiet")
    assert code == 0, output
    arguments = json.loads((prepared / "shards" / "vlmdata.json").read_text())["arguments"]
    assert arguments["data"] == str(prepared / "normalised")
    assert arguments["model"] == str(tiny_model("gemma3")) and arguments["chat_template"] == "gemma3"
    assert arguments["max_length"] == 512
    assert arguments["train_on"] == "last"

    out = tmp_path / "override-lora"
    code, output = run("train", "--config", seed_recipe, "-o", out, "--max-steps", "1", "--lora-r", "4", "--quiet")
    assert code == 0, output
    trained = json.loads((out / "vlmdata.json").read_text())
    assert trained["shards"] == str(prepared / "shards")
    assert trained["steps"] == 1 and trained["options"]["max_steps"] == 1
    assert trained["options"]["adapter"]["lora_r"] == 4
    assert trained["options"]["batch_size"] == 2  # micro_batch_size, from the file
    assert trained["options"]["adapter"]["lora_target_modules"].startswith("model.language_model.layers.")
    assert not (tmp_path / "lora").exists()  # the recipe's output_dir, overridden by -o


def test_an_incomplete_stage_output_is_run_again_not_skipped(seed_recipe, tmp_path):
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 0, output
    prepared, lora = tmp_path / "lora-prepared", tmp_path / "lora"

    # A killed training run leaves its folder without vlmdata.json, which training writes last.
    (lora / "vlmdata.json").unlink()
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 0, output
    assert stage_lines(output)[2] == "train: running, as its output is not complete"
    assert json.loads((lora / "vlmdata.json").read_text())["steps"] == 2

    # A killed tokenize leaves only shards.partial, without the state.json that is written last.
    shards, partial = prepared / "shards", prepared / "shards.partial"
    shards.rename(partial)
    (partial / "state.json").unlink()
    code, output = run("run", seed_recipe, "--quiet")
    assert code == 0, output
    assert stage_lines(output) == [
        f"convert: skipped, {prepared / 'normalised'} is complete for these settings",
        f"tokenize: running, as its output is not complete ({partial} was left by an interrupted run)",
        "train: running, as an earlier stage ran",
    ]
    assert not partial.exists() and len(datasets.load_from_disk(str(shards))) > 0


@pytest.mark.slow
def test_the_tiny_gemma3_recipe_runs_end_to_end(tmp_path_factory, tmp_path):
    # The real file that `make demo` runs, with only its paths moved: to the fixtures built for this session
    # and to folders under tmp_path.
    text = (ROOT / "recipes" / "tiny-gemma3.yaml").read_text()
    out = tmp_path / "demo"
    moves = {
        "fixtures/data/models/gemma3": str(tiny_model("gemma3")),
        "fixtures/data/llava_instruct_mix": str(build_once(tmp_path_factory) / "llava_instruct_mix"),
        "out/demo/lora-gemma3": str(out / "lora-gemma3"),
        "out/demo/llava": str(out / "llava"),
        "out/demo/shards-gemma3": str(out / "shards-gemma3"),
    }
    for before, after in moves.items():
        assert before in text, before
        text = text.replace(before, after)
    recipe = tmp_path / "tiny-gemma3.yaml"
    recipe.write_text(text)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([VLMDATA, "run", str(recipe), "--quiet"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split(":")[0] for line in stage_lines(result.stdout)] == ["convert", "tokenize", "train"]

    normalised = datasets.load_from_disk(str(out / "llava"))
    assert len(normalised) == 12 and normalised[0]["images"][0].size == (64, 64)
    shards = datasets.load_from_disk(str(out / "shards-gemma3"))
    written = json.loads((out / "shards-gemma3" / "vlmdata.json").read_text())["summary"]["rows_written"]
    assert len(shards) == written > 0 and {"input_ids", "labels", "pixel_values"} <= set(shards.column_names)
    lora = out / "lora-gemma3"
    assert json.loads((lora / "vlmdata.json").read_text())["steps"] == 5
    assert json.loads((lora / "adapter_config.json").read_text())["r"] == 8
    weights = load_file(str(lora / "adapter_model.safetensors"))
    assert weights and all("lora_" in name for name in weights)
