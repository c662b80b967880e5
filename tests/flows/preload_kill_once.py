"""Dask worker preload used by the fault tests: a worker dies in the middle of a depth task.

Given to the flow as ``cluster.worker_preload`` with ``TRACKSET_TEST_KILL_DIR`` set in the
environment (spawned workers inherit it). The first worker to start the depth stage on the
video named by ``TRACKSET_TEST_KILL_SOURCE`` claims ``<dir>/killed`` (exclusive create, so
it happens once across every worker and restart), writes its name and pid there, and
SIGKILLs its own process mid-task, as the kernel's out-of-memory killer or a lost node would.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from distributed import Worker


def dask_setup(worker: Worker) -> None:
    from trackset.synthetic.backends import SyntheticDepthCamera

    claim = Path(os.environ["TRACKSET_TEST_KILL_DIR"]) / "killed"
    victim = os.environ["TRACKSET_TEST_KILL_SOURCE"]
    original = SyntheticDepthCamera.infer

    def infer_or_die(self, video, frames, meta):  # type: ignore[no-untyped-def]
        if Path(video.source).name == victim:
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, f"{worker.name} {os.getpid()}".encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, video, frames, meta)

    SyntheticDepthCamera.infer = infer_or_die  # type: ignore[method-assign]
