"""Hand-rolled SVG charts (no charting library offline): grouped bars, lines, and a radar.

Each function returns one ``<svg>`` element as a string; every label is escaped. Charts scale
with their container (viewBox) and carry ``<title>`` tooltips with the exact values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

#: one colour per run (colour-blind friendly, Okabe-Ito)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

#: one stroke pattern per run, so that identical polygons / lines drawn over each other stay visible
DASHES = ("", "7 4", "2 3", "10 3 2 3", "4 4", "1 2")
#: how far apart points with the same value are drawn (SVG units)
OVERLAP_GAP = 7.0

W, H = 480, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 30, 44
MAX_BAR_W = 48


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def dash(i: int) -> str:
    """The ``stroke-dasharray`` attribute of the i-th run ("" for the first: solid)."""
    pattern = DASHES[i % len(DASHES)]
    return f' stroke-dasharray="{pattern}"' if pattern else ""


def spread_overlaps(points: Sequence[tuple[float, float] | None], gap: float = OVERLAP_GAP) -> list[float]:
    """Offsets (in units of ``gap``) that set points drawn at the same position side by side.

    Points of several series that would coincide (same position to 0.5 units) get offsets
    -k/2 .. +k/2 in series order, so every one is visible; a lone point gets 0.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(points):
        if p is not None:
            groups.setdefault((round(p[0] * 2), round(p[1] * 2)), []).append(i)
    offsets = [0.0] * len(points)
    for members in groups.values():
        for j, i in enumerate(members):
            offsets[i] = (j - (len(members) - 1) / 2) * gap
    return offsets


@dataclass
class Series:
    label: str
    values: Sequence[float | None]
    color: str
    #: per point, shown in the tooltip (e.g. "n=12")
    notes: Sequence[str] | None = None


def nice_ceil(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= x (axis maxima)."""
    if x <= 0:
        return 1.0
    exp = math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * 10**exp >= x - 1e-12:
            return m * 10**exp
    return 10 ** (exp + 1)


def tick_number(v: float) -> str:
    """Axis ticks: at most two decimals, no trailing zeros."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _open(cls: str, title: str, attrs: str = "") -> list[str]:
    return [
        f'<svg class="chart {cls}" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" {attrs}>',
        f'<text class="chart-title" x="{W / 2}" y="16" text-anchor="middle">{escape(title)}</text>',
    ]


def _y_axis(y_max: float, tick_fmt: Callable[[float], str], ticks: int = 4) -> list[str]:
    out = []
    plot_h = H - TOP - BOTTOM
    for i in range(ticks + 1):
        v = y_max * i / ticks
        y = TOP + plot_h * (1 - i / ticks)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{escape(tick_fmt(v))}</text>'
        )
    return out


def _x_label(x: float, text: str, n_categories: int) -> str:
    short = (
        text
        if len(text) <= max(4, 60 // max(n_categories, 1))
        else text[: max(3, 56 // max(n_categories, 1))] + "…"
    )
    return (
        f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">'
        f"<title>{escape(text)}</title>{escape(short)}</text>"
    )


def grouped_bars(
    categories: Sequence[str],
    series: Sequence[Series],
    title: str,
    value_fmt: Callable[[float], str] = lambda v: f"{100 * v:.1f}",
    y_max: float | None = None,
    x_title: str = "",
    cls: str = "bars",
    attrs: str = "",
    tick_fmt: Callable[[float], str] | None = None,
    tips: Sequence[str] | None = None,
) -> str:
    """One group of bars per category, one bar per series; ``None`` values draw no bar.

    ``tips``: a longer name per category for the tooltips (e.g. a histogram bin's range).
    """
    peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    top = y_max if y_max is not None else nice_ceil(peak * 1.05)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    group_w = plot_w / max(len(categories), 1)
    bar_w = min(group_w * 0.8 / max(len(series), 1), MAX_BAR_W)
    out = _open(cls, title, attrs) + _y_axis(top, tick_fmt or value_fmt)
    for ci, cat in enumerate(categories):
        x0 = LEFT + ci * group_w + (group_w - bar_w * len(series)) / 2
        for si, s in enumerate(series):
            v = s.values[ci]
            x = x0 + si * bar_w
            note = f" ({s.notes[ci]})" if s.notes else ""
            if v is None:
                out.append(
                    f'<text class="na" x="{x + bar_w / 2:.1f}" y="{TOP + plot_h - 3}" text-anchor="middle">n/a</text>'
                )
                continue
            h = plot_h * min(max(v / top, 0.0), 1.0)
            y = TOP + plot_h - h
            tip = f"{s.label} · {tips[ci] if tips else cat}: {value_fmt(v)}{note}"
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                f'fill="{s.color}"><title>{escape(tip)}</title></rect>'
            )
            if bar_w >= 16:
                out.append(
                    f'<text class="val" x="{x + bar_w / 2:.1f}" y="{y - 2:.1f}" text-anchor="middle">'
                    f"{escape(value_fmt(v))}</text>"
                )
        out.append(_x_label(LEFT + ci * group_w + group_w / 2, cat, len(categories)))
    return _close_with_x_axis(out, plot_w, plot_h, x_title)


def _close_with_x_axis(out: list[str], plot_w: float, plot_h: float, x_title: str | None) -> str:
    """The x axis line and title under a plot, then the closed SVG."""
    out.append(f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    if x_title:
        out.append(
            f'<text class="axis-title" x="{LEFT + plot_w / 2}" y="{H - 8}" text-anchor="middle">{escape(x_title)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def line_chart(
    x_labels: Sequence[str],
    series: Sequence[Series],
    title: str,
    value_fmt: Callable[[float], str] = lambda v: f"{100 * v:.0f}",
    y_max: float = 1.0,
    x_title: str = "",
    cls: str = "lines",
    tick_fmt: Callable[[float], str] | None = None,
) -> str:
    """A polyline per series over categorical x positions; gaps where a value is ``None``."""
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    step = plot_w / max(len(x_labels), 1)
    out = _open(cls, title) + _y_axis(y_max, tick_fmt or value_fmt)

    def xy(i: int, v: float) -> tuple[float, float]:
        return LEFT + step * (i + 0.5), TOP + plot_h * (1 - min(max(v / y_max, 0.0), 1.0))

    # per x position, the series whose points coincide are set side by side (same value: both visible)
    shift = [[0.0] * len(series) for _ in x_labels]
    for i in range(len(x_labels)):
        pts = [None if s.values[i] is None else xy(i, s.values[i]) for s in series]  # type: ignore[arg-type]
        shift[i] = spread_overlaps(pts, min(OVERLAP_GAP, step / max(len(series), 1)))
    for si, s in enumerate(series):
        run: list[str] = []
        runs: list[list[str]] = []
        for i, v in enumerate(s.values):
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            x, y = xy(i, v)
            run.append(f"{x + shift[i][si]:.1f},{y:.1f}")
        if run:
            runs.append(run)
        for pts in runs:
            out.append(
                f'<polyline class="line" fill="none" stroke="{s.color}"{dash(si)} points="{" ".join(pts)}"/>'
            )
        for i, v in enumerate(s.values):
            if v is None:
                continue
            x, y = xy(i, v)
            note = f" ({s.notes[i]})" if s.notes else ""
            tip = f"{s.label} · {x_labels[i]}: {value_fmt(v)}{note}"
            out.append(
                f'<circle class="pt" cx="{x + shift[i][si]:.1f}" cy="{y:.1f}" r="3.5" fill="{s.color}">'
                f"<title>{escape(tip)}</title></circle>"
            )
    for i, label in enumerate(x_labels):
        out.append(_x_label(LEFT + step * (i + 0.5), label, len(x_labels)))
    return _close_with_x_axis(out, plot_w, plot_h, x_title)


@dataclass
class RadarAxis:
    label: str
    #: the value drawn at the rim
    scale: float
    fmt: Callable[[float], str]


def radar(axes: Sequence[RadarAxis], series: Sequence[Series], title: str) -> str:
    """A closed polygon per series; each axis has its own scale (values beyond it are clipped)."""
    width, height, cx, cy, radius = 540, 400, 270, 210, 135
    n = len(axes)
    out = [
        f'<svg class="chart radar" id="radar" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text class="chart-title" x="{cx}" y="16" text-anchor="middle">{escape(title)}</text>',
    ]

    def point(i: int, frac: float) -> tuple[float, float]:
        angle = -math.pi / 2 + 2 * math.pi * i / n
        return cx + radius * frac * math.cos(angle), cy + radius * frac * math.sin(angle)

    for ring in (0.25, 0.5, 0.75, 1.0):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, ring) for i in range(n)))
        out.append(f'<polygon class="ring" fill="none" points="{pts}"/>')
    for i, axis in enumerate(axes):
        x, y = point(i, 1.0)
        out.append(f'<line class="spoke" x1="{cx}" y1="{cy}" x2="{x:.1f}" y2="{y:.1f}"/>')
        lx, ly = point(i, 1.18)
        anchor = "middle" if abs(lx - cx) < 20 else ("start" if lx > cx else "end")
        out.append(
            f'<text class="axis-label" x="{lx:.1f}" y="{ly + 4:.1f}" text-anchor="{anchor}">{escape(axis.label)}'
            f'<tspan class="tick" x="{lx:.1f}" dy="13">(rim {escape(axis.fmt(axis.scale))})</tspan></text>'
        )
    fracs_per_series = [
        [0.0 if v is None else min(max(v / ax.scale, 0.0), 1.0) for v, ax in zip(s.values, axes, strict=True)]
        for s in series
    ]
    # points of several runs at the same place (equal values) are set side by side, across the spoke
    shifts = [spread_overlaps([point(i, f[i]) for f in fracs_per_series]) for i in range(n)]
    for si, (s, fracs) in enumerate(zip(series, fracs_per_series, strict=True)):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, f) for i, f in enumerate(fracs)))
        out.append(f'<polygon class="area" points="{pts}" fill="{s.color}" stroke="{s.color}"{dash(si)}/>')
        for i, (v, ax) in enumerate(zip(s.values, axes, strict=True)):
            x, y = point(i, fracs[i])
            angle = -math.pi / 2 + 2 * math.pi * i / n
            d = shifts[i][si]
            x, y = x - d * math.sin(angle), y + d * math.cos(angle)
            shown = "n/a" if v is None else ax.fmt(v)
            same = [
                o.label
                for oi, o in enumerate(series)
                if oi != si and abs(fracs_per_series[oi][i] - fracs[i]) < 1e-9
            ]
            same_note = f" (same as {', '.join(same)}; drawn side by side)" if same else ""
            out.append(
                f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}" data-series="{si}">'
                f"<title>{escape(f'{s.label} · {ax.label}: {shown}{same_note}')}</title></circle>"
            )
    out.append("</svg>")
    return "\n".join(out)


def legend(labels: Sequence[str]) -> str:
    items = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{color(i)}"></span>{escape(label)}</span>'
        for i, label in enumerate(labels)
    )
    return f'<div class="legend">{items}</div>'


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    """Axis bounds around [lo, hi]: 0 included when the data are all of one sign and near it."""
    if lo > 0 and lo < 0.5 * hi:
        lo = 0.0
    if hi < 0 and hi > 0.5 * lo:
        hi = 0.0
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    span = nice_ceil((hi - lo) / 4)
    return math.floor(lo / span) * span, math.ceil(hi / span - 1e-9) * span


def _ticks_between(lo: float, hi: float, max_ticks: int = 5) -> list[float]:
    span = nice_ceil((hi - lo) / max_ticks)
    first = math.ceil(lo / span - 1e-9)
    return [k * span for k in range(first, math.floor(hi / span + 1e-9) + 1)]


@dataclass
class XYSeries:
    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str


#: above this many points a curve is drawn without a marker per point
MAX_MARKERS = 120


def step_chart(
    series: Sequence[XYSeries],
    title: str,
    value_fmt: Callable[[float], str] = tick_number,
    x_title: str = "step",
    cls: str = "lines steps",
    attrs: str = "",
) -> str:
    """Curves over a numeric x axis (training steps); gaps where a value is ``None``.

    The y range follows the data (negative rewards included); each point carries a tooltip with
    its step and value (curves of more than :data:`MAX_MARKERS` points: the line only).
    """
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    xs_all = [x for s in series for x, y in zip(s.xs, s.ys, strict=True) if y is not None]
    ys_all = [y for s in series for y in s.ys if y is not None]
    out = _open(cls, title, attrs)
    if not ys_all:
        out.append(f'<text class="na" x="{W / 2}" y="{H / 2}" text-anchor="middle">no values logged</text>')
        out.append("</svg>")
        return "\n".join(out)
    x_lo, x_hi = min(xs_all), max(xs_all)
    if x_hi - x_lo < 1e-12:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = _nice_range(min(ys_all), max(ys_all))

    def xy(x: float, y: float) -> tuple[float, float]:
        return LEFT + plot_w * (x - x_lo) / (x_hi - x_lo), TOP + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    for v in _ticks_between(y_lo, y_hi):
        _, y = xy(x_lo, v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{escape(value_fmt(v))}</text>'
        )
    for v in _ticks_between(x_lo, x_hi, 6):
        x, _ = xy(v, y_lo)
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">{escape(tick_number(v))}</text>'
        )
    for si, s in enumerate(series):
        runs: list[list[str]] = [[]]
        for x, y in zip(s.xs, s.ys, strict=True):
            if y is None:
                runs.append([])
                continue
            px, py = xy(x, y)
            runs[-1].append(f"{px:.1f},{py:.1f}")
        for pts in runs:
            if len(pts) > 1:
                out.append(
                    f'<polyline class="line" fill="none" stroke="{s.color}"{dash(si)} points="{" ".join(pts)}">'
                    f"<title>{escape(s.label)}</title></polyline>"
                )
        if sum(y is not None for y in s.ys) <= MAX_MARKERS:
            for x, y in zip(s.xs, s.ys, strict=True):
                if y is None:
                    continue
                px, py = xy(x, y)
                tip = f"{s.label} · step {tick_number(x)}: {value_fmt(y)}"
                out.append(
                    f'<circle class="pt" cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{s.color}">'
                    f"<title>{escape(tip)}</title></circle>"
                )
    return _close_with_x_axis(out, plot_w, plot_h, x_title)


@dataclass
class ScatterPoint:
    x: float
    y: float
    color: str
    #: the tooltip line of this point (e.g. question id and values)
    label: str
    group: str


def scatter(
    points: Sequence[ScatterPoint],
    title: str,
    x_title: str,
    y_title: str,
    x_fmt: Callable[[float], str] = tick_number,
    y_fmt: Callable[[float], str] = tick_number,
    y_max: float | None = None,
    cls: str = "scatter",
    attrs: str = "",
) -> str:
    """One dot per point. Points at the same position are drawn as one larger dot with the count
    written next to it and every point in its tooltip (nothing hides behind another); points of
    different groups at one position are set side by side."""
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    x_hi = nice_ceil(max((p.x for p in points), default=0.0) * 1.05) if points else 1.0
    y_hi = y_max if y_max is not None else nice_ceil(max((p.y for p in points), default=0.0) * 1.05)
    out = _open(cls, title, attrs) + _y_axis(y_hi, y_fmt)

    def xy(x: float, y: float) -> tuple[float, float]:
        return LEFT + plot_w * min(max(x / x_hi, 0.0), 1.0), TOP + plot_h * (1 - min(max(y / y_hi, 0.0), 1.0))

    for v in _ticks_between(0.0, x_hi, 6):
        x, _ = xy(v, 0.0)
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle">{escape(x_fmt(v))}</text>'
        )
    out.append(
        f'<text class="axis-title" x="14" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2:.1f})">{escape(y_title)}</text>'
    )
    # one mark per (group, position); marks of different groups at one position side by side
    marks: dict[tuple[str, int, int], list[ScatterPoint]] = {}
    for p in points:
        px, py = xy(p.x, p.y)
        marks.setdefault((p.group, round(px * 2), round(py * 2)), []).append(p)
    keys = list(marks)
    centres = [xy(marks[k][0].x, marks[k][0].y) for k in keys]
    shifts = spread_overlaps(centres, OVERLAP_GAP * 1.5)
    for key, (px, py), d in zip(keys, centres, shifts, strict=True):
        members = marks[key]
        first = members[0]
        r = 3.5 if len(members) == 1 else min(3.5 + 1.5 * math.sqrt(len(members)), 10)
        tip = "\n".join(m.label for m in members)
        if len(members) > 1:
            tip = f"{len(members)} questions here:\n{tip}"
        out.append(
            f'<circle class="pt dot" cx="{px + d:.1f}" cy="{py:.1f}" r="{r:.1f}" fill="{first.color}" '
            f'data-count="{len(members)}" data-group="{escape(first.group)}"><title>{escape(tip)}</title></circle>'
        )
        if len(members) > 1:
            out.append(
                f'<text class="count" x="{px + d + r + 1:.1f}" y="{py - r:.1f}">×{len(members)}</text>'
            )
    return _close_with_x_axis(out, plot_w, plot_h, x_title)
