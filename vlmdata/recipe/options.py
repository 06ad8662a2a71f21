"""From a checked recipe to the options of `vlmdata convert`, `tokenize` and `train`.

The options are keyed by the commands' own parameter names, so a command reads them as its defaults
(`--config`) and `run_recipe` runs each stage on them, over the commands' defaults: one meaning of every key,
whichever way it is used.

Example:
    >>> from vlmdata.recipe import parse_recipe
    >>> recipe = parse_recipe({"base_model": "gemma3", "adapter": "qlora", "sequence_len": 2048})
    >>> options = command_options(recipe)
    >>> options["tokenize"]["max_length"], options["train"]["adapter"], options["train"]["load_in_4bit"]
    (2048, 'lora', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmdata.recipe.keys import KEYS, OWN_SECTION
from vlmdata.recipe.load import Recipe

COMMANDS = ("convert", "tokenize", "train")
DEFAULT_OUTPUT_DIR = "./model-out"  # axolotl's


@dataclass(frozen=True)
class Folders:
    """Where each stage of a recipe writes."""

    normalised: str
    shards: str
    output: str


def folders(recipe: Recipe) -> Folders:
    """The output folders of the three stages.

    `output_dir` is the trained model's folder (axolotl's meaning). The prepared data goes under
    `dataset_prepared_path` (by default `<output_dir>-prepared`, beside the model: training replaces its own
    folder whole) as `normalised/` and `shards/`, unless `vlmdata.normalised_dir` / `vlmdata.shards_dir` say
    otherwise.
    """
    values = recipe.values
    output = values.get("output_dir", DEFAULT_OUTPUT_DIR)
    prepared = Path(values.get("dataset_prepared_path", output.rstrip("/\\") + "-prepared"))
    return Folders(
        normalised=values.get(f"{OWN_SECTION}.normalised_dir", str(prepared / "normalised")),
        shards=values.get(f"{OWN_SECTION}.shards_dir", str(prepared / "shards")),
        output=output,
    )


def command_options(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The options a recipe gives each command, by command name and then parameter name.

    Only what the recipe says (and the folders, which always follow from it) is there; every other option
    keeps the command's default. `adapter` is always there: an axolotl config without one trains every weight.
    """
    options: dict[str, dict[str, Any]] = {command: {} for command in COMMANDS}
    where = folders(recipe)
    options["convert"]["out_dir"] = where.normalised
    options["tokenize"].update(data=where.normalised, out_dir=where.shards)
    options["train"].update(shards=where.shards, out_dir=where.output)
    for name, value in recipe.values.items():
        for target in KEYS[name].fills:
            command, parameter = target.split(".")
            options[command][parameter] = value
    options["convert"].update(_dataset_options(recipe.values.get("datasets")))
    options["tokenize"].update(_train_on(recipe.values))
    options["train"].update(_adapter_options(recipe.values.get("adapter", "full")))
    options["train"].update(_attention(recipe.values))
    return options


def _dataset_options(datasets: list[dict[str, Any]] | None) -> dict[str, Any]:
    """`datasets` -> the sources of one convert run (the entries share their split and messages field)."""
    if not datasets:
        return {}
    return {
        "sources": [entry["path"] for entry in datasets],
        "split": datasets[0]["split"],
        "field_messages": datasets[0]["field_messages"],
    }


def _train_on(values: dict[str, Any]) -> dict[str, Any]:
    """axolotl's train_on_inputs: false trains the replies alone, true every text token."""
    if "train_on_inputs" not in values:
        return {}
    return {"train_on": "all" if values["train_on_inputs"] else "assistant"}


ATTENTION_KEYS = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager"}


def _attention(values: dict[str, Any]) -> dict[str, Any]:
    """axolotl's flash_attention, sdp_attention and eager_attention: the one that is true, if any."""
    chosen = [implementation for key, implementation in ATTENTION_KEYS.items() if values.get(key)]
    return {"attn_implementation": chosen[0]} if chosen else {}


def _adapter_options(adapter: str) -> dict[str, Any]:
    """qlora is LoRA on a model loaded in 4 bits."""
    if adapter == "qlora":
        return {"adapter": "lora", "load_in_4bit": True}
    return {"adapter": adapter}
