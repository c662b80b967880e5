"""The ``profile-memory`` subflow ships a small, constant context with each task (fast suite)."""

from __future__ import annotations

from pathlib import Path

import cloudpickle
from prefect.context import serialize_context

import trackset.flows.profile_memory as profile_memory_module
from trackset.config.settings import Settings
from trackset.domain import VideoRef
from trackset.flows.profile_memory import profile_memory
from trackset.scheduling.worklist import WorkList
from trackset.stages.registry import stage_config


def test_task_context_does_not_grow_with_the_videos_of_the_subflow(monkeypatch):
    """Prefect pickles the flow run's parameters into every task it submits (trackset.scheduling.worklist)."""
    context_bytes: dict[int, int] = {}

    def measure(stage, videos, config, retry, resources):  # what each task would ship
        context_bytes[len(videos)] = len(cloudpickle.dumps(serialize_context()))
        return []

    monkeypatch.setattr(profile_memory_module, "run_and_report", measure)
    refs = [VideoRef(f"{i:05d}", Path(f"/data/videos/take_{i:05d}.mp4"), "ab" * 32) for i in range(2000)]
    for count in (1, 2000):
        with WorkList.written("h5_build", refs[:count]) as work:
            profile_memory("hands", work, stage_config("hands", Settings()), Settings().retry)
    # With the videos as a parameter, 2,000 of them added ~350 KB to every task's context.
    assert context_bytes[2000] - context_bytes[1] < 1000, context_bytes
