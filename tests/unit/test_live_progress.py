"""The live per-stage display of ``trackset run``: on only at a terminal, bars from the fetched
progress, Prefect's log lines routed above them, and a clean stop however the run ends.

The display's reading of a real server is checked in ``tests/flows/test_cli.py``.
"""

from __future__ import annotations

import io
import itertools
import logging
import threading
import time

import pytest
from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console

from trackset.flows.live_progress import Line, LiveProgress, live_progress, wanted


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_env(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def screen() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=100)


def test_only_a_terminal_gets_a_display(terminal_env, monkeypatch):
    assert wanted(Terminal(), Terminal())
    assert not wanted(io.StringIO(), Terminal())  # stdout piped or captured (tests)
    assert not wanted(Terminal(), io.StringIO())
    assert live_progress(screen(), io.StringIO(), io.StringIO()) is None
    monkeypatch.setenv("CI", "true")
    assert not wanted(Terminal(), Terminal())
    monkeypatch.setenv("CI", "")
    monkeypatch.setenv("TERM", "dumb")
    assert not wanted(Terminal(), Terminal())


class Script:
    """A fetch that fails while the server starts, then reports growing progress."""

    def __init__(self) -> None:
        self.calls = 0
        self.enough = threading.Event()

    def __call__(self) -> dict[str, Line]:
        self.calls += 1
        if self.calls <= 2:
            raise ConnectionError("not up yet")
        if self.calls >= 6:
            self.enough.set()
        depth = min(100.0, 20.0 * (self.calls - 2))
        return {
            "run": Line(depth / 2, f"ETA {100 - depth:.0f} s"),  # the run's artifact can come first
            "preprocess": Line(100.0, "24 of 24 videos · 2,880 videos/h · done"),
            "depth-camera": Line(depth, f"{depth / 100 * 24:.0f} of 24 videos"),
        }


def test_bars_follow_the_fetched_progress_and_stop_with_the_run():
    fetch, console = Script(), screen()
    display = LiveProgress(fetch, console, interval_s=0.01)
    with display:
        assert fetch.enough.wait(10)
    assert not display._thread.is_alive()
    tasks = {task.description: task.completed for task in display.progress.tasks}
    assert tasks == {"run": 50.0, "preprocess": 100.0, "depth-camera": 100.0}
    text = console.file.getvalue()
    assert "preprocess" in text and "depth-camera" in text and "100%" in text


def test_each_bar_shows_its_line_and_the_run_comes_under_the_stages():
    lines = {
        "run": Line(40.0, "10 of 24 videos through every stage · 80 videos/h · ETA 11 min"),
        "preprocess": Line(100.0, "24 of 24 videos · 2,880 videos/h · done"),
        "hands": Line(25.0, "6 of 24 videos · 90 videos/h · ETA 11 min · 0.02 GPU-h so far, 0.06 projected"),
    }
    console = Console(file=io.StringIO(), force_terminal=False, width=160)
    display = LiveProgress(lambda: lines, console, interval_s=60)
    display.poll()
    console.print(*display.progress.get_renderables())
    rows = [row for row in console.file.getvalue().splitlines() if row.strip()]
    assert [row.split()[0] for row in rows] == ["preprocess", "hands", "run"]
    for row, line in zip(rows, (lines["preprocess"], lines["hands"], lines["run"]), strict=True):
        assert row.rstrip().endswith(line.text)


def test_an_error_in_the_run_stops_the_display_and_propagates():
    fetch = Script()
    display = LiveProgress(fetch, screen(), interval_s=0.01)
    with pytest.raises(RuntimeError, match="the flow broke"), display:
        fetch.enough.wait(10)
        raise RuntimeError("the flow broke")
    assert not display._thread.is_alive()
    assert not display.progress.live.is_started


def test_prefect_log_lines_print_through_the_display_and_get_their_console_back():
    logger = logging.getLogger("prefect.test_live_progress")
    handler = PrefectConsoleHandler(stream=io.StringIO())
    own = handler.console
    logger.addHandler(handler)
    try:
        console = screen()
        with LiveProgress(lambda: {}, console, interval_s=0.01):
            assert handler.console is console
            logger.warning("a log line during the run")
        assert handler.console is own
        assert "a log line during the run" in console.file.getvalue()
    finally:
        logger.removeHandler(handler)


def test_the_display_reads_at_most_once_an_interval_and_keeps_a_bar_per_stage():
    # A run of days polls the API for days: each read is one request, spaced by the interval,
    # and however many reads, the display holds one bar per stage and the run's.
    reads: list[float] = []

    def fetch() -> dict[str, Line]:
        reads.append(time.monotonic())
        n = len(reads)
        return {"preprocess": Line(100.0, "done"), "hands": Line(n % 100, f"{n} of 10,000 videos"), "run": Line(1.0)}

    display = LiveProgress(fetch, screen(), interval_s=0.05)
    with display:
        time.sleep(0.5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(reads[:-1])]  # the last: the read at exit
    assert 3 <= len(reads) <= 0.5 / 0.05 + 2 and min(gaps) >= 0.045
    for _ in range(1000):
        display.poll()
    assert [task.description for task in display.progress.tasks] == ["preprocess", "hands", "run"]
