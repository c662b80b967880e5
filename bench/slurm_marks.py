"""Dask worker preload of the SLURM tests and bench/slurm.py: each depth video a worker starts leaves a mark.

Given to the flow as ``cluster.worker_preload`` with ``TRACKSET_TEST_MARK_DIR`` set in the
environment (SLURM hands the jobs the environment of the process that submits them). Each
start of the depth stage on a video creates ``<dir>/<job id>.<worker>.<video file>.<pid>.<time_ns>``,
so a test or the benchmark sees when and which job runs what (and cancels one mid-task) and which videos ran twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from distributed import Worker


def dask_setup(worker: Worker) -> None:
    from trackset.synthetic.backends import SyntheticDepthCamera

    marks = Path(os.environ["TRACKSET_TEST_MARK_DIR"])
    job = os.environ.get("SLURM_JOB_ID", "local")
    original = SyntheticDepthCamera.infer

    def infer_and_mark(self, video, frames, meta):  # type: ignore[no-untyped-def]
        name = f"{job}.{worker.name}.{Path(video.source).name}.{os.getpid()}.{time.time_ns()}"
        (marks / name).touch()
        return original(self, video, frames, meta)

    SyntheticDepthCamera.infer = infer_and_mark  # type: ignore[method-assign]
