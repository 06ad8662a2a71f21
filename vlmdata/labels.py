"""Which tokens a model is trained on, and where a long row may be cut.

The chat templates wrap each assistant reply and its end-of-turn token in `{% generation %}` blocks, so the
processor's assistant mask marks exactly the reply tokens. From it and the media token ids:
- `assistant`: every assistant turn (with its end-of-turn token) is trained;
- `all`: every text token is trained;
- `last`: only the final assistant turn is trained.
Media tokens (image soft tokens and their delimiters, audio tokens) and padding are never trained: the model
does not predict them, and learning to emit them would corrupt generation.
"""

from __future__ import annotations

import re

import numpy as np

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "all", "last")
# What is done with a row longer than the maximum length: rejected (none), or cut after its last media token (text).
TRUNCATE = ("none", "text")
GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


def has_generation_markers(template: str) -> bool:
    """Whether a chat template marks the assistant replies with `{% generation %}` blocks."""
    return bool(GENERATION_MARKER.search(template))


def make_labels(
    input_ids: np.ndarray,
    assistant_mask: np.ndarray,
    attention_mask: np.ndarray,
    media_token_ids: set[int],
    train_on: str = "assistant",
    assistant_turns: int | None = None,
) -> np.ndarray:
    """The labels of one row: its token ids where trained, IGNORE_INDEX elsewhere.

    Args:
        input_ids: the row's token ids, shape [L].
        assistant_mask: 1 on tokens produced by an assistant turn's generation block, shape [L].
        attention_mask: 0 on padding, shape [L].
        media_token_ids: ids that stand for media, never trained.
        train_on: "assistant", "all" or "last".
        assistant_turns: with "last", the number of assistant messages. A mask with fewer runs of ones means
            that a reply wrote no token (an empty reply in a template without an end-of-turn token): the last
            run may then be an earlier reply, and nothing is trained rather than the wrong turn.

    Example:
        >>> make_labels(np.array([5, 9, 6, 7]), np.array([0, 0, 1, 1]), np.ones(4), {9}).tolist()
        [-100, -100, 6, 7]
    """
    if train_on == "all":
        trained = np.ones(len(input_ids), dtype=bool)
    elif train_on == "assistant":
        trained = assistant_mask.astype(bool)
    elif train_on == "last":
        mask = assistant_mask.astype(bool)
        complete = assistant_turns is None or _count_runs(mask) >= assistant_turns
        trained = _last_run(mask) if complete else np.zeros_like(mask)
    else:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    trained &= attention_mask.astype(bool)
    trained &= ~np.isin(input_ids, sorted(media_token_ids))
    return np.where(trained, input_ids, IGNORE_INDEX)


def _count_runs(mask: np.ndarray) -> int:
    return int(np.count_nonzero(np.diff(mask.astype(np.int8), prepend=0) == 1))


def _last_run(mask: np.ndarray) -> np.ndarray:
    # Assistant turns are separated by at least their role header, so the last run of ones is the last turn.
    last = np.zeros_like(mask)
    positions = np.flatnonzero(mask)
    if len(positions) == 0:
        return last
    end = positions[-1] + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    last[start:end] = True
    return last


def text_cut_allowed(input_ids: np.ndarray, media_token_ids: set[int], max_length: int) -> bool:
    """Whether cutting a row to `max_length` tokens removes only text after its last media token."""
    media_positions = np.flatnonzero(np.isin(input_ids, sorted(media_token_ids)))
    return len(media_positions) == 0 or media_positions[-1] < max_length
