"""Server-rendered SVG line charts for the dashboard (no script, no CDN): one polyline per
series over a shared x range, y scaled between fixed bounds."""

from __future__ import annotations

from dataclasses import dataclass

COLOURS = ("#1e6fd9", "#d9481e", "#1e7b34", "#8a3ffc", "#b28600", "#007d79", "#a2191f")


@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    points: str  # "x,y x,y ..." in the chart's pixels
    last: float | None  # the newest value, for the legend


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    lines: tuple[Line, ...]
    y_labels: tuple[tuple[float, str], ...]  # (pixel y, text)


def line_chart(series: dict[str, list[tuple[float, float]]], y_min: float = 0.0,
               y_max: float = 1.0, width: int = 640, height: int = 200,
               margin: int = 30) -> Chart:
    """``series``: name -> [(x, y)] (e.g. time, Dice); x spans all series."""
    xs = [x for values in series.values() for x, _ in values]
    x_min, x_max = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span_x = (x_max - x_min) or 1.0
    span_y = (y_max - y_min) or 1.0

    def pixel(x: float, y: float) -> str:
        px = margin + (x - x_min) / span_x * (width - 2 * margin)
        clipped = min(max(y, y_min), y_max)
        py = height - margin - (clipped - y_min) / span_y * (height - 2 * margin)
        return f"{px:.1f},{py:.1f}"

    lines = tuple(
        Line(name, COLOURS[index % len(COLOURS)],
             " ".join(pixel(x, y) for x, y in sorted(values)),
             sorted(values)[-1][1] if values else None)
        for index, (name, values) in enumerate(sorted(series.items())))
    ticks = tuple((height - margin - f * (height - 2 * margin), f"{y_min + f * span_y:g}")
                  for f in (0.0, 0.5, 1.0))
    return Chart(width, height, lines, ticks)
