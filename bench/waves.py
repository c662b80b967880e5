"""Waves benchmark: one barrier against waves with overlap, on stages that take real time.

    .venv/bin/python bench/waves.py --videos 24 --wave-size 6 --out /tmp/trackset-bench-waves

Issue 14 asks whether streaming the corpus through all stages in waves gives results
sooner, keeps the GPUs busier and bounds the disk. Each mode runs the real
``build-dataset`` flow in a fresh child process (Dask runner, two fake GPUs, a temporary
Prefect server, as ``trackset run`` does) on the same corpus:

- ``barrier``: ``run.wave_size`` = the corpus (every video through a stage before the next);
- ``waves``: ``run.wave_size`` = ``--wave-size``, next wave preprocessed and previous H5
  built while a wave is on the GPU stages;

both with ``run.keep_intermediates: none``, so the disk holds only what is in flight. The
synthetic GPU stages spend ``--gpu-s-per-frame`` in a GPU phase serialised per fake GPU
(like a saturated GPU) and real CPU work after it; preprocessing and the H5 build are the
real stages, on source videos of ``--source WxH`` resized to 512x384, so they cost CPU time
as real preprocessing does (decoding and resizing full-size frames). The corpus has no
``metadata.csv``: every clip is unprompted, so its object masks need no GPU, and the flow
writes them without a task.

Measured: wall time; time to the first H5 file (its mtime after the flow started); GPU
idle share = 1 - (time at least one GPU-stage task ran, from the task runs in the Prefect
API) / (first task start to last task end of the run); peak bytes of intermediates under
the work directory (sampled every 0.2 s). With ``--scale`` the waves mode also runs on a
corpus twice as large, to show the peak stays flat. Prints a markdown block for
BENCHMARKS.md. Each run's task runs (name, start, end) are left in ``<out>/<mode>-<videos>/task-runs.json``
and what was measured in ``result.json`` beside it (``bench/simulate.py --small`` compares its
prediction with it); ``--gaps`` on a ``task-runs.json`` lists every stretch without a GPU-stage
task and the tasks around it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trackset.domain import stage_slug
from trackset.stages.registry import GPU_STAGES

SAMPLE_S = 0.2
# Task runs are named "<stage-slug>-<video or shard>": the registry says which stages use a GPU.
GPU_STAGE_TASKS = tuple(f"{stage_slug(stage)}-" for stage in GPU_STAGES)
INTERMEDIATES = ("frames", "vipe", "tracks_3d", "hand_poses")


def overrides(out: Path, wave_size: int, gpu_s_per_frame: float) -> dict[str, Any]:
    cost = {"gpu_s_per_frame": gpu_s_per_frame, "cpu_s_per_frame": 0.005, "model_mb": 2000, "per_video_mb": 500}
    return {
        "paths": {
            "videos_dir": str(out / "videos"),
            "work_dir": str(out / "work"),
            "dataset_dir": str(out / "dataset"),
        },
        "run": {"wave_size": wave_size, "keep_intermediates": "none"},
        "cluster": {"max_workers_per_gpu": 2, "cpu_workers": 2, "profiling_videos": 2},
        "tracks_3d": {"points_per_window": 64},
        "synthetic": {
            "depth_camera": cost,
            "object_masks": {**cost, "gpu_s_per_frame": gpu_s_per_frame / 2},
            "tracks_3d": cost,
            "hands": {**cost, "gpu_s_per_frame": gpu_s_per_frame / 2},
        },
    }


class DiskSampler(threading.Thread):
    """Largest total size of the intermediates under a work directory."""

    def __init__(self, work: Path) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.peak = 0
        self._finished = threading.Event()

    def sample(self) -> int:
        total = 0
        for name in INTERMEDIATES:
            for folder, _, files in os.walk(self.work / name):
                for file in files:
                    try:
                        total += os.stat(os.path.join(folder, file)).st_size
                    except FileNotFoundError:  # deleted by the run while we walked
                        pass
        return total

    def run(self) -> None:
        while not self._finished.wait(SAMPLE_S):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> int:
        self._finished.set()
        self.join()
        return self.peak


def gpu_busy(flow_run_id: Any, timeline: Path) -> dict[str, float]:
    """Seconds with at least one GPU-stage task running, the span of all the run's tasks, and
    where the idle rest of the span lies: before the first GPU task (the first preprocessing),
    between GPU tasks (stage transitions, waits for the CPU lanes), after the last (the last
    H5 build). Every task run's name, start and end go to ``timeline`` (JSON), to look at
    what a gap is between."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        runs, frontier = [], [flow_run_id]
        while frontier:  # the build, its waves subflow, and the profiling subflows below it
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
            )
            frontier = [child.id for child in children]
            runs += frontier
        deadline = time.monotonic() + 60
        while True:  # task runs of Dask workers reach the API as events, a little after the flow
            tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=runs)))
            timed = [t for t in tasks if t.start_time and t.end_time]
            if len(timed) == len(tasks) or time.monotonic() > deadline:
                break
            time.sleep(1)
    rows = sorted((t.start_time.timestamp(), t.end_time.timestamp(), t.name) for t in timed)
    timeline.write_text(json.dumps([{"start": start, "end": end, "task": name} for start, end, name in rows]))
    intervals = sorted(
        (t.start_time.timestamp(), t.end_time.timestamp()) for t in timed if t.name.startswith(GPU_STAGE_TASKS)
    )
    return idle_breakdown(
        intervals,
        min(t.start_time.timestamp() for t in timed),
        max(t.end_time.timestamp() for t in timed),
    )


def idle_breakdown(intervals: list[tuple[float, float]], first: float, last: float) -> dict[str, float]:
    """Busy seconds of the union of sorted ``intervals`` within ``first``..``last``, and the idle rest.

    Examples:
        >>> idle_breakdown([(1, 3), (2, 4), (6, 7)], 0, 10) == {
        ...     "gpu_busy_s": 4, "span_s": 10, "idle_head_s": 1, "idle_between_s": 2, "gaps": 1, "idle_tail_s": 3}
        True
    """
    busy, between, gaps, current_end = 0.0, 0.0, 0, float("-inf")
    for start, end in intervals:
        if start > current_end:
            if current_end > float("-inf"):
                between, gaps = between + start - current_end, gaps + 1
            busy += end - start
            current_end = end
        elif end > current_end:
            busy += end - current_end
            current_end = end
    return {
        "gpu_busy_s": busy,
        "span_s": last - first,
        "idle_head_s": intervals[0][0] - first,
        "idle_between_s": between,
        "gaps": gaps,
        "idle_tail_s": last - current_end,
    }


def child(out: Path, wave_size: int, gpu_s_per_frame: float) -> dict[str, Any]:
    """Run the flow once in this process; return what was measured."""
    from trackset.flows.cli import EPHEMERAL_SERVER_DEFAULTS

    for key, value in {**EPHEMERAL_SERVER_DEFAULTS, "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    from trackset.flows.build_dataset import build_dataset

    sampler = DiskSampler(out / "work")
    sampler.start()
    started = time.time()
    state = build_dataset(overrides=overrides(out, wave_size, gpu_s_per_frame), return_state=True)
    wall = time.time() - started
    peak = sampler.stop()
    summary = state.result()
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} failures, e.g. {summary.failures[0]}")
    first_h5 = min(p.stat().st_mtime for p in (out / "dataset").glob("*.hdf5")) - started
    return {
        "wall_s": wall,
        "first_h5_s": first_h5,
        "peak_bytes": peak,
        **gpu_busy(state.state_details.flow_run_id, out / "task-runs.json"),
    }


def prepare(out: Path, corpus: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(corpus, out / "videos")


def print_gaps(timeline: Path) -> None:
    """Each stretch without a GPU-stage task in a run's ``task-runs.json``, with the tasks around it."""
    rows = json.loads(timeline.read_text())
    origin = min(row["start"] for row in rows)
    gpu = sorted((row for row in rows if row["task"].startswith(GPU_STAGE_TASKS)), key=lambda row: row["start"])
    print(
        f"first task {min(rows, key=lambda row: row['start'])['task']}; first GPU task at {gpu[0]['start'] - origin:.1f} s"
    )
    print("| gap s | at s | after | before |")
    print("|---|---|---|---|")
    end, last = float("-inf"), None
    for row in gpu:
        if last is not None and row["start"] > end:
            print(f"| {row['start'] - end:.2f} | {end - origin:.1f} | {last['task']} | {row['task']} |")
        if row["end"] > end:
            end, last = row["end"], row
    print(
        f"last GPU task ends at {end - origin:.1f} s, the last task at {max(row['end'] for row in rows) - origin:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--wave-size", type=int, default=6)
    parser.add_argument("--gpu-s-per-frame", type=float, default=0.1)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--source", default="1280x720", help="source video size WxH")
    parser.add_argument("--modes", nargs="+", choices=("barrier", "waves"), default=["barrier", "waves"])
    parser.add_argument("--scale", action="store_true", help="also run the waves mode on twice the corpus")
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-waves"))
    parser.add_argument("--child", nargs=2, metavar=("DIR", "WAVE_SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--gaps", type=Path, metavar="TASK_RUNS_JSON", help="list the GPU idle gaps of a run instead")
    args = parser.parse_args()
    if args.gaps:
        print_gaps(args.gaps)
        return
    if args.child:
        print(json.dumps(child(Path(args.child[0]), int(args.child[1]), args.gpu_s_per_frame)))
        return
    from trackset.synthetic.corpus import make_corpus

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sizes = [args.videos, 2 * args.videos] if args.scale else [args.videos]
    width, height = (int(x) for x in args.source.split("x"))
    corpora = {}
    for size in sizes:
        corpora[size] = args.out / f"corpus-{size}-{args.frames}-{args.source}"
        if len(list(corpora[size].glob("*.mp4"))) != size:
            shutil.rmtree(corpora[size], ignore_errors=True)
            make_corpus(corpora[size], size, seed=5, num_frames=args.frames, width=width, height=height)
    runs = [("barrier", args.videos, args.videos), ("waves", args.videos, args.wave_size)]
    runs += [("waves", size, args.wave_size) for size in sizes[1:]]
    runs = [run for run in runs if run[0] in args.modes]
    results = []
    for mode, size, wave in runs:
        out = args.out / f"{mode}-{size}"
        prepare(out, corpora[size])
        print(f"{mode}: {size} videos, waves of {wave}", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(out), str(wave), "--gpu-s-per-frame", str(args.gpu_s_per_frame)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        results.append({"mode": mode, "videos": size, "wave": wave, **json.loads(done.stdout.strip().splitlines()[-1])})
        (out / "result.json").write_text(json.dumps(results[-1]))  # for bench/simulate.py --small
    print(report(results, started, args))


def report(results: list[dict[str, Any]], started: str, args: argparse.Namespace) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"- command: `.venv/bin/python bench/waves.py {' '.join(sys.argv[1:])}`",
        f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}, no GPU (2 fake GPUs, "
        f"2 workers each at most); load average at the end {load}",
        f"- date: {started}",
        f"- corpus: synthetic videos of {args.frames} frames at {args.source}, preprocessed to 512x384, H5 256; "
        f"GPU phase {args.gpu_s_per_frame} s per frame (hands half) per video, serialised per fake GPU; "
        "no `metadata.csv`, so every clip is unprompted and its object masks need no GPU; "
        "`keep_intermediates: none`",
        "",
        "| mode | videos | wave | wall s | first H5 s | GPU busy s | task span s | GPU idle share "
        "| idle before / between (gaps) / after s | peak intermediates MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        idle = 1 - r["gpu_busy_s"] / r["span_s"]
        lines.append(
            f"| {r['mode']} | {r['videos']} | {r['wave']} | {r['wall_s']:.1f} | {r['first_h5_s']:.1f} "
            f"| {r['gpu_busy_s']:.1f} | {r['span_s']:.1f} | {idle:.0%} "
            f"| {r['idle_head_s']:.1f} / {r['idle_between_s']:.1f} ({r['gaps']}) / {r['idle_tail_s']:.1f} "
            f"| {r['peak_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
