"""A live display of each stage's progress while ``trackset run`` or ``demo`` runs the flow.

The flow already publishes a ``progress-<stage>`` artifact per stage and a ``progress-run``
for the whole run (``engine/submission.py``), updated at most once a second, each with a
line saying done of total, videos per hour, the ETA and GPU-hours so far and projected;
this display reads those back from the Prefect API in a thread, every :data:`POLL_S`
seconds, and draws a bar per stage with its line, the run's last. Reading the API rather
than hooking into the flow keeps the flow unaware of any terminal, and shows exactly what
the UI shows.

Which run's artifacts: those of flow runs that started after the display did (the CLI's
temporary server holds only this run; on a shared server a run started by someone else at
the same time would show too). The display draws on stderr, where Prefect's log lines go,
and routes those lines through its own console so they scroll above the bars instead of
tearing them. It is on only when both stdout and stderr are terminals, so tests, pipes and
CI logs get none of it, and it stops (thread joined, terminal restored) however the run ends.

Examples:
    >>> stage_label("progress-depth-camera"), stage_label("progress-run")
    ('depth-camera', 'run')
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NamedTuple, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

POLL_S = 1.0
CLOCK_SKEW_S = 2.0  # runs started this long before the display count too (the server's clock)
PROGRESS_PREFIX = "progress-"
RUN_LABEL = "run"  # ``progress-run``: the whole run (engine/submission.py)


class Line(NamedTuple):
    """A progress artifact as the display draws it: its percentage and its description."""

    percent: float
    text: str = ""


#: Reads ``{stage: line}`` once; raises when the API cannot be read (the poll tries again).
Fetch = Callable[[], dict[str, Line]]


def stage_label(key: str) -> str:
    """The stage a ``progress-<stage>`` key names."""
    return key.removeprefix(PROGRESS_PREFIX)


def wanted(stdout: TextIO, stderr: TextIO) -> bool:
    """A live display only for a person at a terminal (not for pipes, files, CI or tests)."""
    terminal = all(getattr(stream, "isatty", lambda: False)() for stream in (stdout, stderr))
    return terminal and os.environ.get("TERM") != "dumb" and not os.environ.get("CI")


def latest_progress(artifacts: Iterable[Any]) -> dict[str, Line]:
    """``{stage: line}`` from progress artifacts, in the order the stages first appear, the
    run's last.

    A key seen more than once (a stage of two runs) keeps its newest artifact.

    Examples:
        >>> from types import SimpleNamespace as A
        >>> lines = latest_progress([A(key="progress-run", data=60.0, created=0, description="ETA 2 min"),
        ...     A(key="progress-hands", data=50.0, created=2, description=None), A(key="progress-preprocess",
        ...     data=100.0, created=1, description="done"), A(key="progress-hands", data=10.0, created=0,
        ...     description=None), A(key="stage-hands", data="x", created=3, description=None)])
        >>> list(lines), lines["hands"], lines["run"]
        (['preprocess', 'hands', 'run'], Line(percent=50.0, text=''), Line(percent=60.0, text='ETA 2 min'))
    """
    newest: dict[str, Any] = {}
    for artifact in artifacts:
        key = artifact.key or ""
        if not key.startswith(PROGRESS_PREFIX) or not isinstance(artifact.data, int | float):
            continue
        if key not in newest or artifact.created > newest[key].created:
            newest[key] = artifact
    ordered = sorted(newest.values(), key=lambda a: (stage_label(a.key) == RUN_LABEL, a.created))
    return {stage_label(a.key): Line(float(a.data), a.description or "") for a in ordered}


def _api_url(configured: str | None) -> str | None:
    """The API the flow reports to: the one configured, or the temporary server the flow
    started in this process (None until it has: the display never starts one itself)."""
    from prefect.server.api.server import SubprocessASGIServer

    if configured:
        return configured
    server = SubprocessASGIServer()  # the process's one temporary server, shared with the flow
    return server.api_url if server.running else None


def api_fetch(since: datetime) -> Fetch:
    """A :data:`Fetch` over the progress artifacts of flow runs started after ``since``.

    The configured API is read here, in the caller's thread: settings set for a block of
    code (``temporary_settings``) do not reach the display's thread.
    """
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    configured = PREFECT_API_URL.value() or None
    auth = {"api_key": PREFECT_API_KEY.value(), "auth_string": PREFECT_API_AUTH_STRING.value()}

    def fetch() -> dict[str, Line]:
        url = _api_url(configured)
        if url is None:
            raise ConnectionError("the flow's Prefect server has not started yet")
        with SyncPrefectClient(url, **auth) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=f"{PROGRESS_PREFIX}%")),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
                sort=ArtifactSort.CREATED_DESC,
                limit=200,
            )
        return latest_progress(artifacts)

    return fetch


def _prefect_console_handlers() -> list[Any]:
    """Prefect's console log handlers (they print with a rich console of their own)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    return list({id(h): h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}.values())


class _StagesThenRun(Progress):
    """Rich's progress display with the run's row under the stages', whenever it appeared."""

    def get_renderables(self) -> Iterable[Any]:
        yield self.make_tasks_table(sorted(self.tasks, key=lambda task: task.description == RUN_LABEL))


class LiveProgress:
    """A bar per stage with its line, redrawn from :data:`Fetch` every ``interval_s`` in a thread.

    Use as a context manager around the flow call; on exit, however the body ends, the
    thread is stopped and joined, the bars are drawn once more and the terminal restored.
    """

    def __init__(self, fetch: Fetch, console: Console, interval_s: float = POLL_S) -> None:
        self.fetch = fetch
        self.console = console
        self.interval_s = interval_s
        self.progress = _StagesThenRun(
            TextColumn("{task.description:>14}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TextColumn("{task.fields[line]}"),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trackset-progress", daemon=True)
        self._handlers: list[tuple[Any, Console]] = []

    def poll(self) -> None:
        """Read the progress once and move the bars; a failed read changes nothing."""
        try:
            stages = self.fetch()
        except Exception:  # the server may be starting, busy or gone: the next poll retries
            return
        for stage, line in stages.items():
            if stage not in self._tasks:
                self._tasks[stage] = self.progress.add_task(stage, total=100.0, line="")
            self.progress.update(self._tasks[stage], completed=line.percent, line=line.text)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def __enter__(self) -> LiveProgress:
        for handler in _prefect_console_handlers():
            self._handlers.append((handler, handler.console))
            handler.console = self.console
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10 * self.interval_s)
        if exc_type is None:
            self.poll()
        self.progress.stop()
        for handler, console in self._handlers:
            handler.console = console
        self._handlers.clear()


def live_progress(console: Console, stdout: TextIO, stderr: TextIO) -> LiveProgress | None:
    """The display for a run starting now, or None where it is not wanted (:func:`wanted`)."""
    if not wanted(stdout, stderr):
        return None
    started = datetime.now(timezone.utc) - timedelta(seconds=CLOCK_SKEW_S)
    return LiveProgress(api_fetch(started), console)
