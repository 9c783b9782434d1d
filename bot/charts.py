"""The stats chart: the period per day as a PNG, drawn by matplotlib without a display (call it off the loop)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, time

from bot.store.records import DayCounts  # a plain frozen dataclass: no I/O here

CHART_FILENAME = "helpdesk-bot-stats.png"
CHART_TYPE = "image/png"
# What is drawn, in this order (the first as bars), with colours that stay apart for the colour-blind (Okabe-Ito).
SERIES = (
    ("messages", "Messages", "#0072B2"),
    ("confident", "Confident answers", "#009E73"),
    ("helpful", "“Yes, this helped”", "#E69F00"),
    ("escalations", "Escalations", "#D55E00"),
)


def stats_chart(days: Sequence[DayCounts], period_days: int) -> bytes:
    """A PNG of the period per day: messages, confident answers, "Yes, this helped" and escalations.

    A Figure of its own with the Agg canvas, never pyplot: no display, no global state, safe in a thread."""
    # Imported here: matplotlib costs a second at start-up, and only the stats need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter, DayLocator, date2num
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # Matplotlib's own date numbers (days): what its date locators read, and plain floats for set_xlim.
    x = [float(date2num(datetime.combine(day.day, time()))) for day in days]
    for n, (field, label, colour) in enumerate(SERIES):
        y = [getattr(day, field) for day in days]
        if n == 0:
            # The messages as bars, the rest as lines over them: a line on a line of equal values would hide it.
            axes.bar(x, y, width=0.7, label=label, color=colour, alpha=0.35)
        else:
            axes.plot(x, y, label=label, color=colour, linewidth=2, marker="o" if len(days) <= 31 else None)
    # A tick per day for a week or two ("29 Nov"); past that, as many as read well.
    if len(days) <= 14:
        axes.xaxis.set_major_locator(DayLocator())
        axes.xaxis.set_major_formatter(DateFormatter("%d %b"))
    else:
        locator = AutoDateLocator(maxticks=10)
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    if x:
        # Half a day either side, so one day is a point in the middle and not a year of empty axis.
        axes.set_xlim(x[0] - 0.5, x[-1] + 0.5)
    axes.set_ylim(bottom=0, top=max([1, *(getattr(d, f) for d in days for f, _, _ in SERIES)]) * 1.1)
    axes.grid(axis="y", alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    axes.set_title(f"Helpdesk bot, last {period_days} day{'s' if period_days != 1 else ''} (per day, UTC)")
    # Under the plot, where it hides no day.
    handles, labels = axes.get_legend_handles_labels()
    order = [labels.index(label) for _, label, _ in SERIES]  # matplotlib lists the bars last
    figure.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside lower center",
        frameon=False,
        ncols=4,
    )
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
