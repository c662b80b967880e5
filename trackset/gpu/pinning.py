"""Which GPU this process is pinned to.

The cluster's worker specs (:mod:`trackset.cluster.worker_spec`) pin each GPU worker with
``CUDA_VISIBLE_DEVICES``; the device code reads it back here, so the GPU room does not
depend on the cluster room.
"""

from __future__ import annotations

import os


def visible_gpu_index(default: int = 0) -> int:
    """This process's GPU: the first entry of ``CUDA_VISIBLE_DEVICES``, else ``default``.

    The worker specs above pin each GPU worker with a single index, so the first entry is
    the worker's physical GPU and its NVML index. Read it inside tasks or worker setup,
    never at import time: ``Nanny(env=...)`` applies after the worker imports its modules.

    Raises:
        ValueError: the variable is set but empty (a CPU worker) or not an index (a UUID).

    Examples:
        >>> from unittest.mock import patch
        >>> with patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "3,1"}):
        ...     visible_gpu_index()
        3
    """
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return default
    first = value.split(",")[0].strip()
    if not first.isdigit():
        raise ValueError(f"CUDA_VISIBLE_DEVICES={value!r}: expected a GPU index as its first entry")
    return int(first)
