"""Server-side SVG bar charts (no JavaScript): stacked bars per day."""
from __future__ import annotations

from html import escape


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 4, 5, 8, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def stacked_bars(labels: list[str], series: list[tuple[str, str, list[float]]], *,
                 title: str, width: int = 760, height: int = 240) -> str:
    """An SVG stacked bar chart: one bar per label, one colour per series
    (``(name, colour, values)``), with a y axis, a few x labels and a legend."""
    left, right, top, bottom = 56, 12, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(labels), 1)
    totals = [sum(s[2][i] for s in series) for i in range(len(labels))]
    ymax = _nice_max(max(totals, default=0))
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i in range(5):  # horizontal grid and y labels
        value = ymax * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                   f'stroke="#ddd" stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                   f'fill="#555">{_fmt(value)}</text>')
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar_w) / 2
        base = top + plot_h
        for name, colour, values in series:
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / ymax
            base -= h
            out.append(f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" '
                       f'height="{h:.1f}" fill="{escape(colour)}">'
                       f'<title>{escape(label)} {escape(name)}: {_fmt(v)}</title></rect>')
        if i in (0, n // 2, n - 1):
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" '
                       f'text-anchor="middle" font-size="11" fill="#555">'
                       f'{escape(label)}</text>')
    lx = left
    for name, colour, _values in series:
        out.append(f'<rect x="{lx}" y="8" width="12" height="12" fill="{escape(colour)}"/>'
                   f'<text x="{lx + 16}" y="18" font-size="12" fill="#333">{escape(name)}</text>')
        lx += 24 + 8 * len(name)
    out.append("</svg>")
    return "".join(out)


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


# Distinct series colours (Tableau 10), in order; repeated past ten series.
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2",
           "#ff9da6", "#9d755d", "#bab0ac")


def palette(i: int) -> str:
    """The colour of the ``i``-th series of a chart."""
    return PALETTE[i % len(PALETTE)]
