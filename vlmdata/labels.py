"""Which tokens a model is trained on, and where a long row may be cut.

The chat templates wrap each assistant reply and its end-of-turn token in `{% generation %}` blocks, so the
processor's assistant mask marks exactly the reply tokens. From it and the media token ids:
- `assistant`: every assistant turn (with its end-of-turn token) is trained;
- `all`: every text token is trained;
- `last`: only the final assistant turn is trained.
Media tokens (image soft tokens and their delimiters, audio tokens, and the timestamp text some processors write
before each video frame) and padding are never trained: the model does not predict them, and learning to emit
them would corrupt generation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "all", "last")
# What is done with a row longer than the maximum length: rejected (none), or cut after its last media token (text).
TRUNCATE = ("none", "text")
GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")
# The longest frame timestamp looked for, in tokens ("<12.5 seconds>" is 8 with the Qwen tokenizer), unless the
# family says otherwise (`Family.frame_timestamp_tokens`).
MAX_TIMESTAMP_TOKENS = 16


def has_generation_markers(template: str) -> bool:
    """Whether a chat template marks the assistant replies with `{% generation %}` blocks."""
    return bool(GENERATION_MARKER.search(template))


def make_labels(
    input_ids: np.ndarray,
    assistant_mask: np.ndarray,
    attention_mask: np.ndarray,
    media: np.ndarray,
    train_on: str = "assistant",
    assistant_turns: int | None = None,
) -> np.ndarray:
    """The labels of one row: its token ids where trained, IGNORE_INDEX elsewhere.

    Args:
        input_ids: the row's token ids, shape [L].
        assistant_mask: 1 on tokens produced by an assistant turn's generation block, shape [L].
        attention_mask: 0 on padding, shape [L].
        media: true on the tokens that stand for media (`media_mask`), never trained.
        train_on: "assistant", "all" or "last".
        assistant_turns: with "last", the number of assistant messages. A mask with fewer runs of ones means
            that a reply wrote no token (an empty reply in a template without an end-of-turn token): the last
            run may then be an earlier reply, and nothing is trained rather than the wrong turn.

    Example:
        >>> make_labels(np.array([5, 9, 6, 7]), np.array([0, 0, 1, 1]), np.ones(4), np.array([0, 1, 0, 0])).tolist()
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
    trained &= ~media.astype(bool)
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


def text_cut_allowed(media: np.ndarray, max_length: int) -> bool:
    """Whether cutting a row to `max_length` tokens removes only text after its last media token."""
    media_positions = np.flatnonzero(media)
    return len(media_positions) == 0 or media_positions[-1] < max_length


def media_mask(
    input_ids: np.ndarray,
    media_token_ids: set[int],
    frame_start_ids: Sequence[int] = (),
    frame_timestamp: re.Pattern | None = None,
    decode: Callable[[list[int]], str] | None = None,
    video_span_ids: tuple[int, int] | None = None,
    timestamp_tokens: int = MAX_TIMESTAMP_TOKENS,
) -> np.ndarray:
    """Which tokens of a row stand for media: the media tokens, and the timestamp text of each video frame.

    Qwen3-VL writes "<1.5 seconds>" and Gemma 4 "00:01 " before each frame: ordinary text tokens, found as the
    longest run of tokens just before a frame's opening tokens that decodes to a full match of `frame_timestamp`.
    GLM-4.1V writes each frame's second after the frame, the last one just before the video's closing token: there
    every token from a video's opening token to its closing one is media (`video_span_ids`).

    Args:
        input_ids: the row's token ids, shape [L].
        media_token_ids: ids that always stand for media.
        frame_start_ids: the ids that open each video frame, in order (a start token and the first video soft
            token), so that an image's start token never counts as a frame's.
        frame_timestamp: what the text before each frame fully matches.
        decode: turns token ids into text (the tokenizer's own decoding).
        video_span_ids: the ids that open and close a video, where all between them is media.
        timestamp_tokens: the most tokens the text before a frame may take.

    Example:
        >>> media_mask(np.array([3, 1, 2, 9, 9, 8]), {9, 8}).tolist()
        [False, False, False, True, True, True]
        >>> media_mask(np.array([3, 7, 9, 5, 9, 6, 8, 3]), {7, 8, 9}, video_span_ids=(7, 8)).tolist()
        [False, True, True, True, True, True, True, False]
    """
    media = np.isin(input_ids, sorted(media_token_ids))
    if video_span_ids is not None:
        opened, closed = (np.cumsum(input_ids == token) for token in video_span_ids)
        media |= opened > closed
    if not frame_start_ids or frame_timestamp is None:
        return media
    width = len(frame_start_ids)
    starts = np.flatnonzero(np.all(
        [np.roll(input_ids, -shift) == token for shift, token in enumerate(frame_start_ids)], axis=0))
    for start in starts[starts <= len(input_ids) - width]:
        first = _timestamp_start(input_ids, media, start, frame_timestamp, decode, timestamp_tokens)
        media[first:start] = True
    return media


def _timestamp_start(input_ids, media, start: int, pattern: re.Pattern, decode, max_tokens: int) -> int:
    first = start
    for size in range(1, max_tokens + 1):
        if start - size < 0 or media[start - size]:
            break
        if pattern.fullmatch(decode(input_ids[start - size : start].tolist())):
            first = start - size
    return first
