"""Start Prefect's temporary server while the CLI imports the flow, not after.

With no ``PREFECT_API_URL``, a flow starts a temporary server on its first API call and
waits for it (~4 s on 2 cores) after all of the flow's imports (dask, torch, the project)
have been paid. Started here, in a thread, the server's own process boots while those
imports run in this one. ``SubprocessASGIServer`` keeps one instance per port, so the
flow's client finds this one already running and uses it; it stops at exit as before.

Prefect's server module is imported in the caller's thread, before the thread starts:
two threads importing the same package tree at once can trip the import system's
deadlock detection. What overlaps is the server process's start-up, not an import.
"""

from __future__ import annotations

import threading
from typing import Any


class EarlyServer(threading.Thread):
    """The temporary server's start, in the background; :meth:`wait` before the flow runs.

    A start that fails is left to the flow: ``SubprocessASGIServer.start`` resets itself on
    error, so the flow's own call starts it again and raises Prefect's message if it fails.
    """

    def __init__(self, server: Any | None) -> None:
        super().__init__(name="prefect-temporary-server", daemon=True)
        self.server = server
        self.started_server = False

    @classmethod
    def start_if_needed(cls) -> EarlyServer:
        """Start the server in a thread, unless an API URL is set or ephemeral mode is off."""
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        server = None
        if not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()
        early = cls(server)
        early.start()
        return early

    def run(self) -> None:
        if self.server is None:
            return
        try:
            self.server.start()
        except Exception:  # the flow's own start raises it, with Prefect's message
            return
        self.started_server = True

    def wait(self) -> None:
        """Block until the start has finished: the flow must not start a second one meanwhile."""
        self.join()
