"""A shard row's tokens as the page shows them: trained text, masked text, and media runs collapsed to chips.

Example:
    >>> media = media_token_names(tokenizer, get_family("gemma3").media_tokens)  # doctest: +SKIP
    >>> spans = token_spans(row["input_ids"], row["labels"], tokenizer, media)  # doctest: +SKIP
    >>> [(span.kind, span.text) for span in spans][:3]  # doctest: +SKIP
    [('masked', '<bos><start_of_turn>user\\n\\n\\n'), ('media', '[258 image tokens]'), ('masked', '\\n\\nWhat is it?')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlmdata.labels import IGNORE_INDEX

TRAINED, MASKED, MEDIA = "trained", "masked", "media"
# Tokens decoded before a span and then cut off again, so that the span's first word keeps its leading space
# (tokenizers that strip the first space of a sequence would otherwise glue words together).
CONTEXT_TOKENS = 4


@dataclass(frozen=True)
class Span:
    """A run of tokens of one kind.

    Attributes:
        kind: TRAINED (label is the token), MASKED (label -100) or MEDIA (stands for an image or audio clip).
        text: the decoded text, or for media a label such as "[256 image tokens]".
        tokens: how many tokens the span covers.
    """

    kind: str
    text: str
    tokens: int


def media_token_names(tokenizer, names: Sequence[str]) -> dict[int, str]:
    """The ids of the media tokens `names` (a family's `media_tokens`) that the tokenizer knows."""
    vocab = tokenizer.get_vocab()
    return {vocab[name]: name for name in names if name in vocab}


def has_closing_token(media: dict[int, str]) -> bool:
    """Whether a media run ends with a token of its own (<end_of_image>, [IMG_END], <image|>, </img>, SmolVLM2's
    <fake_token_around_image> after a global view); without one (LLaVA's repeated <image>, Mllama's one <|image|>
    per image) adjacent items can only be told apart by their length."""
    return any(_closes(name) for name in media.values()) or {AROUND_VIEW, GLOBAL_VIEW} <= set(media.values())


def image_length(processor) -> int | None:
    """How many tokens the processor writes for one image, or None when it cannot say.

    Only asked of families without a closing token, whose images all take the same number of tokens (LLaVA
    resizes every image to one size; Mllama writes one <|image|> per image whatever its tiles).
    """
    from PIL import Image

    try:
        token = processor.image_token
        encoded = processor(text=[token], images=[Image.new("RGB", (32, 32))], return_tensors="np")
        length = int((encoded["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids(token)).sum())
    except Exception:  # a processor without `image_token` or one this call does not suit: keep runs whole
        return None
    return length or None


def token_spans(
    input_ids: Sequence[int],
    labels: Sequence[int],
    tokenizer,
    media: dict[int, str],
    item_tokens: int | None = None,
) -> list[Span]:
    """Splits a row into spans of trained, masked and media tokens, in order.

    Args:
        input_ids: the row's token ids.
        labels: its labels (the token where trained, -100 elsewhere).
        tokenizer: decodes the text spans.
        media: media token id -> token name (`media_token_names`).
        item_tokens: for a family without a closing media token (`has_closing_token`), the tokens of one
            image (`image_length`): a longer run is cut into one chip per image.
    """
    ids = [int(token) for token in input_ids]
    spans = []
    for kind, start, end in _runs(ids, [int(label) for label in labels], media, item_tokens):
        if kind == MEDIA:
            count = end - start
            noun = "token" if count == 1 else "tokens"
            spans.append(Span(MEDIA, f"[{count} {_modality(ids[start:end], media)} {noun}]", count))
        else:
            spans.append(Span(kind, _decode(tokenizer, ids, start, end), end - start))
    return spans


def _runs(
    ids: list[int], labels: list[int], media: dict[int, str], item_tokens: int | None
) -> list[tuple[str, int, int]]:
    """(kind, start, end) of each run; a media run also ends after a closing token such as <end_of_image>, or
    after `item_tokens` tokens, so that two images in a row make two chips. Within an image whose parts the
    processor writes with text between them (SmolVLM2's line breaks between rows of crops), that text belongs
    to the image's run."""
    runs: list[tuple[str, int, int]] = []
    start, current = 0, MASKED
    within = _within_views(ids, media)
    closed = False  # the previous token closed an item
    for position, token in enumerate(ids):
        if token in media or within[position]:
            kind = MEDIA
        else:
            kind = TRAINED if labels[position] != IGNORE_INDEX else MASKED
        ends_item = kind == current == MEDIA and (closed or position - start == item_tokens)
        if position > start and (kind != current or ends_item):
            runs.append((current, start, position))
            start = position
        current = kind
        closed = within[position] == CLOSING or (token in media and within[position] is None and _closes(media[token]))
    if ids:
        runs.append((current, start, len(ids)))
    return runs


# SmolVLM2 writes an image as rows of crops, "<fake_token_around_image><row_1_col_1><image>...", a line break
# after each row, then its global view "<fake_token_around_image><global-img><image>...<fake_token_around_image>",
# whose last token closes the image (a video frame is a global view alone).
AROUND_VIEW, GLOBAL_VIEW = "<fake_token_around_image>", "<global-img>"
INSIDE, CLOSING = "inside", "closing"


def _within_views(ids: list[int], media: dict[int, str]) -> list[str | None]:
    """For each token, INSIDE an image of crops and views (text there included), CLOSING for the token that
    closes one, or None (every token of a family without such images)."""
    within: list[str | None] = [None] * len(ids)
    if not {AROUND_VIEW, GLOBAL_VIEW} <= set(media.values()):
        return within
    state = None  # None, "open" (crops), "global" (the global view)
    for position, token in enumerate(ids):
        name = media.get(token)
        if name == AROUND_VIEW and state == "global":
            within[position], state = CLOSING, None
            continue
        if name == AROUND_VIEW and state is None:
            state = "open"
        elif name == GLOBAL_VIEW and state is not None:
            state = "global"
        within[position] = INSIDE if state is not None else None
    return within


def _closes(name: str) -> bool:
    # <end_of_image>, [IMG_END], <|image_end|> (Llama 4, LFM2-VL); Gemma 4 closes with the half-open <image|>,
    # <audio|>, InternVL with the closing tag </img>.
    return "end" in name.lower() or (name.endswith("|>") and not name.startswith("<|")) or name.startswith("</")


def _modality(ids: list[int], media: dict[int, str]) -> str:
    names = " ".join(media[token] for token in ids if token in media).lower()
    return "audio" if "audio" in names else "video" if "video" in names else "image"


def _decode(tokenizer, ids: list[int], start: int, end: int) -> str:
    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    context = max(0, start - CONTEXT_TOKENS)
    before, whole = decode(ids[context:start]), decode(ids[context:end])
    return whole[len(before):] if whole.startswith(before) else decode(ids[start:end])
