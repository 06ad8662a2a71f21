"""Reading a recipe: YAML in, every key known and every value checked, or one sentence that says what is wrong.

Example:
    >>> recipe = parse_recipe({"base_model": "gemma3", "lora_r": 8, "vlmdata": {"train_on": "last"}}, "inline")
    >>> recipe.values["lora_r"], recipe.values["vlmdata.train_on"]
    (8, 'last')
    >>> parse_recipe({"lora_rank": 8}, "inline")
    Traceback (most recent call last):
    ...
    vlmdata.errors.FatalError: inline: unknown key 'lora_rank'; did you mean 'lora_r'?
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlmdata.errors import FatalError
from vlmdata.recipe.checks import BadValue
from vlmdata.recipe.keys import DATASET_KEYS, KEYS, OWN_SECTION, UNSUPPORTED, is_empty


@dataclass(frozen=True)
class Recipe:
    """A recipe whose keys are all known and whose values are all checked.

    Attributes:
        source: the file it was read from (named in error messages).
        values: each key's checked value by key name ("lora_r", "vlmdata.train_on"); `datasets` is a list of
            checked entries ({"path", "type", "split", "field_messages"}).
    """

    source: str
    values: dict[str, Any]


def load_recipe(path: str | Path) -> Recipe:
    """Reads and checks the recipe file at `path`.

    Raises:
        FatalError: the file cannot be read, is not YAML, or holds an unknown key or a bad value.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FatalError(f"Cannot read the recipe {source}: {getattr(error, 'strerror', None) or error}.") from None
    try:
        document = _read_yaml(text)
    except yaml.YAMLError as error:
        raise FatalError(f"{source} is not valid YAML: {_yaml_problem(error)}.") from None
    if not isinstance(document, dict):
        raise FatalError(f"{source} must be a YAML mapping of keys to values, like an axolotl config.")
    return parse_recipe(document, source)


def parse_recipe(document: dict[str, Any], source: str = "recipe") -> Recipe:
    """Checks a recipe already read from YAML; `source` names it in error messages."""
    values: dict[str, Any] = {}
    for name, value in _flatten(document, source).items():
        if name in UNSUPPORTED:
            if not is_empty(value):
                raise FatalError(
                    f"{source}: {name} is {_show(value)}, but vlmdata does not support {name}; remove it or leave it empty."
                )
            continue
        if name not in KEYS:
            raise FatalError(_unknown(source, name))
        if value is None and name != "adapter":
            continue  # an empty key is an unset key, as in axolotl
        values[name] = _checked(source, name, KEYS[name].check, value)
    if "datasets" in values:
        values["datasets"] = _checked_datasets(source, values["datasets"])
    _check_combinations(source, values)
    return Recipe(source, values)


def require(recipe: Recipe, *names: str) -> None:
    """Raises FatalError naming the first of `names` the recipe lacks."""
    for name in names:
        if name not in recipe.values:
            raise FatalError(f"{recipe.source} has no {name}, which running the whole pipeline needs.")


def _flatten(document: dict[str, Any], source: str) -> dict[str, Any]:
    """Top-level keys as they are, the keys of the `vlmdata:` section as "vlmdata.<key>"."""
    flat = {}
    for name, value in document.items():
        if not isinstance(name, str):
            raise FatalError(f"{source}: the key {_show(name)} is not a name; keys are words such as base_model.")
        if name != OWN_SECTION:
            flat[name] = value
            continue
        if not isinstance(value, (dict, type(None))):
            raise FatalError(f"{source}: {OWN_SECTION} is {_show(value)}, but it takes a mapping of vlmdata's own keys.")
        for own, own_value in (value or {}).items():
            flat[f"{OWN_SECTION}.{own}"] = own_value
    return flat


def _checked(source: str, name: str, check, value: Any) -> Any:
    try:
        return check(value)
    except BadValue as error:
        raise FatalError(f"{source}: {name} is {_show(value)}, but it takes {error}.") from None


def _checked_datasets(source: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for number, entry in enumerate(entries):
        prefix = f"datasets[{number}]"
        values = {"type": "chat_template", "split": None, "field_messages": "messages"}
        for name, value in entry.items():
            if name not in DATASET_KEYS:
                raise FatalError(_unknown(source, f"{prefix}.{name}"))
            if value is not None:
                values[name] = _checked(source, f"{prefix}.{name}", DATASET_KEYS[name], value)
        if "path" not in values:
            raise FatalError(f"{source}: {prefix} has no path (a file, a folder or a hub dataset id).")
        checked.append(values)
    for name in ("split", "field_messages"):
        for number, entry in enumerate(checked[1:], start=1):
            if entry[name] != checked[0][name]:
                raise FatalError(
                    f"{source}: datasets[{number}].{name} is {_show(entry[name])} but datasets[0].{name} is "
                    f"{_show(checked[0][name])}; the datasets of a recipe are converted together, with one {name}."
                )
    return checked


def _check_combinations(source: str, values: dict[str, Any]) -> None:
    """The checks that concern two keys at once."""
    four_bit = values.get("load_in_4bit") or values.get("adapter") == "qlora"
    if four_bit and values.get("load_in_8bit"):
        raise FatalError(f"{source}: load_in_8bit is true but the model is loaded in 4 bits (load_in_4bit or adapter qlora); keep one.")
    if values.get("adapter", "full") == "full" and (four_bit or values.get("load_in_8bit")):
        raise FatalError(
            f"{source}: a quantized model cannot be trained in full; set adapter to lora or qlora, or remove load_in_4bit and load_in_8bit."
        )
    attention = [key for key in ("flash_attention", "sdp_attention", "eager_attention") if values.get(key)]
    if len(attention) > 1:
        raise FatalError(f"{source}: {' and '.join(attention)} are both true; the model takes one attention implementation.")
    if "train_on_inputs" in values and f"{OWN_SECTION}.train_on" in values:
        raise FatalError(f"{source}: train_on_inputs and {OWN_SECTION}.train_on both say which tokens are trained; keep one.")
    if f"{OWN_SECTION}.resize_mode" in values and "image_size" not in values:
        raise FatalError(f"{source}: {OWN_SECTION}.resize_mode needs image_size.")


def _unknown(source: str, name: str) -> str:
    """The message for an unknown key, with the closest known one at the same level (difflib)."""
    prefix, _, bare = name.rpartition(".")
    if prefix.startswith("datasets["):
        candidates = {key: f"{prefix}.{key}" for key in DATASET_KEYS}
    else:
        own = {key.partition(".")[2]: key for key in KEYS if key.startswith(OWN_SECTION + ".")}
        top = {key: key for key in KEYS if "." not in key}
        candidates = own if prefix == OWN_SECTION else {**own, **top}
        if not prefix and bare in own and bare not in top:
            return f"{source}: unknown key {name!r}; did you mean {own[bare]!r} (vlmdata's own keys go under {OWN_SECTION}:)?"
        if prefix == OWN_SECTION and bare in top:
            return f"{source}: unknown key {name!r}; did you mean {bare!r} (axolotl's keys go at the top level)?"
    close = difflib.get_close_matches(bare, list(candidates), n=1)
    if close:
        return f"{source}: unknown key {name!r}; did you mean {candidates[close[0]]!r}?"
    return f"{source}: unknown key {name!r}; the Recipes section of the README lists every key."


def _show(value: Any) -> str:
    """A value as YAML would spell it (true, not True)."""
    return json.dumps(value, default=str)


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _read_yaml(text: str) -> Any:
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice, which plain YAML loading settles silently by keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)
