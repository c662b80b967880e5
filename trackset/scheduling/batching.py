"""How a run's videos are cut: into waves, into lanes of stages, and a round into tasks.

Pure arithmetic the wave planner (:mod:`trackset.scheduling.planner`) decides by; each
function's examples are its specification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trackset.domain import VideoRef


def chunk_videos(videos: int, slots: int, most: int) -> int:
    """Videos per task of a GPU round or a CPU stage: ``most`` (``cluster.gpu_task_videos``,
    ``cluster.cpu_task_videos``), fewer when the videos would otherwise give some of the
    ``slots`` (workers they may use) fewer than two tasks.

    Two tasks per slot at least leave Dask room to balance: with one chunk per slot, the
    slowest chunk holds up the stage while the other slots idle. A round of 6 videos on
    4 GPU slots went as 3 chunks of 2, so one GPU got 4 videos and the other 2 (BENCHMARKS.md,
    waves); an import of 5 videos on 2 CPU workers went as shards of 4 and 1.

    Examples:
        >>> chunk_videos(500, 16, 8), chunk_videos(100, 16, 8), chunk_videos(20, 16, 8), chunk_videos(6, 4, 8)
        (8, 3, 1, 1)
    """
    return max(1, min(most, videos // (2 * max(slots, 1))))


def round_parts(videos: int, slots: int, most: int) -> list[tuple[int, int]]:
    """A GPU round's tasks as (videos, videos per task) parts, submitted in this order:
    chunks of :func:`chunk_videos`, except the last ``slots`` chunks' worth of videos, which
    go in chunks of half that size.

    Dask starts the tasks in the order submitted, so the smaller chunks come last: the
    spread of the times the GPUs finish their last task, through which a GPU idles where
    the next stage cannot be queued beside this one, is half a chunk rather than a chunk
    (``bench/simulate.py``: 450 s of ViPE per 10-video chunk), for ~0.1 task runs more per
    100 videos of each stage.

    Examples:
        >>> round_parts(500, 8, 10), round_parts(6, 4, 10), round_parts(30, 2, 10)
        ([(420, 10), (80, 5)], [(6, 1)], [(14, 7), (16, 3)])
    """
    per_task = chunk_videos(videos, slots, most)
    if per_task == 1:
        return [(videos, 1)]
    body = max(videos - slots * per_task, 0) // per_task * per_task
    return [(count, size) for count, size in ((body, per_task), (videos - body, max(1, per_task // 2))) if count]


def split_lanes(stages: Sequence[str], uses_gpu: Callable[[str], bool]) -> tuple[list[str], list[str], list[str]]:
    """The CPU stages before the first GPU stage, the GPU stages, and the CPU stages after.

    Examples:
        >>> gpu = {"depth_camera", "tracks_3d", "hands"}.__contains__
        >>> split_lanes(["preprocess", "depth_camera", "tracks_3d", "hands", "h5_build"], gpu)
        (['preprocess'], ['depth_camera', 'tracks_3d', 'hands'], ['h5_build'])
        >>> split_lanes(["h5_build"], gpu)
        ([], [], ['h5_build'])
    """
    gpu = [i for i, stage in enumerate(stages) if uses_gpu(stage)]
    if not gpu:
        return [], [], list(stages)
    first, last = gpu[0], gpu[-1]
    if not all(uses_gpu(stage) for stage in stages[first : last + 1]):
        raise ValueError(f"CPU stages between GPU stages are not supported: {list(stages)}")
    return list(stages[:first]), list(stages[first : last + 1]), list(stages[last + 1 :])


def waves_of(videos: Sequence[VideoRef], size: int) -> list[list[VideoRef]]:
    """``videos`` in order, cut into waves of at most ``size``.

    Examples:
        >>> [len(w) for w in waves_of([VideoRef(f"{i:05d}", None, "") for i in range(5)], 2)]
        [2, 2, 1]
    """
    return [list(videos[i : i + size]) for i in range(0, len(videos), size)]
