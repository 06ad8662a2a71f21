"""The HTML preview: one self-contained page with the statistics, histograms and a card per sample.

Everything taken from the data (text, ids, sources, reasons) goes through `html.escape`, so a row that holds
markup is shown as text, never run. The page has no script and loads nothing: images are data URIs, charts
are inline SVG, and its Content-Security-Policy forbids any other source.
"""

from __future__ import annotations

from html import escape

from vlmdata.inspect.images import Thumbnail
from vlmdata.inspect.report import histograms, summary_rows
from vlmdata.inspect.samples import Card
from vlmdata.inspect.stats import Statistics
from vlmdata.inspect.svg import bar_chart
from vlmdata.inspect.videos import VideoStrip
from vlmdata.inspect.tokens import MEDIA, Span
from vlmdata.modalities import KINDS

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 16px; color: #1d1d1f; }
h1 { font-size: 20px; margin: 0 0 12px; }
table.stats caption { text-align: left; font-weight: 600; padding-top: 6px; }
table.stats td { padding: 1px 12px 1px 0; vertical-align: top; }
table.stats td:first-child, dl dt { color: #666; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
svg.chart { background: #fafafa; border: 1px solid #e2e2e2; }
svg.chart text { font-size: 11px; fill: #555; }
svg.chart .bar { fill: #4a7bd0; }
svg.chart .axis { stroke: #999; }
.legend span { margin-right: 10px; }
.card { border: 1px solid #d9d9de; border-radius: 8px; padding: 12px; margin: 14px 0; background: #fff; }
.card h2 { font-size: 15px; margin: 0; word-break: break-all; }
.card .source { color: #666; margin: 2px 0 6px; word-break: break-all; }
dl { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 4px 0; }
dl dt::after { content: ":"; }
dl dd { margin: 0; white-space: pre-wrap; }
.thumbnails { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
.thumbnails figure { margin: 0; font-size: 12px; color: #666; }
.thumbnails img { display: block; max-width: 192px; max-height: 192px; border: 1px solid #ccc; }
.video { margin: 8px 0; font-size: 12px; color: #666; }
.video .frames { display: flex; gap: 2px; overflow-x: auto; }
.video figure { margin: 0; }
.video img { display: block; max-width: 96px; max-height: 96px; }
.tokens, .content { font-family: ui-monospace, Menlo, monospace; font-size: 13px; white-space: pre-wrap;
  word-break: break-word; }
.tokens { background: #f7f7f9; padding: 8px; border-radius: 6px; }
.trained { background: #fff0a8; color: #000; border-bottom: 2px solid #e0b000; }
.masked { color: #8a8a8e; }
.chip { display: inline-block; background: #dde8fb; color: #1e4fa8; border-radius: 9px; padding: 0 7px;
  font-size: 12px; font-family: system-ui, sans-serif; white-space: nowrap; }
.message { margin: 6px 0; }
.role { font-weight: 600; color: #555; display: block; }
.note { color: #a0521d; }
.unreadable { display: inline-block; width: 96px; height: 64px; background: #eee; color: #888; text-align: center; }
"""
LEGEND = (
    '<p class="legend"><span class="trained">trained tokens</span><span class="masked">masked tokens</span>'
    '<span class="chip">[N image tokens]</span></p>'
)


def render_page(statistics: Statistics, cards: list[Card]) -> str:
    """The whole page as one string."""
    target = statistics.target
    title = f"vlmdata inspect: {target.description} {target.path}"
    shows_tokens = any(card.spans for card in cards)
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{escape(title)}</h1>{_statistics(statistics)}</header>",
        f'<main><h2 class="samples">{len(cards)} samples</h2>',
        LEGEND if shows_tokens else "",
        "".join(_card(card) for card in cards),
        "</main></body></html>\n",
    ])


def _statistics(statistics: Statistics) -> str:
    pairs = summary_rows(statistics)
    rows = "".join(f"<tr><td>{escape(label)}</td><td>{escape(value)}</td></tr>" for label, value in pairs)
    parts = [f'<table class="stats">{rows}</table>']
    charts = [bar_chart(histogram.title, histogram.bars) for histogram in histograms(statistics)]
    if charts:
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    if statistics.rejects_by_reason:
        by_reason = statistics.rejects_by_reason.most_common()
        reasons = "".join(f"<tr><td>{count}</td><td>{escape(reason)}</td></tr>" for reason, count in by_reason)
        parts.append(f'<table class="stats rejects"><caption>rejects by reason</caption>{reasons}</table>')
    return "".join(parts)


def _card(card: Card) -> str:
    details = "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in card.details)
    parts = [
        f'<article class="card" data-id="{escape(card.id)}" data-position="{card.position}">',
        f'<h2 class="row-id">{escape(card.id)}</h2>',
        f'<p class="source">{escape(card.source)} · {card.unit} {card.position}</p>',
        f"<dl>{details}</dl>" if details else "",
    ]
    if card.thumbnails:
        thumbnails = "".join(_thumbnail(number, image) for number, image in enumerate(card.thumbnails, 1))
        parts.append(f'<div class="thumbnails">{thumbnails}</div>')
    parts.extend(_video(number, video) for number, video in enumerate(card.videos, 1))
    if card.note:
        parts.append(f'<p class="note">{escape(card.note)}</p>')
    if card.spans:
        parts.append(f'<div class="tokens">{"".join(_span(span) for span in card.spans)}</div>')
    if card.messages:
        messages = "".join(_message(role, content) for role, content in card.messages)
        parts.append(f'<div class="messages">{messages}</div>')
    parts.append("</article>")
    return "".join(parts)


def _thumbnail(number: int, image: Thumbnail) -> str:
    if image.uri is None:
        return f'<figure><span class="unreadable">unreadable</span><figcaption>image {number}</figcaption></figure>'
    size = f"{image.width}×{image.height}"
    return (
        f'<figure><img src="{image.uri}" alt="image {number}, {size}" title="image {number}, {size}">'
        f"<figcaption>image {number} · {size}</figcaption></figure>"
    )


def _video(number: int, video: VideoStrip) -> str:
    frames = "".join(
        f'<figure><img src="{frame.uri}" alt="video {number} at {time:.2f} s"><figcaption>{time:.2f} s</figcaption></figure>'
        if frame.uri is not None else f'<figure><span class="unreadable">unreadable</span><figcaption>{time:.2f} s</figcaption></figure>'
        for frame, time in zip(video.frames, video.timestamps)
    )
    shown = f", {len(video.frames)} shown" if len(video.frames) < video.sampled else ""
    caption = f"video {number} · {video.sampled} frames{shown} · {video.duration:.1f} s"
    return f'<div class="video" data-frames="{video.sampled}"><div class="frames">{frames}</div><p>{escape(caption)}</p></div>'


def _span(span: Span) -> str:
    if span.kind == MEDIA:
        return f'<span class="chip" title="{span.tokens} tokens">{escape(span.text)}</span>'
    return f'<span class="{span.kind}">{escape(span.text)}</span>'


def _message(role: str, content: list[tuple[str, str]]) -> str:
    parts = []
    for kind, text in content:
        if kind in KINDS:
            parts.append(f'<span class="chip">[{escape(text)}]</span>')
        else:
            parts.append(f'<span class="text">{escape(text)}</span>')
    return (
        f'<div class="message" data-role="{escape(role)}"><span class="role">{escape(role)}</span>'
        f'<div class="content">{"".join(parts)}</div></div>'
    )
