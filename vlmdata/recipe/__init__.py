"""Recipes: one YAML file, in axolotl's keys, that gives the options of convert, tokenize and train.

`run_recipe` (and `vlmdata run RECIPE`) runs the three stages from it, skipping those whose output is complete
for the same settings; `--config RECIPE` fills the options of a single command.

Example:
    >>> recipe = load_recipe("recipes/tiny-gemma3.yaml")  # doctest: +SKIP
    >>> command_options(recipe)["train"]["max_steps"]  # doctest: +SKIP
    5
    >>> run_recipe(recipe, quiet=True).stages["train"].ran  # doctest: +SKIP
    True
"""

from vlmdata.recipe.load import Recipe, load_recipe, parse_recipe, require
from vlmdata.recipe.options import COMMANDS, Folders, command_options, folders
from vlmdata.recipe.record import may_replace, record_settings, stage_settings, why_stale
from vlmdata.recipe.run import RecipeResult, StageResult, run_recipe

__all__ = [
    "COMMANDS",
    "Folders",
    "Recipe",
    "RecipeResult",
    "StageResult",
    "command_options",
    "folders",
    "load_recipe",
    "may_replace",
    "parse_recipe",
    "record_settings",
    "require",
    "run_recipe",
    "stage_settings",
    "why_stale",
]
