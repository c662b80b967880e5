"""Dask preload that lowers the CPU priority of the CPU workers a run starts.

On a machine whose cores are all busy, the CPU workers (the next wave's preprocessing, the
last wave's H5 files) compete with what feeds the GPUs: the GPU workers' own CPU side
(decoding, pre- and post-processing, Prefect's task start and end), the flow and the Prefect
server. A GPU left waiting for a core is the costlier loss, and the CPU lanes of a wave have
the whole of the next wave's GPU stages to finish in, so the CPU workers yield: their nice
value is raised by ``cluster.cpu_worker_nice`` (``nice(1)``), the rest keep the priority they
were started with.

Dask runs ``dask_setup`` in the worker process as it starts, on its event-loop thread; the
threads that run tasks are created from it later and inherit the value (Linux keeps the nice
value per thread; a new thread takes its creator's). For workers started by hand, ``nice -n
10 dask worker ...`` does the same (README "Several machines").
"""

from __future__ import annotations

import os
from typing import Any

import click

PRELOAD = "trackset.cluster.worker_priority"
"""The module name to give ``Nanny(preload=...)``."""


@click.command()
@click.option("--nice", type=click.IntRange(0, 19), default=0, help="increment of the worker's nice value")
def dask_setup(worker: Any, nice: int) -> None:
    """Add ``nice`` to this worker process's nice value."""
    os.nice(nice)
