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

W, H = 480, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 30, 44
MAX_BAR_W = 48


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


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

    for s in series:
        run: list[str] = []
        runs: list[list[str]] = []
        for i, v in enumerate(s.values):
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            x, y = xy(i, v)
            run.append(f"{x:.1f},{y:.1f}")
        if run:
            runs.append(run)
        for pts in runs:
            out.append(f'<polyline class="line" fill="none" stroke="{s.color}" points="{" ".join(pts)}"/>')
        for i, v in enumerate(s.values):
            if v is None:
                continue
            x, y = xy(i, v)
            note = f" ({s.notes[i]})" if s.notes else ""
            tip = f"{s.label} · {x_labels[i]}: {value_fmt(v)}{note}"
            out.append(
                f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{s.color}"><title>{escape(tip)}</title></circle>'
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
    for s in series:
        fracs = [
            0.0 if v is None else min(max(v / ax.scale, 0.0), 1.0)
            for v, ax in zip(s.values, axes, strict=True)
        ]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(i, f) for i, f in enumerate(fracs)))
        out.append(f'<polygon class="area" points="{pts}" fill="{s.color}" stroke="{s.color}"/>')
        for i, (v, ax) in enumerate(zip(s.values, axes, strict=True)):
            x, y = point(i, fracs[i])
            shown = "n/a" if v is None else ax.fmt(v)
            out.append(
                f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}">'
                f"<title>{escape(f'{s.label} · {ax.label}: {shown}')}</title></circle>"
            )
    out.append("</svg>")
    return "\n".join(out)


def legend(labels: Sequence[str]) -> str:
    items = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{color(i)}"></span>{escape(label)}</span>'
        for i, label in enumerate(labels)
    )
    return f'<div class="legend">{items}</div>'
