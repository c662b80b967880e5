"""Dask worker preload used by the tests: one video runs out of GPU memory in depth whenever
its task was sized to two workers per GPU, and fits at one.

Given to the flow as ``cluster.worker_preload``; the video id is ``TRACKSET_TEST_OOM_VIDEO``,
which spawned workers inherit. The round's size is the task's ``workers-per-gpu-<k>`` tag.
"""

from __future__ import annotations

import os

from distributed import Worker


def dask_setup(worker: Worker) -> None:
    import torch
    from prefect.runtime import task_run

    from trackset.stages.depth_camera import DepthCameraStage

    process = DepthCameraStage.process
    target = os.environ["TRACKSET_TEST_OOM_VIDEO"]

    def crowded(self: DepthCameraStage, video):  # type: ignore[no-untyped-def]
        if video.video_id == target and "workers-per-gpu-2" in task_run.tags:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (test preload on {worker.name})")
        return process(self, video)

    DepthCameraStage.process = crowded  # type: ignore[method-assign]
