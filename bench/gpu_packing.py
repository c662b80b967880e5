"""Benchmark of GPU packing: profile prediction vs observed peak, and 1 vs k workers per GPU.

    .venv/bin/python bench/gpu_packing.py --out /tmp/trackset-bench-gpu

Runs the real depth-stage orchestration (``flows.stage_runs.run_stage``: profile-memory
subflow, sizing, pinned Dask cluster, out-of-memory shrink) on two fake 12 GiB GPUs, with a
synthetic depth model whose footprint grows with video length (2000 MiB model + 500 MiB per
video + 40 MiB per frame) and whose time is a real CPU phase plus a GPU phase serialised
per fake GPU. The corpus mixes 12-, 24- and 40-frame videos, so the profile's prediction
is tested, not assumed:

- "short-first": the profiled videos are the shortest; longer ones later need more than
  predicted, and the out-of-memory policy must recover without losing a video.
- "mixed-first": a longest video is among the profiled ones; the prediction should be
  within 10 % of the highest peak over the run.
- "1 worker/GPU": the same corpus with ``max_workers_per_gpu: 1``, for videos/s.

Prints a markdown block for BENCHMARKS.md. On a machine with a real GPU, the same script
with ``cluster.gpus: [0]`` allocates the footprint with real CUDA tensors (TorchAllocator).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import time
from pathlib import Path

from prefect import flow

from flows.stage_runs import run_stage
from trackset.manifest import Manifest
from trackset.run_report import StageOutcome
from trackset.settings import Settings, load_settings
from trackset.stages.base import VideoRef
from trackset.synthetic.corpus import make_corpus

MIB = 2**20
COST = {"model_mb": 2000, "per_video_mb": 500, "per_frame_mb": 40, "gpu_s_per_frame": 0.02, "cpu_s_per_frame": 0.02}
LENGTHS = {"12": 3, "24": 2, "40": 3}  # frames -> videos


def make_mixed_corpus(videos: Path, order: list[str]) -> None:
    """Videos of several lengths; subfolder names fix the id order (sorted by path)."""
    if videos.exists():
        return
    for rank, frames in enumerate(order):
        make_corpus(videos / f"{rank}_{frames}f", LENGTHS[frames], seed=100 + rank, num_frames=int(frames))


def settings_for(root: Path, max_workers: int) -> Settings:
    return load_settings(
        overrides={
            "paths": {"videos_dir": str(root / "videos"), "work_dir": str(root / "work"), "dataset_dir": str(root / "dataset")},
            "cluster": {
                "runner": "dask",
                "fake_gpus": [{"memory_gb": 12}, {"memory_gb": 12}],
                "profiling_videos": 2,
                "max_workers_per_gpu": max_workers,
            },
            "synthetic": {"depth_camera": COST},
            "retry": {"retries": 0},
        }
    )


def registered(settings: Settings) -> list[VideoRef]:
    manifest = Manifest.load(settings.paths.dataset_dir / "manifest.jsonl")
    result = manifest.register(settings.paths.videos_dir, settings.paths.video_extensions)
    entries = sorted(result.new + result.changed + result.unchanged, key=lambda e: e.video_id)
    return [VideoRef(e.video_id, e.source_path(settings.paths.videos_dir), e.sha256) for e in entries]


@flow(name="bench-gpu-packing")
def depth_stage(settings: Settings) -> tuple[StageOutcome, float]:
    """Preprocess on threads, then time the depth stage on the pinned Dask runner."""
    videos = registered(settings)
    threads = settings.model_copy(update={"cluster": settings.cluster.model_copy(update={"runner": "threads"})})
    run_stage("preprocess", videos, threads)
    start = time.perf_counter()
    outcome = run_stage("depth_camera", videos, settings)
    return outcome, time.perf_counter() - start


def scenario(out: Path, name: str, max_workers: int, corpus: Path) -> dict[str, object]:
    root = out / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "videos").symlink_to(corpus)
    outcome, wall = depth_stage(settings_for(root, max_workers))
    records = sorted(outcome.records, key=lambda r: r.video_id)
    profiled = records[:2]
    predicted = max(r.peak_bytes or 0 for r in profiled)
    observed = max(r.peak_bytes or 0 for r in records)
    rest = records[2:]
    planned = max(int(r.info["workers_per_gpu"]) for r in rest) if rest else 1
    return {
        "scenario": name,
        "profiled frames": "+".join(str(r.info.get("frames")) for r in profiled),
        "predicted peak MiB": predicted // MIB,
        "observed peak MiB": observed // MIB,
        "observed / predicted": round(observed / predicted, 3) if predicted else None,
        "planned workers/GPU": planned,
        "done": len(records),
        # Videos that ran out of memory at the planned packing and landed after shrinking.
        "OOM recovered": sum(int(r.info["workers_per_gpu"]) < planned for r in rest),
        "failed or quarantined": len(outcome.failures),
        "wall s": round(wall, 1),
        "videos/s": round(len(records) / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-gpu"))
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    short_first, mixed_first = args.out / "corpus-short-first", args.out / "corpus-mixed-first"
    make_mixed_corpus(short_first, ["12", "24", "40"])
    make_mixed_corpus(mixed_first, ["40", "12", "24"])
    rows = [
        scenario(args.out, "short-first", 4, short_first),
        scenario(args.out, "mixed-first", 4, mixed_first),
        scenario(args.out, "mixed-first, 1 worker/GPU", 1, mixed_first),
    ]
    print(f"Command: .venv/bin/python bench/gpu_packing.py --out {args.out}")
    print(f"Machine: {platform.node()}, {os.cpu_count()} cores, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    print(f"\nk vs 1 worker per GPU (mixed-first): {rows[1]['videos/s'] / rows[2]['videos/s']:.2f}x videos/s")


if __name__ == "__main__":
    main()
