"""Recipes: each axolotl key fills the option it means, and every mistake is named in one sentence."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from vlmdata.cli import cli
from vlmdata.errors import FatalError
from vlmdata.models.registry import FAMILIES
from vlmdata.recipe import command_options, folders, load_recipe, parse_recipe
from vlmdata.recipe.checks import BadValue
from vlmdata.recipe.keys import KEYS

ROOT = Path(__file__).resolve().parents[1]
SEED_REGEX = r"model.language_model.layers.[\d]+.(mlp|cross_attn|self_attn).(up|down|gate|q|k|v|o)_proj"


def options_of(document: dict) -> dict[str, dict]:
    return command_options(parse_recipe(document, "test.yaml"))


# (recipe key, value as YAML gives it, command, option, the option's value)
MAPPING = [
    ("base_model", "gemma3", "tokenize", "model", "gemma3"),
    ("base_model", "gemma3", "train", "model", "gemma3"),
    ("chat_template", "qwen2_vl", "tokenize", "chat_template", "qwen2_vl"),
    ("chat_template", "tokenizer_default", "tokenize", "chat_template", None),
    ("image_size", 512, "convert", "image_size", "512"),
    ("image_size", [640, 480], "convert", "image_size", "640x480"),
    ("image_size", "640x480", "convert", "image_size", "640x480"),
    ("image_resize_algorithm", "bicubic", "convert", "resize_algorithm", "bicubic"),
    ("sequence_len", 2048, "tokenize", "max_length", 2048),
    ("train_on_inputs", False, "tokenize", "train_on", "assistant"),
    ("train_on_inputs", True, "tokenize", "train_on", "all"),
    ("lora_r", 32, "train", "lora_r", 32),
    ("lora_alpha", 64, "train", "lora_alpha", 64),
    ("lora_dropout", 0.1, "train", "lora_dropout", 0.1),
    ("lora_target_modules", SEED_REGEX, "train", "lora_target_modules", SEED_REGEX),
    ("micro_batch_size", 4, "train", "batch_size", 4),
    ("gradient_accumulation_steps", 8, "train", "gradient_accumulation_steps", 8),
    ("num_epochs", 3, "train", "epochs", 3.0),
    ("max_steps", 100, "train", "max_steps", 100),
    ("learning_rate", "2e-4", "train", "learning_rate", 2e-4),
    ("learning_rate", 0.0002, "train", "learning_rate", 2e-4),
    ("lr_scheduler", "linear", "train", "lr_scheduler", "linear"),
    ("warmup_steps", 10, "train", "warmup_steps", 10),
    ("bf16", True, "train", "bf16", True),
    ("bf16", False, "train", "bf16", False),
    ("bf16", "auto", "train", "bf16", None),
    ("gradient_checkpointing", True, "train", "gradient_checkpointing", True),
    ("seed", 7, "train", "seed", 7),
    ("val_set_size", 0.05, "train", "val_set_size", 0.05),
    ("eval_steps", 50, "train", "eval_steps", 50),
    ("logging_steps", 5, "train", "logging_steps", 5),
    ("save_steps", 200, "train", "save_steps", 200),
    ("save_total_limit", 3, "train", "save_total_limit", 3),
    ("report_to", "none", "train", "report_to", "none"),
    ("report_to", "tensorboard", "train", "report_to", "tensorboard"),
    ("output_dir", "out/model", "train", "out_dir", "out/model"),
]


@pytest.mark.parametrize("key, value, command, option, expected", MAPPING, ids=lambda v: str(v)[:24])
def test_each_axolotl_key_fills_the_option_it_means(key, value, command, option, expected):
    assert options_of({key: value})[command][option] == expected


@pytest.mark.parametrize(
    "key, value, command, option, expected",
    [
        ("normalised_dir", "data/normalised", "convert", "out_dir", "data/normalised"),
        ("normalised_dir", "data/normalised", "tokenize", "data", "data/normalised"),
        ("shards_dir", "data/shards", "tokenize", "out_dir", "data/shards"),
        ("shards_dir", "data/shards", "train", "shards", "data/shards"),
        ("format", "mmiu", "convert", "source_format", "mmiu"),
        ("media_root", "/data/images", "convert", "media_root", "/data/images"),
        ("audio_sampling_rate", 24000, "convert", "audio_sampling_rate", 24000),
        ("video_fps", 1.5, "convert", "video_fps", 1.5),
        ("video_frames", 8, "convert", "video_frames", 8),
        ("max_video_frames", 16, "convert", "max_video_frames", 16),
        ("max_video_seconds", 30, "convert", "max_video_seconds", 30),
        ("video_as_images", True, "tokenize", "video_as_images", True),
        ("train_on", "last", "tokenize", "train_on", "last"),
        ("truncate", "text", "tokenize", "truncate", "text"),
        ("num_proc", 4, "convert", "num_proc", 4),
        ("num_proc", 4, "tokenize", "num_proc", 4),
        ("strict", True, "convert", "strict", True),
        ("strict", True, "tokenize", "strict", True),
        ("train_vision", True, "train", "train_vision", True),
    ],
)
def test_vlmdata_keys_fill_their_options(key, value, command, option, expected):
    assert options_of({"vlmdata": {key: value}})[command][option] == expected


def test_datasets_are_the_sources_of_one_convert_run():
    convert = options_of({"datasets": [
        {"path": "HuggingFaceH4/llava-instruct-mix-vsft", "type": "chat_template", "split": "train[:1%]",
         "field_messages": "messages"},
        {"path": "more/data.parquet", "split": "train[:1%]"},
    ]})["convert"]
    assert convert["sources"] == ["HuggingFaceH4/llava-instruct-mix-vsft", "more/data.parquet"]
    assert (convert["split"], convert["field_messages"]) == ("train[:1%]", "messages")


@pytest.mark.parametrize(
    "document, adapter, four_bit, eight_bit",
    [
        ({"adapter": "lora"}, "lora", None, None),
        ({"adapter": "qlora"}, "lora", True, None),
        ({"adapter": "lora", "load_in_4bit": True}, "lora", True, None),
        ({"adapter": "lora", "load_in_8bit": True}, "lora", None, True),
        ({"adapter": "full"}, "full", None, None),
        ({"adapter": None}, "full", None, None),
        ({}, "full", None, None),  # axolotl trains every weight when a config names no adapter
    ],
)
def test_adapter_and_quantization(document, adapter, four_bit, eight_bit):
    train = options_of(document)["train"]
    assert (train["adapter"], train.get("load_in_4bit"), train.get("load_in_8bit")) == (adapter, four_bit, eight_bit)


def test_a_list_of_lora_targets_matches_module_names_as_peft_does():
    regex = options_of({"lora_target_modules": ["q_proj", "v_proj"]})["train"]["lora_target_modules"]
    for name in ("q_proj", "model.language_model.layers.0.self_attn.q_proj", "model.vision_tower.v_proj"):
        assert re.fullmatch(regex, name), name
    for name in ("model.language_model.layers.0.self_attn.k_proj", "model.xq_proj", "q_proj.lora"):
        assert not re.fullmatch(regex, name), name


def test_sample_packing_packs_training_rows_into_sequences_of_the_sequence_length():
    options = options_of({"sample_packing": True, "sequence_len": 2048})
    assert options["train"]["packing"] is True
    assert options["tokenize"]["max_length"] == 2048  # the pack length then defaults to the shards' max length
    assert options_of({"sample_packing": False})["train"]["packing"] is False


def test_keys_that_mean_nothing_here_fill_nothing():
    no_ops = {"processor_type": "AutoProcessor", "skip_prepare_dataset": True, "remove_unused_columns": False,
              "strict": False, "wandb_project": None, "fp16": False, "tf32": None}
    assert options_of(no_ops) == options_of({})


def test_folders_follow_output_dir_and_dataset_prepared_path():
    assert folders(parse_recipe({})) == folders(parse_recipe({"output_dir": "./model-out"}))
    where = folders(parse_recipe({"output_dir": "out/lora"}))
    assert (where.normalised, where.shards, where.output) == ("out/lora-prepared/normalised", "out/lora-prepared/shards", "out/lora")
    where = folders(parse_recipe({"output_dir": "out/lora", "dataset_prepared_path": "last_run_prepared"}))
    assert (where.normalised, where.shards) == ("last_run_prepared/normalised", "last_run_prepared/shards")
    options = options_of({"output_dir": "out/lora"})
    assert options["convert"]["out_dir"] == options["tokenize"]["data"] == "out/lora-prepared/normalised"
    assert options["tokenize"]["out_dir"] == options["train"]["shards"] == "out/lora-prepared/shards"


@pytest.mark.parametrize(
    "document, message",
    [
        ({"lora_rank": 8}, "test.yaml: unknown key 'lora_rank'; did you mean 'lora_r'?"),
        ({"micro_batch": 2}, "test.yaml: unknown key 'micro_batch'; did you mean 'micro_batch_size'?"),
        ({"train_on": "last"}, "test.yaml: unknown key 'train_on'; did you mean 'vlmdata.train_on' (vlmdata's own keys go under vlmdata:)?"),
        ({"vlmdata": {"numproc": 2}}, "test.yaml: unknown key 'vlmdata.numproc'; did you mean 'vlmdata.num_proc'?"),
        ({"vlmdata": {"lora_r": 2}}, "test.yaml: unknown key 'vlmdata.lora_r'; did you mean 'lora_r' (axolotl's keys go at the top level)?"),
        ({"datasets": [{"path": "x", "splt": "train"}]}, "test.yaml: unknown key 'datasets[0].splt'; did you mean 'datasets[0].split'?"),
        ({"zzz": 1}, "test.yaml: unknown key 'zzz'; the Recipes section of the README lists every key."),
    ],
)
def test_an_unknown_key_is_named_with_the_closest_known_key(document, message):
    with pytest.raises(FatalError) as error:
        parse_recipe(document, "test.yaml")
    assert str(error.value) == message


@pytest.mark.parametrize(
    "document, message",
    [
        ({"lr_scheduler": "rex"}, 'lr_scheduler is "rex", but it takes one of linear, cosine, constant,'),
        ({"report_to": "wandb"}, 'report_to is "wandb", but it takes one of none, tensorboard, all.'),
        ({"lora_r": 0}, "lora_r is 0, but it takes a whole number of at least 1."),
        ({"lora_r": True}, "lora_r is true, but it takes a whole number of at least 1."),
        ({"lora_dropout": 1.5}, "lora_dropout is 1.5, but it takes a number at least 0 and at most 1."),
        ({"learning_rate": "fast"}, 'learning_rate is "fast", but it takes a number at least 0.'),
        ({"bf16": "maybe"}, 'bf16 is "maybe", but it takes true, false or auto.'),
        ({"image_size": "big"}, 'image_size is "big", but it takes a size in pixels: N, WxH or [W, H].'),
        ({"adapter": "llama-adapter"}, 'adapter is "llama-adapter", but it takes one of lora, qlora, full.'),
        ({"processor_type": "Gemma3Processor"}, 'processor_type is "Gemma3Processor", but it takes one of AutoProcessor.'),
        ({"chat_template": "chatml"}, 'chat_template is "chatml", but it takes one of gemma3, gemma3n,'),
        ({"lora_target_modules": "(open"}, 'lora_target_modules is "(open", but it takes a valid regex'),
        ({"datasets": [{"path": "x", "type": "alpaca"}]}, 'datasets[0].type is "alpaca", but it takes one of chat_template.'),
        ({"datasets": {"path": "x"}}, 'datasets is {"path": "x"}, but it takes a list of datasets'),
        ({"vlmdata": {"train_on": "replies"}}, 'vlmdata.train_on is "replies", but it takes one of assistant, all, last.'),
        ({"sample_packing": "yes"}, 'sample_packing is "yes", but it takes true or false.'),
        ({"optimizer": "adamw_bnb_8bit"}, 'optimizer is "adamw_bnb_8bit", but vlmdata does not support optimizer; remove it or leave it empty.'),
        ({"datasets": [{"split": "train"}]}, "datasets[0] has no path"),
        ({"datasets": [{"path": "a", "split": "train"}, {"path": "b", "split": "test"}]},
         'datasets[1].split is "test" but datasets[0].split is "train"; the datasets of a recipe are converted together'),
        ({"adapter": "qlora", "load_in_8bit": True}, "load_in_8bit is true but the model is loaded in 4 bits"),
        ({"adapter": "full", "load_in_4bit": True}, "a quantized model cannot be trained in full"),
        ({"train_on_inputs": True, "vlmdata": {"train_on": "last"}}, "train_on_inputs and vlmdata.train_on both say"),
        ({"vlmdata": {"resize_mode": "fit"}}, "vlmdata.resize_mode needs image_size."),
    ],
)
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(document, message):
    with pytest.raises(FatalError) as error:
        parse_recipe(document, "test.yaml")
    assert str(error.value).startswith("test.yaml: " + message)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("lora_r: 8\nlora_r: 16\n", "is not valid YAML: the key 'lora_r' appears twice at line 2, column 1."),
        ("datasets: [one\n", "is not valid YAML:"),
        ("- base_model: gemma3\n", "must be a YAML mapping of keys to values, like an axolotl config."),
    ],
)
def test_a_file_that_is_no_recipe_is_one_sentence(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(FatalError) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path} {message}")
    assert "\n" not in str(error.value)


FAMILY_RECIPES = sorted(FAMILIES)
# LFM2's attention layers name their output projection out_proj.
ATTENTION_PROJECTIONS = {"lfm2_vl": {"q_proj", "k_proj", "v_proj", "out_proj"}}


@pytest.mark.parametrize("alias", FAMILY_RECIPES)
def test_each_family_recipe_has_the_family_checkpoint_template_and_seed_settings(alias):
    recipe = load_recipe(ROOT / "recipes" / f"{alias}.yaml")
    family = FAMILIES[alias]
    assert recipe.values["base_model"] == family.default_checkpoint
    assert recipe.values["chat_template"] == family.template_name
    assert recipe.values["datasets"] == [{"path": "HuggingFaceH4/llava-instruct-mix-vsft", "type": "chat_template",
                                          "split": "train[:1%]", "field_messages": "messages"}]
    assert (recipe.values["adapter"], recipe.values["image_size"], recipe.values["image_resize_algorithm"]) == ("lora", "512", "bilinear")
    assert recipe.values["sample_packing"] is False


@pytest.mark.parametrize("alias", FAMILY_RECIPES)
def test_each_family_recipe_adapts_the_language_model_and_nothing_else(alias):
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from tests.tokenize_fixtures import tiny_model

    pattern = re.compile(load_recipe(ROOT / "recipes" / f"{alias}.yaml").values["lora_target_modules"])
    config = AutoConfig.from_pretrained(tiny_model(alias))  # outside: a stale fixture is built with real weights
    with torch.device("meta"):  # the architecture of the tiny checkpoint, without its weights
        model = AutoModelForImageTextToText.from_config(config)
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    matched = [name for name in linear if pattern.fullmatch(name)]
    # SmolVLM2 calls its language model text_model.
    assert matched and all("language_model" in name or "text_model" in name for name in matched)
    assert {name.rsplit(".", 1)[1] for name in matched} >= ATTENTION_PROJECTIONS.get(alias, {"q_proj", "k_proj", "v_proj",
                                                                                           "o_proj"})


def test_the_tiny_recipe_points_at_the_bundled_fixtures():
    recipe = load_recipe(ROOT / "recipes" / "tiny-gemma3.yaml")
    assert recipe.values["base_model"] == "fixtures/data/models/gemma3"
    assert recipe.values["datasets"][0]["path"] == "fixtures/data/llava_instruct_mix"
    assert recipe.values["max_steps"] <= 10


def test_the_keys_fill_options_the_commands_have_with_the_same_choices():
    from vlmdata.labels import TRAIN_ON, TRUNCATE
    from vlmdata.media.options import RESIZE_ALGORITHMS, RESIZE_MODES
    from vlmdata.readers import FORMATS
    from vlmdata.train.run import REPORTERS, SCHEDULERS

    params = {name: {param.name: param for param in cli.commands[name].params} for name in ("convert", "tokenize", "train")}
    for key in KEYS.values():
        for target in key.fills:
            command, option = target.split(".")
            assert option in params[command], (key.name, target)
    # Each list as the module that owns it defines it: what the stage itself accepts.
    choices = {
        ("lr_scheduler", "train", "lr_scheduler"): SCHEDULERS,
        ("report_to", "train", "report_to"): REPORTERS,
        ("image_resize_algorithm", "convert", "resize_algorithm"): RESIZE_ALGORITHMS,
        ("vlmdata.resize_mode", "convert", "resize_mode"): RESIZE_MODES,
        ("vlmdata.format", "convert", "source_format"): ("auto", *FORMATS),
        ("vlmdata.train_on", "tokenize", "train_on"): TRAIN_ON,
        ("vlmdata.truncate", "tokenize", "truncate"): TRUNCATE,
    }
    for (key, command, option), values in choices.items():
        param_type = params[command][option].type
        assert isinstance(param_type, click.Choice) and tuple(param_type.choices) == values, (command, option)
        with pytest.raises(BadValue) as error:
            KEYS[key].check("no-such-choice")
        assert str(error.value) == f"one of {', '.join(values)}", key


def recipes_section() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Recipes"):]
    return section[: section.index("\n## ", 1)]


def test_the_readme_example_is_a_complete_recipe():
    import yaml

    example = recipes_section().split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe = parse_recipe(yaml.safe_load(example), "README.md")
    assert {"base_model", "datasets", "adapter", "output_dir", "vlmdata.train_on"} <= set(recipe.values)


def test_the_readme_documents_every_key():
    section = recipes_section()
    for name in list(KEYS) + ["datasets[].path", "datasets[].type", "datasets[].split", "datasets[].field_messages"]:
        bare = name.split(".", 1)[1] if name.startswith("vlmdata.") or name.startswith("datasets[]") else name
        assert f"`{bare}`" in section, name


def test_axolotls_attention_keys_choose_the_attention_implementation():
    assert options_of({"flash_attention": True})["train"]["attn_implementation"] == "flash_attention_2"
    assert options_of({"sdp_attention": True, "flash_attention": False})["train"]["attn_implementation"] == "sdpa"
    assert "attn_implementation" not in options_of({"flash_attention": False})["train"]
    with pytest.raises(FatalError, match="flash_attention and eager_attention are both true"):
        parse_recipe({"flash_attention": True, "eager_attention": True}, "test.yaml")
