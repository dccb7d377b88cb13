"""Runs the scenarios side by side and reports ns per message and ratios.

Every cell (scenario x contender x loop) is warmed up once, then timed
``runs`` times, round-robin: one run of every cell, then the next round
(in reverse order every other round), so that a noisy moment of the machine
hits every cell alike; each timed run follows a short untimed one of the
same cell, so that it starts warm. A cell's figure is the median of its runs. Its ratio
is the median, over the rounds, of its time divided by its baseline's time
in the same round: a contender and its baseline run moments apart, so a
slow spell of the machine that spans a round cancels out of the ratio.
What a contender adds to its baseline, in ns, is that ratio applied to the
baseline's fastest run: the cost on the machine at its least disturbed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from .scenarios import (
    BASELINE_RUNS,
    SCENARIOS,
    Contender,
    ScenarioRun,
    available_contenders,
    make_messages,
    runs_in,
    verify,
)

LOOP_NAMES = ("asyncio", "uvloop")
_REWARM = 200  # messages moved, untimed, right before each timed run


@dataclass
class Cell:
    """One scenario, one contender (or baseline), one loop: its timings."""

    scenario: str
    contender: str
    loop: str
    baseline_of: str | None = None
    """For a baseline cell, the contender whose baseline it is."""
    samples_ns: list[float] = field(default_factory=list)
    """Nanoseconds per message, one per timed run."""

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns)


@dataclass
class Result:
    """A row of the report: a contender's figure for a scenario on a loop."""

    scenario: str
    contender: str
    loop: str
    ns_per_message: float
    baseline: str
    baseline_ns_per_message: float
    ratio: float
    """Median over the rounds of own time / baseline time: lower is better."""
    added_ns_per_message: float
    """(ratio - 1) x the baseline's fastest run: the added cost on an undisturbed machine."""


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def available_loops(requested: Sequence[str]) -> list[str]:
    loops = []
    for name in requested:
        if name not in LOOP_NAMES:
            raise SystemExit(f"unknown loop {name!r}; choose from {', '.join(LOOP_NAMES)}")
        if name == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                print("uvloop is not installed: skipping it (pip install uvloop)", file=sys.stderr)
                continue
        loops.append(name)
    return loops


def header() -> str:
    """One line naming what the numbers were measured on."""
    versions = [f"CPython {platform.python_version()}"]
    try:
        import uvloop

        versions.append(f"uvloop {getattr(uvloop, '__version__', '?')}")
    except ImportError:
        versions.append("uvloop not installed")
    return (
        f"{', '.join(versions)}; {cpu_model()} ({os.cpu_count()} cores); "
        f"{platform.system()} {platform.machine()}"
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclass
class _Plan:
    cell: Cell
    run: ScenarioRun
    contender: Contender
    messages: list[Any]


def plan_cells(
    scenarios: Sequence[str], contenders: Sequence[Contender], loop: str, messages: int
) -> list[_Plan]:
    plans = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        for contender in contenders:
            if not runs_in(scenario, contender):
                continue
            prebuilt = make_messages(contender, messages)
            plans.append(_Plan(Cell(name, contender.name, loop), scenario.run, contender, prebuilt))
            if scenario.baseline in BASELINE_RUNS:
                baseline = Cell(name, scenario.baseline, loop, baseline_of=contender.name)
                plans.append(_Plan(baseline, BASELINE_RUNS[scenario.baseline], contender, prebuilt))
    return plans


def measure(
    plans: Sequence[_Plan],
    loop: asyncio.AbstractEventLoop,
    runs: int,
    progress: Callable[[int, _Plan], None],
    round_done: Callable[[int, int], None] = lambda round_, done: None,
) -> None:
    """Time every plan ``runs`` times, in rounds.

    ``progress(done, plan)`` is called before each timed run and
    ``round_done(round_, done)`` after each round (``round_`` counts from 1).
    """
    for plan in plans:  # warm-up: not timed
        loop.run_until_complete(plan.run(plan.contender, plan.messages[:1000]))
    done = 0
    for round_ in range(runs):
        for plan in plans if round_ % 2 == 0 else reversed(plans):
            progress(done, plan)
            # A short untimed run first, so that the timed one does not pay for
            # the caches and branch history the previous cell left behind.
            loop.run_until_complete(plan.run(plan.contender, plan.messages[:_REWARM]))
            started = time.perf_counter()
            received = loop.run_until_complete(plan.run(plan.contender, plan.messages))
            elapsed = time.perf_counter() - started
            verify(received, plan.messages)
            plan.cell.samples_ns.append(elapsed * 1e9 / len(plan.messages))
            done += 1
        round_done(round_ + 1, done)


def results(cells: Sequence[Cell]) -> list[Result]:
    """Pair each contender cell with its baseline cell."""
    by_key = {(c.scenario, c.contender, c.loop, c.baseline_of): c for c in cells}
    rows = []
    for cell in cells:
        if cell.baseline_of is not None:
            continue
        scenario = SCENARIOS[cell.scenario]
        if scenario.baseline in BASELINE_RUNS:
            base = by_key.get((cell.scenario, scenario.baseline, cell.loop, cell.contender))
        else:
            base = by_key.get((cell.scenario, scenario.baseline, cell.loop, None))
        if base is None:
            continue
        paired = zip(cell.samples_ns, base.samples_ns, strict=True)
        ratio = statistics.median(own / theirs for own, theirs in paired)
        rows.append(
            Result(
                scenario=cell.scenario,
                contender=cell.contender,
                loop=cell.loop,
                ns_per_message=cell.median_ns,
                baseline=scenario.baseline,
                baseline_ns_per_message=base.median_ns,
                ratio=ratio,
                added_ns_per_message=(ratio - 1) * min(base.samples_ns),
            )
        )
    return rows


def format_table(rows: Sequence[Result], loops: Sequence[str]) -> str:
    """Rows: contenders. Columns: scenario and loop. Each cell: ns/message and ratio.

    Against a baseline of the same build, a cell also gives the added ns per message.
    """
    contenders = list(dict.fromkeys(r.contender for r in rows))
    lookup = {(r.scenario, r.contender, r.loop): r for r in rows}
    lines = []
    for name in dict.fromkeys(r.scenario for r in rows):
        scenario = SCENARIOS[name]
        lines.append(f"{name}: {scenario.description} (ratio against {scenario.baseline})")
        width = max(len(c) for c in contenders)
        lines.append("  " + " " * width + "".join(f"  {loop:>32}" for loop in loops))
        for contender in contenders:
            cells = []
            for loop in loops:
                row = lookup.get((name, contender, loop))
                if row is None:
                    cells.append(f"  {'-':>32}")
                    continue
                figure = f"{row.ns_per_message:,.0f} ns  x{row.ratio:.2f}"
                if row.baseline in BASELINE_RUNS:
                    figure += f" ({_added(row)})"
                cells.append(f"  {figure:>32}")
            if any(cell.strip() != "-" for cell in cells):
                lines.append(f"  {contender:<{width}}" + "".join(cells))
        lines.append("")
    return "\n".join(lines)


def _added(row: Result) -> str:
    """The ns a scenario adds to its own-build baseline, per message, and per node for a graph."""
    added = f"{row.added_ns_per_message:+,.0f} ns"
    nodes = SCENARIOS[row.scenario].nodes
    if nodes:
        added += f", {row.added_ns_per_message / nodes:+,.0f} ns per node"
    return added


def format_markdown(rows: Sequence[Result], loops: Sequence[str]) -> str:
    """A Markdown table of the ratios: scenarios as rows, contender and loop as columns.

    Against a baseline of the same build (observers, forwarding), a cell also
    says how many nanoseconds per message the scenario adds to it.
    """
    contenders = list(dict.fromkeys(r.contender for r in rows))
    lookup = {(r.scenario, r.contender, r.loop): r for r in rows}
    columns = [(c, loop) for c in contenders for loop in loops]
    return _ratio_table(
        list(dict.fromkeys(r.scenario for r in rows)),
        [f"{c} ({loop})" for c, loop in columns],
        lambda name: [lookup.get((name, c, loop)) for c, loop in columns],
    )


def _ratio_table(
    scenarios: Sequence[str],
    headings: Sequence[str],
    rows_of: Callable[[str], Sequence[Result | None]],
) -> str:
    """Markdown: a row per scenario, a column per heading; ``rows_of(scenario)`` fills a row.

    A cell is the ratio, plus the added ns where the baseline is our own build.
    """
    lines = [
        "| scenario | baseline | " + " | ".join(headings) + " |",
        "| --- | --- |" + " --- |" * len(headings),
    ]
    for name in scenarios:
        cells = []
        for row in rows_of(name):
            if row is None:
                cells.append("")
            elif row.baseline in BASELINE_RUNS:
                cells.append(f"{row.ratio:.2f} ({_added(row)})")
            else:
                cells.append(f"{row.ratio:.2f}")
        lines.append(f"| {name} | {SCENARIOS[name].baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_side_by_side(
    runs: Sequence[tuple[str, Sequence[Result]]],
    contenders: Sequence[str] = ("cython", "python"),
) -> str:
    """A Markdown table of several saved runs (say, two CPythons) next to each other.

    ``runs`` pairs a label with its results; columns are label, contender
    and loop, for the given contenders; rows are scenarios.
    """
    columns = []
    for label, rows in runs:
        loops = list(dict.fromkeys(r.loop for r in rows))
        present = [c for c in contenders if any(r.contender == c for r in rows)]
        columns += [(label, contender, loop) for contender in present for loop in loops]
    lookup = {(label, r.scenario, r.contender, r.loop): r for label, rows in runs for r in rows}
    return _ratio_table(
        list(dict.fromkeys(r.scenario for _, rows in runs for r in rows)),
        [f"{label} {c} ({loop})" for label, c, loop in columns],
        lambda name: [lookup.get((label, name, c, loop)) for label, c, loop in columns],
    )


def read_json(path: str) -> tuple[str, list[Result]]:
    """What ``write_json`` wrote: the machine line and the results."""
    with open(path, encoding="utf-8") as source:
        document = json.load(source)
    return document["machine"], [Result(**row) for row in document["results"]]


def write_json(path: str, rows: Sequence[Result], cells: Sequence[Cell], about: str) -> None:
    """Every result and sample, as JSON, into the file at ``path`` (``-``: standard output)."""
    document = {
        "machine": about,
        "results": [asdict(r) for r in rows],
        "cells": [asdict(c) for c in cells],
    }
    if path == "-":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    with open(path, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=2)


def ratio_label(value: float, position: object = None) -> str:
    """A ratio as a plain number for a tick label: 0.25, 0.5, 1, 2 (never 2x10^0)."""
    return f"{value:g}"


def ratio_ticks(low: float, high: float) -> list[float]:
    """Ticks for a log axis from ``low`` to ``high``: powers of two, or finer round numbers.

    Powers of two (0.25, 0.5, 1, 2, 4) when there are four of them or more;
    for a narrower range, 1, 1.5, 2, 2.5, 3, 4, 5, 6 and 7.5 times a power of ten.
    """
    ticks = [t for t in (2.0**k for k in range(-12, 13)) if low <= t <= high]
    if len(ticks) < 4:
        steps = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7.5)
        round_numbers = (float(f"{m * 10.0**k:.6g}") for k in range(-4, 5) for m in steps)
        ticks = [t for t in round_numbers if low <= t <= high]
    return ticks


def draw(rows: Sequence[Result], loops: Sequence[str], about: str) -> Any:
    """The chart of ``plot`` as a matplotlib Figure: one panel per kind of baseline.

    Each bar grows from the baseline's 1.0 line, up when slower, down when
    faster, on a log scale: a ratio of 0.25 and one of 4 are as far from 1.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    baselines = list(dict.fromkeys(r.baseline for r in rows))
    scenarios_of = {
        b: list(dict.fromkeys(r.scenario for r in rows if r.baseline == b)) for b in baselines
    }
    most = max(len(names) * len(loops) for names in scenarios_of.values())
    # Room for every group of bars; the x labels stand upright, so they cannot run together.
    figure, panels = plt.subplots(
        len(baselines),
        1,
        figsize=(max(8.0, 3.0 + 0.45 * most), 4.2 * len(baselines)),
        squeeze=False,
        layout="constrained",
    )
    for panel, baseline in zip([p[0] for p in panels], baselines, strict=True):
        chosen = [r for r in rows if r.baseline == baseline]
        # The baseline itself is the 1.0 line, not a bar.
        contenders = [c for c in dict.fromkeys(r.contender for r in chosen) if c != baseline]
        groups = [(s, loop) for s in scenarios_of[baseline] for loop in loops]
        lookup = {(r.scenario, r.contender, r.loop): r.ratio for r in chosen}
        width = 0.8 / max(len(contenders), 1)
        for i, contender in enumerate(contenders):
            xs = [g + i * width for g in range(len(groups))]
            ratios = [lookup.get((s, contender, loop), float("nan")) for s, loop in groups]
            panel.bar(xs, [r - 1.0 for r in ratios], width, bottom=1.0, label=contender)
        panel.axhline(1.0, color="black", linewidth=0.8, label=f"{baseline} = 1")
        panel.set_yscale("log")
        shown = [r.ratio for r in chosen] + [1.0]
        low, high = min(shown) / 1.15, max(shown) * 1.15
        panel.set_ylim(low, high)
        panel.yaxis.set_major_locator(FixedLocator(ratio_ticks(low, high)))
        panel.yaxis.set_major_formatter(FuncFormatter(ratio_label))
        panel.yaxis.set_minor_locator(NullLocator())
        panel.yaxis.set_minor_formatter(NullFormatter())
        panel.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
        labels = [f"{s} ({loop})" if len(loops) > 1 else s for s, loop in groups]
        panel.set_xticklabels(labels, fontsize=7, rotation=90)
        panel.set_xlim(-0.5, len(groups))
        panel.set_ylabel(f"time / {baseline}", fontsize=8)
        panel.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    figure.suptitle(
        f"{about}\nratio of time per message to the baseline (log scale, lower is better; "
        "bars grow from the baseline's 1)",
        fontsize=8,
    )
    return figure


def plot(path: str, rows: Sequence[Result], loops: Sequence[str], about: str) -> None:
    """Write the chart of the ratios (``draw``) as a PNG to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "--plot needs matplotlib: pip install 'spark-channels[plot]' or matplotlib"
        ) from None
    figure = draw(rows, loops, about)
    figure.savefig(path, dpi=110)
    plt.close(figure)


class Progress:
    """Progress on ``stream``: one updating ``\\r`` line on a terminal.

    Anywhere else (a log file, a pipe, CI) a ``\\r`` line would pile up as
    one garbled line, so it writes a plain line per finished round instead.
    """

    def __init__(self, total: int, stream: TextIO, live: bool | None = None) -> None:
        self.total = total
        self.stream = stream
        self.live = _isatty(stream) if live is None else live
        self.started = time.monotonic()

    def __call__(self, offset: int, done: int, plan: _Plan) -> None:
        """Before each timed run: ``done`` runs of this loop are over, ``offset`` before it."""
        if not self.live:
            return
        cell = plan.cell
        who = cell.contender if cell.baseline_of is None else f"{cell.baseline_of} baseline"
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"\r[{offset + done + 1}/{self.total}] {elapsed:5.1f}s {cell.loop:<7} "
            f"{cell.scenario:<18} {who:<24}"
        )
        self.stream.flush()

    def round_done(self, loop: str, runs: int, offset: int, round_: int, done: int) -> None:
        """After round ``round_`` of ``runs`` on ``loop``: a line, unless on a terminal."""
        if self.live:
            return
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"{loop}: round {round_}/{runs} done, "
            f"{offset + done}/{self.total} timed runs, {elapsed:.1f}s\n"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def run(
    scenarios: Sequence[str],
    loops: Sequence[str],
    contender_names: Sequence[str] | None,
    messages: int,
    runs: int,
    stream: TextIO | None = None,
) -> tuple[list[Result], list[Cell]]:
    """Measure; progress goes to ``stream`` (default: ``sys.stderr`` at the time of the call)."""
    contenders = available_contenders()
    if contender_names is not None:
        known = {c.name for c in contenders}
        unknown = [name for name in contender_names if name not in known]
        if unknown:
            raise SystemExit(
                f"unknown or unavailable contender(s) {', '.join(unknown)}; "
                f"available here: {', '.join(sorted(known))}"
            )
        contenders = [c for c in contenders if c.name in contender_names]
    if "asyncio.Queue" not in {c.name for c in contenders}:
        contenders.append(next(c for c in available_contenders() if c.name == "asyncio.Queue"))
    all_plans = {loop: plan_cells(scenarios, contenders, loop, messages) for loop in loops}
    total = sum(len(plans) for plans in all_plans.values()) * runs
    progress = Progress(total, sys.stderr if stream is None else stream)
    offset = 0
    cells: list[Cell] = []
    try:
        for loop_name, plans in all_plans.items():
            loop = new_loop(loop_name)
            asyncio.set_event_loop(loop)
            try:
                measure(
                    plans,
                    loop,
                    runs,
                    functools.partial(progress, offset),
                    functools.partial(progress.round_done, loop_name, runs, offset),
                )
            finally:
                asyncio.set_event_loop(None)
                loop.close()
            offset += len(plans) * runs
            cells += [plan.cell for plan in plans]
    finally:
        progress.close()
    return results(cells), cells
