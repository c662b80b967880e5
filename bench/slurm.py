"""SLURM benchmark: how fast a run's GPU jobs start, how many it holds over time, what a cancelled job costs.

    deployments/slurm-local.sh up   # as root: the one-node SLURM with two fake GPUs
    .venv/bin/python bench/slurm.py --videos 12 --out /tmp/trackset-bench-slurm
    deployments/slurm-local.sh down

Two builds of the same synthetic corpus with ``cluster.kind: slurm`` (``max_jobs`` 2, one GPU
and two worker processes per job, TLS, a temporary Prefect server), the depth stage costing
``--gpu-s-per-frame`` per frame so it takes real time:

- ``steady``: nothing happens to the jobs;
- ``cancelled``: the job that starts the first depth video is cancelled (``scancel``, as a
  preemption would) as soon as it starts it.

Measured per build: wall time; seconds from the flow's start to the first job submitted, to
the first job running and to the first depth video started (the preload
``bench.slurm_marks`` marks each start with its time and job); the jobs held every 0.5 s
(``squeue``), printed where they change; the depth starts, and the videos started on the
cancelled job that ran again on another. Prints a markdown block for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
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

SAMPLE_S = 0.5


def squeue() -> list[tuple[str, str]]:
    """This user's jobs as ``(id, state)``."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout
    return [(line.split()[0], line.split()[1]) for line in out.splitlines()]


def marks(folder: Path) -> list[tuple[float, str, str]]:
    """The depth starts ``bench.slurm_marks`` left, as ``(time, job id, video file)``, oldest first."""
    found = []
    for path in folder.iterdir():
        job, _worker, video, ext, _pid, ns = path.name.split(".")
        found.append((int(ns) / 1e9, job, f"{video}.{ext}"))
    return sorted(found)


def overrides(out: Path, gpu_s_per_frame: float) -> dict[str, Any]:
    return {
        "paths": {
            "videos_dir": str(out / "videos"),
            "work_dir": str(out / "work"),
            "dataset_dir": str(out / "dataset"),
        },
        "cluster": {
            "runner": "dask",
            "kind": "slurm",
            "tls_dir": str(out / "secrets" / "tls"),
            "cpu_workers": 1,
            "max_workers_per_gpu": 2,
            "profiling_videos": 2,
            "gpu_task_videos": 1,
            "worker_preload": ["bench.slurm_marks"],
            "fake_gpus": [{"memory_gb": 16}, {"memory_gb": 16}],
            "slurm": {
                "cpus_per_job": 1,
                "memory": "2GB",
                "max_jobs": 2,
                "poll_s": 0.5,
                "walltime": "00:30:00",
                "retire_before_walltime_s": 60,
                "retire_stagger_s": 0,
            },
        },
        "retry": {"retries": 1, "retry_delay_s": 0.0, "retry_jitter_factor": 0.0},
        "preprocess": {"width": 128, "height": 96},
        "h5": {"target_size": 64},
        "tracks_3d": {"points_per_window": 16},
        "synthetic": {"depth_camera": {"gpu_s_per_frame": gpu_s_per_frame}},
    }


def build(out: Path, corpus: Path, gpu_s_per_frame: float, cancel: bool) -> dict[str, Any]:
    """One build; with ``cancel``, the first job to start a depth video is cancelled then."""
    from trackset.cluster.security import write_secrets
    from trackset.flows.build_dataset import build_dataset

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(corpus, out / "videos")
    write_secrets(out / "secrets")
    folder = out / "marks"
    folder.mkdir()
    os.environ["TRACKSET_TEST_MARK_DIR"] = str(folder)
    samples: list[tuple[float, int, int]] = []
    cancelled: list[str] = []
    stop = threading.Event()
    started = time.time()

    def watch() -> None:
        while not stop.wait(SAMPLE_S):
            states = [state for _, state in squeue()]
            samples.append((time.time() - started, states.count("RUNNING"), states.count("PENDING")))
            if cancel and not cancelled and any(folder.iterdir()):
                job = marks(folder)[0][1]
                subprocess.run(["scancel", job], check=True)
                cancelled.append(job)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = build_dataset(overrides=overrides(out, gpu_s_per_frame))
    finally:
        wall = time.time() - started
        stop.set()
        watcher.join()
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} failures, e.g. {summary.failures[0]}")
    starts = marks(folder)
    on_cancelled = {video for _, job, video in starts if cancelled and job == cancelled[0]}
    elsewhere = {video for _, job, video in starts if not cancelled or job != cancelled[0]}
    held = [(t, running, pending) for t, running, pending in samples]
    return {
        "wall_s": wall,
        "first_submitted_s": next((t for t, r, p in held if r + p), None),
        "first_running_s": next((t for t, r, _ in held if r), None),
        "first_gpu_task_s": starts[0][0] - started,
        "depth_starts": len(starts),
        "videos": len({video for _, _, video in starts}),
        "rerun": sorted(on_cancelled & elsewhere),
        "lost_with_job": sorted(on_cancelled - elsewhere),
        "timeline": changes(held),
    }


def changes(samples: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """The samples where the jobs held changed (and the last one)."""
    kept = [sample for i, sample in enumerate(samples) if i == 0 or sample[1:] != samples[i - 1][1:]]
    return kept + ([samples[-1]] if samples and kept[-1] != samples[-1] else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--gpu-s-per-frame", type=float, default=0.4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-slurm"))
    args = parser.parse_args()
    # The preload bench.slurm_marks is imported by the CPU workers (spawned from here) and by
    # the jobs' workers (SLURM hands them this environment).
    repo = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, repo)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    from trackset.flows.cli import EPHEMERAL_SERVER_DEFAULTS

    for key, value in {**EPHEMERAL_SERVER_DEFAULTS, "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    from trackset.synthetic.corpus import encode_scene, video_seed
    from trackset.synthetic.scene import SceneSpec

    if squeue():
        sys.exit(f"jobs are queued already ({squeue()}): the timeline would count them")
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    corpus = args.out / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    for index in range(args.videos):
        encode_scene(SceneSpec.from_seed(video_seed(11, index), args.frames, 10.0, 128, 96), corpus / f"v{index}.mp4")
    results = {
        name: build(args.out / name, corpus, args.gpu_s_per_frame, name == "cancelled")
        for name in ("steady", "cancelled")
    }
    load = os.getloadavg()[0]
    print(
        f"- command: `.venv/bin/python bench/slurm.py --videos {args.videos} --frames {args.frames} "
        f"--gpu-s-per-frame {args.gpu_s_per_frame}`"
    )
    print(
        f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}, one-node SLURM 22.05 "
        f"(deployments/slurm-local.sh), 2 fake GPUs; load average at the end {load:.2f}"
    )
    print(f"- date: {day}")
    print()
    print(
        "| build | wall s | first job submitted s | first job running s | first GPU task s | depth starts | "
        "videos | rerun after the cancel | lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['wall_s']:.1f} | {r['first_submitted_s']:.1f} | {r['first_running_s']:.1f} | "
            f"{r['first_gpu_task_s']:.1f} | {r['depth_starts']} | {r['videos']} | {len(r['rerun'])} | "
            f"{len(r['lost_with_job'])} |"
        )
    for name, r in results.items():
        timeline = ", ".join(f"{t:.1f} s: {run} running + {pend} queued" for t, run, pend in r["timeline"])
        print(f"\njobs over time ({name}): {timeline}")


if __name__ == "__main__":
    main()
