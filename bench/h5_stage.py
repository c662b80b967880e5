"""Benchmark of the H5 build stage: seconds per video, peak RSS per worker, 1 vs 2 workers.

    .venv/bin/python bench/h5_stage.py --videos 8 --frames 190 --out /tmp/trackset-bench-h5

Intermediates of a synthetic corpus (``--frames`` frames at 512x384) are made once with the
synthetic stages and cached under ``--out``. Then the H5 stage alone runs in fresh worker
processes (spawned, one thread each, like Dask workers): once with one worker over all
videos, once with two workers splitting them. Each worker reports its seconds per video
and its peak RSS (VmHWM); peak RSS is also reported after half of a worker's videos, to
show it does not grow with the number of videos. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from trackset.memory_probe import read_vmhwm_bytes
from trackset.settings import Settings, load_settings
from trackset.stages.base import VideoRef

SCRIPT_PIPELINE_S_PER_VIDEO = 3.6  # PLATFORM-NOTES.md, same machine class


def bench_settings(out: Path, dataset: str) -> Settings:
    return load_settings(
        overrides={"paths": {"videos_dir": str(out / "videos"), "work_dir": str(out / "work"), "dataset_dir": str(out / dataset)}}
    )


def prepare(out: Path, videos: int, frames: int) -> list[VideoRef]:
    """Synthetic corpus and its intermediates, made once and reused by later runs."""
    from trackset.synthetic.corpus import make_corpus
    from trackset.worker_cache import get_stage, release_stages

    video_dir = out / "videos"
    paths = sorted(video_dir.glob("*.mp4"))
    if len(paths) < videos:
        paths = make_corpus(video_dir, videos, seed=11, num_frames=frames)
    refs = [
        VideoRef(f"{i:05d}", path, hashlib.sha256(path.read_bytes()).hexdigest()) for i, path in enumerate(paths[:videos])
    ]
    settings = bench_settings(out, "unused")
    for stage in ("preprocess", "depth_camera", "tracks_3d", "hands"):
        runner = get_stage(stage, settings)
        for ref in refs:
            runner.run(ref)
        release_stages(stage)
    return refs


def worker(args: tuple[Path, str, list[VideoRef]]) -> dict[str, object]:
    """One worker process: build its videos' H5 files, report timings and peak RSS."""
    out, dataset, refs = args
    from trackset.worker_cache import get_stage

    stage = get_stage("h5_build", bench_settings(out, dataset))
    seconds, rss_half = [], None
    for index, ref in enumerate(refs):
        start = time.perf_counter()
        record = stage.run(ref)
        assert record.status == "done", record
        seconds.append(time.perf_counter() - start)
        if index + 1 == max(1, len(refs) // 2):
            rss_half = read_vmhwm_bytes()
    return {"pid": os.getpid(), "seconds": seconds, "rss_half": rss_half, "rss_end": read_vmhwm_bytes()}


def run(out: Path, refs: list[VideoRef], workers: int) -> tuple[float, list[dict[str, object]]]:
    dataset = f"dataset-{workers}w"
    shutil.rmtree(out / dataset, ignore_errors=True)
    chunks = [refs[i::workers] for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        pool.map(abs, range(workers))  # start the processes before the clock
        start = time.perf_counter()
        results = pool.map(worker, [(out, dataset, chunk) for chunk in chunks])
        wall = time.perf_counter() - start
    return wall, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=190)
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-h5"))
    args = parser.parse_args()
    refs = prepare(args.out, args.videos, args.frames)
    rows = []
    walls = {}
    for workers in (1, 2):
        wall, results = run(args.out, refs, workers)
        walls[workers] = wall
        per_video = [s for r in results for s in r["seconds"]]
        rss_end = max(int(r["rss_end"]) for r in results) / 2**20
        rss_half = max(int(r["rss_half"] or 0) for r in results) / 2**20
        rows.append(
            f"| {workers} | {len(refs)} | {wall:.2f} | {wall / len(refs):.3f} | {sum(per_video) / len(per_video):.3f} "
            f"| {rss_half:.0f} | {rss_end:.0f} |"
        )
    print(f"H5 stage, {len(refs)} videos x {args.frames} frames (512x384 -> 256), cpu_count={os.cpu_count()}")
    print("| workers | videos | wall s | wall s/video | s/video in worker | peak RSS/worker after half (MiB) | peak RSS/worker at end (MiB) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    speedup = walls[1] / walls[2]
    print(f"\nspeedup 2 vs 1 workers: {speedup:.2f}x (parallel efficiency {speedup / 2:.0%})")
    print(f"1 worker: {walls[1] / len(refs):.3f} s/video = {walls[1] / len(refs) / SCRIPT_PIPELINE_S_PER_VIDEO:.2f} of the script pipeline's {SCRIPT_PIPELINE_S_PER_VIDEO} s/video")


if __name__ == "__main__":
    main()
