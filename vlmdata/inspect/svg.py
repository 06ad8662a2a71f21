"""A bar chart as inline SVG: the page draws its histograms without any script or external file."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 640, 180
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 40, 34, 10


def bar_chart(title: str, bars: list[tuple[str, int]]) -> str:
    """An SVG bar chart of `bars` ((label, count) in order); each bar's tooltip gives its label and count.

    Example:
        >>> bar_chart("images per row", [("0", 2), ("1", 5)]).startswith("<svg")
        True
    """
    top = max((count for _, count in bars), default=0) or 1
    plot_width, plot_height = WIDTH - MARGIN_LEFT - 10, HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    step = plot_width / max(len(bars), 1)
    base = MARGIN_TOP + plot_height
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{MARGIN_LEFT}" y1="{base}" x2="{WIDTH - 10}" y2="{base}" class="axis"/>',
        f'<text x="{MARGIN_LEFT - 6}" y="{MARGIN_TOP + 10}" text-anchor="end">{top}</text>',
        f'<text x="{MARGIN_LEFT - 6}" y="{base}" text-anchor="end">0</text>',
    ]
    for index, (label, count) in enumerate(bars):
        height = plot_height * count / top
        x = MARGIN_LEFT + index * step
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{base - height:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{height:.1f}"><title>{escape(label)}: {count}</title></rect>'
        )
    # The first, middle and last labels; the outer ones are anchored inwards so that they stay inside the chart.
    labelled = {0: ("start", 0.0), len(bars) // 2: ("middle", 0.5), len(bars) - 1: ("end", 1.0)} if bars else {}
    for index, (anchor, where) in sorted(labelled.items()):
        x = MARGIN_LEFT + (index + where) * step
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="{anchor}">{escape(bars[index][0])}</text>')
    parts.append(f'<text x="{MARGIN_LEFT + plot_width / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle" class="caption">'
                 f"{escape(title)} (rows per bar)</text>")
    parts.append("</svg>")
    return "".join(parts)
