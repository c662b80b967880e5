"""One loaded stage per worker process: models load once per worker, never once per video.

Dask workers are processes, so a module-level cache is exactly "per worker". The thread
runner shares one process, so the cache is guarded by a lock and a stage is set up once
for all its threads. The key is the stage's config (:mod:`trackset.stages.config`): its
paths, its own section and what it reads, so a run that changes a setting of another
stage, the retries or the runner reuses the loaded model, and one that changes what this
stage computes gets a fresh one.

A process holds one GPU stage at a time: setting up a GPU stage tears down the others
first. A worker may take the next stage's first task while the flow still waits for the
current stage's last ones elsewhere (:mod:`trackset.scheduling.planner`), and the memory sizing
(:func:`trackset.gpu.sizing.stages_fit_together`) counts one model per worker, not two.
"""

from __future__ import annotations

import threading
from typing import Any

from trackset.stages.base import Stage
from trackset.stages.config import StageConfig
from trackset.stages.registry import GPU_STAGES, stage_class

_stages: dict[tuple[str, str], Stage[Any]] = {}
_lock = threading.Lock()


def get_stage(name: str, config: StageConfig) -> Stage[Any]:
    """This process's set-up stage for ``name`` and ``config``, creating it on first use."""
    key = (name, config.cache_key())
    with _lock:
        stage = _stages.get(key)
        if stage is None:
            if name in GPU_STAGES:
                for other in [k for k in _stages if k[0] in GPU_STAGES]:
                    _stages.pop(other).teardown()
            stage = stage_class(name)(config)
            stage.setup()
            _stages[key] = stage
        return stage


def release_stages(name: str | None = None) -> int:
    """Tear down cached stages (all, or those of one stage name); returns how many."""
    with _lock:
        keys = [key for key in _stages if name is None or key[0] == name]
        for key in keys:
            _stages.pop(key).teardown()
    return len(keys)
