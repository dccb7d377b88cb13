"""``python -m spark.bench``: how the channels compare with asyncio.Queue, here.

Prints a header naming the machine, then, for each scenario, the time per
message of every contender on every loop and its ratio to the baseline
measured in the same run (lower is better). With ``--json -`` the JSON is
the only thing on standard output, and that report goes to standard error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from ._runner import (
    LOOP_NAMES,
    available_loops,
    format_markdown,
    format_side_by_side,
    format_table,
    header,
    plot,
    read_json,
    write_json,
)
from ._runner import run as run_benchmarks
from .scenarios import SCENARIOS

QUICK_MESSAGES, QUICK_RUNS = 4_000, 5
FULL_MESSAGES, FULL_RUNS = 10_000, 7


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spark.bench",
        description="Compare spark-channels with asyncio.Queue (and anyio, aiochannel, janus when "
        "installed) on this machine. Ratios are time per message divided by the baseline's, "
        "measured in the same run: lower is better. The report goes to stdout, progress to "
        "stderr (a line per finished round when stderr is not a terminal).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages and runs (< 30 s)")
    parser.add_argument(
        "--scenarios",
        type=_names,
        default=list(SCENARIOS),
        help=f"comma-separated scenarios (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--loops",
        type=_names,
        default=list(LOOP_NAMES),
        help="comma-separated event loops (default: asyncio,uvloop)",
    )
    parser.add_argument(
        "--contenders",
        type=_names,
        default=None,
        help="comma-separated contenders (default: all available; asyncio.Queue always runs)",
    )
    parser.add_argument("--messages", type=int, default=None, help="messages per run")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per cell (median)")
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="also write every result and sample to FILE; '-' writes them to stdout, "
        "which then carries nothing but the JSON: the report goes to stderr",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw the ratios (needs matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown ratio table too")
    parser.add_argument(
        "--side-by-side",
        nargs="+",
        metavar="RESULTS.json",
        help="measure nothing: report runs saved with --json (say, one per CPython) side by side",
    )
    parser.add_argument(
        "--update-readme",
        metavar="FILE",
        help=f"replace the block between {README_START} and {README_END} in FILE with the results",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    if args.messages is None:
        args.messages = QUICK_MESSAGES if args.quick else FULL_MESSAGES
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else FULL_RUNS
    if args.messages < 1 or args.runs < 1:
        parser.error("--messages and --runs must be at least 1")
    if args.plot == "-":
        parser.error("--plot needs a file name: the chart is a PNG image")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install matplotlib")
    return args


README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def update_readme(path: str, section: str) -> None:
    """Put ``section`` between the bench markers of the file at ``path``."""
    with open(path, encoding="utf-8") as readme:
        text = readme.read()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no {README_START} ... {README_END} block to fill")
    text = text[: start + len(README_START)] + "\n" + section + "\n" + text[end:]
    with open(path, "w", encoding="utf-8") as readme:
        readme.write(text)


def side_by_side(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Report saved runs next to each other, labelled by their CPython version."""
    runs, machines = [], []
    for path in args.side_by_side:
        about, rows = read_json(path)
        found = re.search(r"CPython (\d+\.\d+)", about)
        runs.append((found.group(1) if found else path, rows))
        machines.append(about)
    table = format_side_by_side(runs)
    print(table)
    if args.update_readme:
        command = " ".join(["python -m spark.bench", *(argv if argv is not None else sys.argv[1:])])
        section = "\n".join(
            [f"Put together with `{command}` from runs on:", ""]
            + [f"- {about}" for about in machines]
            + ["", table]
        )
        update_readme(args.update_readme, section)
        print(f"results written into {args.update_readme}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side_by_side:
        return side_by_side(args, argv)
    loops = available_loops(args.loops)
    if not loops:
        print("no event loop to run on", file=sys.stderr)
        return 2
    # With --json -, stdout carries the JSON alone: everything else goes to stderr.
    report = sys.stderr if args.json == "-" else sys.stdout
    about = header()
    print(about, file=report)
    print(f"{args.messages:,} messages per run, median of {args.runs} runs per cell\n", file=report)
    report.flush()
    rows, cells = run_benchmarks(args.scenarios, loops, args.contenders, args.messages, args.runs)
    print(format_table(rows, loops), file=report)
    if args.markdown:
        print(format_markdown(rows, loops), file=report)
    if args.update_readme:
        command = " ".join(["python -m spark.bench", *(argv if argv is not None else sys.argv[1:])])
        section = "\n".join(
            [
                f"Measured with `{command}` on: {about}; "
                f"{args.messages:,} messages per run, median of {args.runs} runs per cell.",
                "",
                format_markdown(rows, loops),
            ]
        )
        update_readme(args.update_readme, section)
        print(f"results written into {args.update_readme}", file=report)
    if args.plot:
        plot(args.plot, rows, loops, about)
        print(f"chart written to {args.plot}", file=report)
    if args.json:
        write_json(args.json, rows, cells, about)
        if args.json != "-":
            print(f"results written to {args.json}", file=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
