"""Running a recipe: convert, tokenize and train in turn, each skipped when its output folder is complete and was
made with the same settings; once a stage runs, every stage after it runs too.

Example:
    >>> result = run_recipe("recipes/tiny-gemma3.yaml", quiet=True)  # doctest: +SKIP
    >>> [(stage.name, stage.ran) for stage in result.stages.values()]  # doctest: +SKIP
    [('convert', True), ('tokenize', True), ('train', True)]
    >>> result.stages["train"].summary.last_loss  # doctest: +SKIP
    1.9876
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlmdata.errors import FatalError
from vlmdata.recipe.load import Recipe, load_recipe, require
from vlmdata.recipe.options import COMMANDS, command_options
from vlmdata.recipe.record import may_replace, record_settings, stage_settings, why_stale
from vlmdata.recipe.stages import STAGES, OptionError

FOLDER_LABELS = {"convert": "normalised dataset", "tokenize": "token shards", "train": "trained model"}


@dataclass(frozen=True)
class StageResult:
    """What one stage of a recipe did.

    Attributes:
        name: "convert", "tokenize" or "train".
        out_dir: its output folder.
        ran: False when its output was already complete for these settings.
        reason: why it ran ("its settings changed (max_steps: 2 -> 3)") or why not ("out/lora is complete for
            these settings"), as the run printed it.
        summary: the stage's ConvertSummary, TokenizeSummary or TrainSummary when it ran; None when skipped.
    """

    name: str
    out_dir: str
    ran: bool
    reason: str
    summary: Any = None


@dataclass(frozen=True)
class RecipeResult:
    """What a recipe run did: the recipe, and each stage's result by stage name, in the order they ran."""

    recipe: Recipe
    stages: dict[str, StageResult]


def run_recipe(
    path_or_recipe: str | os.PathLike | Recipe, *, quiet: bool = False, echo: Callable[[str], Any] = print
) -> RecipeResult:
    """Runs the stages of a recipe that are not already done, as `vlmdata run RECIPE` does.

    Args:
        path_or_recipe: a recipe file, or a Recipe from `load_recipe` or `parse_recipe`.
        quiet: no progress bars.
        echo: called with each line `vlmdata run` prints: what each stage does and why, the summary of each
            stage that ran, and the output folders.

    Raises:
        FatalError: the recipe is not valid or lacks base_model or datasets, a stage's output folder holds
            something else (it is never deleted), or a stage fails.
    """
    recipe = path_or_recipe if isinstance(path_or_recipe, Recipe) else load_recipe(path_or_recipe)
    require(recipe, "base_model", "datasets")
    recipe_options = command_options(recipe)
    results: dict[str, StageResult] = {}
    earlier_stage_ran = False
    for name in COMMANDS:
        stage = STAGES[name]
        options = {**stage.defaults, **recipe_options[name], "quiet": quiet}
        settings = stage_settings(options)
        out = options["out_dir"]
        reason = "an earlier stage ran" if earlier_stage_ran else why_stale(out, name, settings)
        if reason is None:
            results[name] = StageResult(name, out, ran=False, reason=f"{out} is complete for these settings")
            echo(f"{name}: skipped, {results[name].reason}")
            continue
        if not may_replace(out, name):
            raise FatalError(f"{out} exists and holds no output of {name}; move it away or name another folder in the recipe.")
        echo(f"{name}: running, as {reason}")
        try:
            summary = stage.run({**options, "overwrite": True})
        except OptionError as error:
            raise FatalError(f"{recipe.source}: {error}") from None
        for line in stage.summary_lines(summary):
            echo(line)
        record_settings(out, settings)
        results[name] = StageResult(name, out, ran=True, reason=reason, summary=summary)
        earlier_stage_ran = True
    echo("")
    echo(f"Recipe {recipe.source} done:")
    for name, result in results.items():
        echo(f"  {FOLDER_LABELS[name]:<19} {result.out_dir}")
    return RecipeResult(recipe, results)
