"""Checks of single recipe values: each takes the value read from YAML and returns it in the form the commands
take, or raises `BadValue` saying what is allowed.

Example:
    >>> whole_number(minimum=1)(8)
    8
    >>> number(minimum=0.0)("2e-4")  # YAML 1.1 reads 2e-4 as a string; axolotl accepts it as a number
    0.0002
    >>> one_of("cosine", "linear")("rex")
    Traceback (most recent call last):
    ...
    vlmdata.recipe.checks.BadValue: one of cosine, linear
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], Any]


class BadValue(ValueError):
    """A value a key does not take; the message says what the key takes ("a whole number of at least 1")."""


def yes_no(value: Any) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise BadValue("true or false")
    return value


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise BadValue("a non-empty string")
    return value


def whole_number(minimum: int | None = None) -> Check:
    """A check for an integer, at least `minimum` when given."""
    allowed = "a whole number" + (f" of at least {minimum}" if minimum is not None else "")

    def check(value: Any) -> int:
        # YAML's true is an int to Python; a flag where a count belongs is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise BadValue(allowed)
        return value

    return check


def number(minimum: float | None = None, maximum: float | None = None, above_minimum: bool = False) -> Check:
    """A check for a real number in a range; strings such as "2e-4" count, as they do for axolotl."""
    bounds = []
    if minimum is not None:
        bounds.append(f"{'above' if above_minimum else 'at least'} {minimum:g}")
    if maximum is not None:
        bounds.append(f"at most {maximum:g}")
    allowed = "a number" + (" " + " and ".join(bounds) if bounds else "")

    def check(value: Any) -> float:
        if isinstance(value, bool):
            raise BadValue(allowed)
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise BadValue(allowed) from None
        too_low = minimum is not None and (result <= minimum if above_minimum else result < minimum)
        if result != result or too_low or (maximum is not None and result > maximum):
            raise BadValue(allowed)
        return result

    return check


def one_of(*choices: str) -> Check:
    """A check for one of the given strings."""

    def check(value: Any) -> str:
        if value not in choices:
            raise BadValue(f"one of {', '.join(choices)}")
        return value

    return check


def image_size(value: Any) -> str:
    """N (letterbox to N x N), WxH or [W, H] (exact) -> the `--image-size` text."""
    allowed = "a size in pixels: N, WxH or [W, H]"
    if isinstance(value, bool):
        raise BadValue(allowed)
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, list) and len(value) == 2 and all(type(side) is int and side > 0 for side in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, str) and re.fullmatch(r"[1-9]\d*(x[1-9]\d*)?", value.strip().lower()):
        return value.strip().lower()
    raise BadValue(allowed)


def bf16(value: Any) -> bool | None:
    """true, false or auto (None: when the GPU supports it)."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return None
    raise BadValue("true, false or auto")


def lora_target_modules(value: Any) -> str:
    """A regex that full module names must match, or a list of module names.

    A list means what peft makes of one: every module whose name is one of them or ends with "." and one of
    them, anywhere in the model (vision tower included).

    Example:
        >>> lora_target_modules(["q_proj", "v_proj"])
        '(?:.*\\\\.)?(?:q_proj|v_proj)'
    """
    if isinstance(value, str) and value.strip():
        try:
            re.compile(value)
        except re.error as error:
            raise BadValue(f"a valid regex ({error})") from None
        return value
    if isinstance(value, list) and value and all(isinstance(name, str) and name.strip() for name in value):
        return r"(?:.*\.)?(?:" + "|".join(re.escape(name.strip()) for name in value) + ")"
    raise BadValue("a regex of full module names, or a list of module names")
