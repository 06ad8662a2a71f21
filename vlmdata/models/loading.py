"""Loading the processor that `--model` names: a family alias, a hub id or a local folder.

Example:
    >>> loaded = load_processor("fixtures/data/models/gemma3")  # doctest: +SKIP
    >>> loaded.family.alias, type(loaded.processor).__name__  # doctest: +SKIP
    ('gemma3', 'Gemma3Processor')
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vlmdata.errors import FatalError
from vlmdata.labels import media_mask
from vlmdata.models.registry import FAMILIES, Family, family_for_config

# A hub id: "name" or "owner/name", of letters, digits, "_", "-" and ".", each starting with a letter or digit.
_HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


@dataclass
class LoadedProcessor:
    """A processor with what tokenization needs to know about it.

    Attributes:
        name: what the user passed to `--model`.
        checkpoint: the hub id or folder it was loaded from.
        family: the model family.
        processor: the `transformers` processor.
    """

    name: str
    checkpoint: str
    family: Family
    processor: Any

    @cached_property
    def media_token_ids(self) -> set[int]:
        """Ids of the family's media tokens that the tokenizer knows (the vocabulary is built once, not per row)."""
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        return {vocab[token] for token in self.family.media_tokens if token in vocab}

    @cached_property
    def _frame_start_ids(self) -> list[int]:
        return self.processor.tokenizer.convert_tokens_to_ids(list(self.family.frame_start))

    @cached_property
    def _frame_timestamp(self) -> re.Pattern | None:
        return re.compile(self.family.frame_timestamp) if self.family.frame_timestamp else None

    @cached_property
    def _video_span_ids(self) -> tuple[int, int] | None:
        span = self.family.video_span
        return tuple(self.processor.tokenizer.convert_tokens_to_ids(list(span))) if span else None

    def media_mask(self, input_ids: np.ndarray) -> np.ndarray:
        """True on the tokens of a row that stand for media (see `labels.media_mask`)."""
        tokenizer = self.processor.tokenizer
        return media_mask(
            input_ids, self.media_token_ids, self._frame_start_ids, self._frame_timestamp,
            lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            self._video_span_ids, self.family.frame_timestamp_tokens,
        )


def resolve_checkpoint(model: str, loading: str = "the model") -> str:
    """The hub id or folder `--model` stands for: an alias becomes its family's default checkpoint, and "~" in
    a path the home folder.

    Args:
        model: an alias, a hub id or a folder.
        loading: what is loaded from it, for the error message: "the model", "the processor of".

    Raises:
        FatalError: `model` is a path (see `looks_like_a_path`) that leads to nothing, which the hub would
            answer with its rules for repository ids.
    """
    if model in FAMILIES:
        return FAMILIES[model].default_checkpoint
    if not looks_like_a_path(model):
        return model
    folder = os.path.expanduser(model)
    if not os.path.exists(folder):
        raise FatalError(f"Cannot load {loading} {model}: the model folder {os.path.abspath(folder)} does not exist.")
    return folder


def looks_like_a_path(model: str) -> bool:
    """Whether `--model` names a local folder rather than a hub id: it cannot be a hub id ("./m", "/m", "~/m",
    "out/run/m", "my model"), or it is "owner/name" with a folder "owner" here ("out/m" where out/ exists).

    Example:
        >>> looks_like_a_path("google/gemma-3-4b-it"), looks_like_a_path("./gemma")
        (False, True)
    """
    if not _HUB_ID.fullmatch(model):
        return True
    owner, slash, _ = model.partition("/")
    return bool(slash) and os.path.exists(owner)


def load_processor(model: str) -> LoadedProcessor:
    """Loads the processor of `model` and finds its family.

    Raises:
        FatalError: it cannot be loaded (offline, gated, wrong path), or its family is not supported.
    """
    from transformers import AutoConfig, AutoProcessor

    checkpoint = resolve_checkpoint(model, loading="the processor of")
    try:
        processor = AutoProcessor.from_pretrained(checkpoint)
    except Exception as error:  # transformers raises OSError, ValueError, HTTP errors...: all mean "cannot load"
        raise FatalError(_cannot_load(model, checkpoint, error)) from None
    if not hasattr(processor, "apply_chat_template") or not hasattr(processor, "tokenizer"):
        raise FatalError(f"{model!r} ({checkpoint}) has no multimodal processor; pass a vision-language model.")
    family = FAMILIES.get(model) or _family_of(checkpoint, AutoConfig)
    return LoadedProcessor(model, checkpoint, family, processor)


def _family_of(checkpoint: str, auto_config) -> Family:
    config_path = Path(checkpoint) / "config.json"
    try:
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
        else:
            config = auto_config.from_pretrained(checkpoint).to_dict()
    except Exception as error:
        raise FatalError(f"Cannot read the config of {checkpoint!r} to find its model family: {_first_line(error)}") from None
    family = family_for_config(config)
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise FatalError(f"{checkpoint!r} is a {config.get('model_type')!r} model, not a supported family ({known}).")
    return family


def _cannot_load(model: str, checkpoint: str, error: Exception) -> str:
    named = model if model == checkpoint else f"{model} ({checkpoint})"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not ("/" in checkpoint and not Path(checkpoint).exists()):
        hint = "pass a local folder that holds the processor, or download it first with `hf download`"
    else:
        hint = "check the hub id, accept the model's licence on the hub and log in (`hf auth login`) if it is gated"
    return f"Cannot load the processor of {named}: {_first_line(error)}; {hint}."


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0].rstrip(".")
