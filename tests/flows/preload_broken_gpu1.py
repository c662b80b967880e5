"""Dask worker preload used by the tests: workers pinned to GPU 1 cannot load the depth model.

Given to the flow as ``cluster.worker_preload``; Dask runs ``dask_setup`` in each worker
process at start, so only the workers named ``gpu1-*`` are broken.
"""

from __future__ import annotations

from distributed import Worker


def dask_setup(worker: Worker) -> None:
    if str(worker.name).startswith("gpu1-"):
        from trackset.synthetic.backends import SyntheticDepthCamera

        def broken_load(self: SyntheticDepthCamera) -> None:
            raise RuntimeError(f"depth model weights unreadable on worker {worker.name}")

        SyntheticDepthCamera.load = broken_load  # type: ignore[method-assign]
