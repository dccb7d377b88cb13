"""python -m spark.bench: runs, reports ratios, writes JSON, fills the README block."""

from __future__ import annotations

import io
import itertools
import json
import re
import statistics
import sys

import pytest

from spark.bench.__main__ import README_END, README_START, main
from spark.bench._runner import Result
from spark.bench.scenarios import SCENARIOS

SMALL = ["--messages", "300", "--runs", "2", "--loops", "asyncio"]


def test_reports_every_contender_against_asyncio_queue(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--scenarios", "batch,pipeline-1", "--json", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("CPython ")
    assert "cores" in printed.splitlines()[0]
    document = json.loads(out.read_text())
    rows = document["results"]
    assert {r["scenario"] for r in rows} == {"batch", "pipeline-1"}
    assert {"python", "asyncio.Queue"} <= {r["contender"] for r in rows}
    samples = {(c["scenario"], c["contender"]): c["samples_ns"] for c in document["cells"]}
    for row in rows:
        # The ratio pairs each run with the baseline's run of the same round.
        own, base = (
            samples[row["scenario"], row["contender"]],
            samples[row["scenario"], "asyncio.Queue"],
        )
        per_round = sorted(a / b for a, b in zip(own, base, strict=True))
        assert row["ratio"] == pytest.approx(statistics.median(per_round))
        if row["contender"] == "asyncio.Queue":
            assert row["ratio"] == 1.0
    assert all(len(cell["samples_ns"]) == 2 for cell in document["cells"])


def test_channel_only_scenarios_use_their_own_baseline(tmp_path):
    out = tmp_path / "results.json"
    main(["--scenarios", "observer-1,create-message", "--json", str(out), *SMALL])
    rows = json.loads(out.read_text())["results"]
    assert {r["contender"] for r in rows} <= {"python", "cython"}
    assert {r["baseline"] for r in rows} == {"plain channel", "dataclass"}


def test_graph_scenarios_report_the_added_cost_per_node(tmp_path, capsys):
    out = tmp_path / "results.json"
    main(["--scenarios", "graph-user-otel", "--json", str(out), *SMALL])
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert {r["baseline"] for r in rows} == {"uninstrumented graph"}
    for row in rows:
        per_node = row["added_ns_per_message"] / 3
        assert f"{per_node:+,.0f} ns per node" in printed


def test_fills_the_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{README_START}\nold numbers\n{README_END}\ntail\n")
    main(["--scenarios", "batch", "--update-readme", str(readme), *SMALL])
    text = readme.read_text()
    assert "old numbers" not in text and text.endswith(f"{README_END}\ntail\n")
    assert "| batch | asyncio.Queue |" in text
    assert "python -m spark.bench --scenarios batch" in text


def test_side_by_side_reports_saved_runs_without_measuring(tmp_path, capsys):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    main(["--scenarios", "batch,observer-1", "--json", str(first), *SMALL])
    main(["--scenarios", "batch", "--json", str(second), *SMALL])
    document = json.loads(second.read_text())
    document["machine"] = re.sub(r"CPython [\d.]+", "CPython 9.9.0", document["machine"])
    second.write_text(json.dumps(document))
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\nold\n{README_END}\n")
    capsys.readouterr()
    main(["--side-by-side", str(first), str(second), "--update-readme", str(readme)])
    header = capsys.readouterr().out.splitlines()[0]
    assert "python (asyncio)" in header and "| 9.9 cython (asyncio) |" in header
    text = readme.read_text()
    assert "old" not in text and "--side-by-side" in text
    batch = next(line for line in text.splitlines() if line.startswith("| batch |"))
    assert batch.count("|") == 2 + 2 * 2 + 1  # scenario, baseline, 2 runs x 2 builds
    observer = next(line for line in text.splitlines() if line.startswith("| observer-1 |"))
    assert " ns)" in observer


def test_refuses_unknown_scenarios_and_loops(capsys):
    with pytest.raises(SystemExit):
        main(["--scenarios", "nope"])
    assert "unknown scenario" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown loop"):
        main(["--loops", "trio", "--scenarios", "batch"])


def test_every_scenario_moves_every_message():
    import asyncio

    from spark.bench.scenarios import (
        BASELINE_RUNS,
        available_contenders,
        make_messages,
        runs_in,
        verify,
    )

    loop = asyncio.new_event_loop()
    try:
        for contender in available_contenders():
            messages = make_messages(contender, 64)
            for scenario in SCENARIOS.values():
                if not runs_in(scenario, contender):
                    continue
                verify(loop.run_until_complete(scenario.run(contender, messages)), messages)
                baseline = BASELINE_RUNS.get(scenario.baseline)
                if baseline is not None and contender.is_channel:
                    loop.run_until_complete(baseline(contender, messages))
    finally:
        loop.close()


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_a_plain_line_per_round(capsys):
    main(["--scenarios", "batch", *SMALL])
    err = capsys.readouterr().err
    assert "\r" not in err
    rounds = [line for line in err.splitlines() if " done, " in line]
    assert [line.split(",")[0] for line in rounds] == [
        "asyncio: round 1/2 done",
        "asyncio: round 2/2 done",
    ]
    assert err.endswith("\n")


def test_progress_on_a_terminal_is_one_updating_line(monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    main(["--scenarios", "batch", *SMALL])
    written = terminal.getvalue()
    assert written.count("\r") > 2 and "\n" not in written
    assert written.endswith("\r")  # the line is wiped at the end
    assert "\r" not in capsys.readouterr().out


def test_json_dash_is_stdout_and_stdout_carries_only_the_json(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(["--scenarios", "batch", "--markdown", "--json", "-", *SMALL]) == 0
    out, err = capfd.readouterr()
    document = json.loads(out)
    assert {r["scenario"] for r in document["results"]} == {"batch"}
    assert not (tmp_path / "-").exists()
    # The human report is not lost: it goes to stderr.
    assert err.startswith("CPython ") and "| batch | asyncio.Queue |" in err


def test_plot_dash_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        main(["--scenarios", "batch", "--plot", "-", *SMALL])
    assert refused.value.code == 2 and "a file name" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


def test_help_says_what_json_dash_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'-' writes them to stdout" in text and "the report goes to stderr" in text


def _ratios(**by_scenario: float) -> list[Result]:
    rows = []
    for name, ratio in by_scenario.items():
        scenario = name.replace("_", "-")
        for loop in ("asyncio", "uvloop"):
            for contender, value in (
                ("cython", ratio),
                ("python", 1 / ratio),
                ("asyncio.Queue", 1),
            ):
                rows.append(
                    Result(
                        scenario, contender, loop, 100.0 * value, "asyncio.Queue", 100.0, value, 0.0
                    )
                )
    return rows


def test_chart_ticks_are_plain_numbers():
    pytest.importorskip("matplotlib")
    from spark.bench._runner import ratio_label

    assert [ratio_label(v) for v in (0.25, 0.5, 1.0, 2.0, 4.0, 1.5)] == [
        "0.25",
        "0.5",
        "1",
        "2",
        "4",
        "1.5",
    ]


def test_chart_bars_grow_from_1_with_plain_ticks_and_separate_labels():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spark.bench._runner import draw

    rows = _ratios(
        batch=0.25,
        alternating=0.3,
        pipeline_100=0.4,
        pipeline_1=0.45,
        ping_pong=0.8,
        fan_in_4=0.2,
        bridge=1.5,
        graph_user=0.5,
        graph_3=0.6,
    )
    figure = draw(rows, ["asyncio", "uvloop"], "a machine")
    try:
        figure.canvas.draw()
        (panel,) = figure.axes
        bars = panel.patches
        assert len(bars) == 9 * 2 * 2  # cython and python; asyncio.Queue is the 1 line
        expected = sorted(r.ratio for r in rows if r.contender != "asyncio.Queue")
        assert all(bar.get_y() == 1.0 for bar in bars)
        tops = sorted(bar.get_y() + bar.get_height() for bar in bars)
        assert tops == pytest.approx(expected)
        labels = [t.get_text() for t in panel.yaxis.get_majorticklabels()]
        assert {"0.25", "0.5", "1", "2"} <= set(labels)
        assert all(re.fullmatch(r"\d+(\.\d+)?", label) for label in labels), labels
        assert not any(t.get_text() for t in panel.yaxis.get_minorticklabels())
        renderer = figure.canvas.get_renderer()
        boxes = [label.get_window_extent(renderer) for label in panel.get_xticklabels()]
        assert len(boxes) == 18
        assert not any(a.overlaps(b) for a, b in itertools.pairwise(boxes))
    finally:
        plt.close(figure)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.png"
    main(["--scenarios", "batch,observer-1", "--plot", str(out), *SMALL])
    assert out.read_bytes().startswith(b"\x89PNG")
