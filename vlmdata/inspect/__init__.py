"""`vlmdata inspect`: statistics of a normalised dataset, token shards or a rejects file, and an HTML preview.

The statistics come from one pass over only the columns they need (`stats`); the preview (`page`) shows a
sample of rows (`samples`), each image beside the tokens that train (`tokens`).

Example:
    >>> result = inspect("out/shards", html="out/shards.html", n=8)  # doctest: +SKIP
    >>> result.statistics.rows, result.cards  # doctest: +SKIP
    (7, 7)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmdata.inspect.detect import Target, detect
from vlmdata.inspect.page import render_page
from vlmdata.inspect.report import terminal_lines
from vlmdata.inspect.samples import build_cards
from vlmdata.inspect.stats import Statistics, collect

__all__ = ["InspectResult", "Statistics", "Target", "detect", "inspect", "terminal_lines"]


@dataclass
class InspectResult:
    """What `inspect` found and wrote.

    Attributes:
        statistics: the figures of the terminal summary.
        page: the HTML file written, or None.
        cards: how many samples the page shows.
    """

    statistics: Statistics
    page: Path | None = None
    cards: int = 0


def inspect(
    path: str | Path,
    *,
    html: str | Path | None = None,
    n: int = 16,
    seed: int = 0,
    ids: list[str] | None = None,
    progress: bool = False,
) -> InspectResult:
    """Gathers the statistics of `path` and, with `html`, writes the preview page.

    Args:
        path: a normalised dataset folder, a token shard folder, or a rejects file (or a folder holding one).
        html: where to write the page.
        n: how many rows the page shows, drawn at random with `seed`.
        seed: the seed of that draw; the same seed shows the same rows.
        ids: show these rows instead, in this order.
        progress: show a progress bar during the statistics pass.

    Raises:
        FatalError: the path is none of the above, or an id of `ids` is not there.
    """
    target = detect(path)
    statistics = collect(target, progress=progress)
    result = InspectResult(statistics)
    if html is not None:
        cards = build_cards(target, n=n, seed=seed, ids=ids)
        page = Path(html)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(render_page(statistics, cards), encoding="utf-8")
        result.page, result.cards = page, len(cards)
    return result
