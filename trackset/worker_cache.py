"""One loaded stage per worker process: models load once per worker, never once per video.

Dask workers are processes, so a module-level cache is exactly "per worker". The thread
runner shares one process, so the cache is guarded by a lock and a stage is set up once
for all its threads. The key includes a hash of the settings, so a run with other settings
never reuses a model loaded for the previous one.
"""

from __future__ import annotations

import hashlib
import threading
from importlib import import_module

from trackset.settings import Settings
from trackset.stages.base import Stage

STAGE_CLASSES: dict[str, str] = {
    "preprocess": "trackset.stages.preprocess:PreprocessStage",
    "depth_camera": "trackset.stages.depth_camera:DepthCameraStage",
    "tracks_3d": "trackset.stages.tracks_3d:Tracks3dStage",
    "hands": "trackset.stages.hands:HandsStage",
    "h5_build": "trackset.stages.h5_build:H5BuildStage",
}

_stages: dict[tuple[str, str], Stage] = {}
_lock = threading.Lock()


def settings_key(settings: Settings) -> str:
    """Hash of all settings, the cache key's second half."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def stage_class(name: str) -> type[Stage]:
    """The Stage class registered under ``name`` (imported lazily: stages pull in models)."""
    try:
        module_name, class_name = STAGE_CLASSES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGE_CLASSES)}") from None
    return getattr(import_module(module_name), class_name)


def get_stage(name: str, settings: Settings) -> Stage:
    """This process's set-up stage for ``name`` and ``settings``, creating it on first use."""
    key = (name, settings_key(settings))
    with _lock:
        stage = _stages.get(key)
        if stage is None:
            stage = stage_class(name)(settings)
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
