"""Dask worker preload of the run-state tests: a worker-side trackset warning, and a hang.

Given to the flow as ``cluster.worker_preload``. In every worker, the synthetic hands model
logs a warning through a ``trackset`` logger for each video (inside the task, as a stage's
own warning would be), and never returns for a source named ``hang_*``: it loops in Python,
as a stage stuck retrying a stalled read would, until the video's time budget stops it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from distributed import Worker

WARNING = "e2e worker-side warning for video %s on %s"


def dask_setup(worker: Worker) -> None:
    from trackset.synthetic.backends import SyntheticHands

    original = SyntheticHands.infer
    logger = logging.getLogger("trackset.e2e")

    def infer(self: SyntheticHands, video: Any, *args: Any) -> Any:
        logger.warning(WARNING, video.video_id, worker.name)
        while Path(video.source).name.startswith("hang_"):
            time.sleep(0.05)
        return original(self, video, *args)

    SyntheticHands.infer = infer  # type: ignore[method-assign]
