"""Benchmark of the H5 build stage: seconds per video, peak RSS per worker, 1 vs 2 workers.

    .venv/bin/python bench/h5_stage.py --videos 8 --frames 190 --out /tmp/trackset-bench-h5
    .venv/bin/python bench/h5_stage.py --videos 8 --frames 190 --out /tmp/trackset-bench-h5 --phases

Intermediates of a synthetic corpus (``--frames`` frames at 512x384) are made once with the
synthetic stages and cached under ``--out``. Then the H5 stage alone runs in fresh worker
processes (spawned, one thread each, like Dask workers): once with one worker over all
videos, once with two workers splitting them. Each worker imports and sets up the stage
before the clock starts (a Dask worker does that once for thousands of videos), then the
workers start together. Wall time runs from the first video's start to the last one's end.
Each worker reports its seconds per video and its peak RSS (VmHWM); peak RSS is also
reported after half of a worker's videos, to show it does not grow with the number of
videos. Prints a markdown table for BENCHMARKS.md. ``--phases`` instead times each step of
the stage (reads, resizes, moments, write) over the videos in this process.

``--malloc glibc dask`` runs each configuration twice: with glibc's defaults (what the
workers of a trackset run get, ``engine/run_cluster.py``) and with ``MALLOC_TRIM_THRESHOLD_=65536``,
what Dask's Nanny sets in the workers it spawns unless told otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import shutil
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from trackset.config.settings import Settings, load_settings
from trackset.domain import VideoRef
from trackset.gpu.memory_probe import read_vmhwm_bytes
from trackset.stages.registry import stage_config

SCRIPT_PIPELINE_S_PER_VIDEO = 3.6  # PLATFORM-NOTES.md, same machine class


def bench_settings(out: Path, dataset: str, compression: str = "none") -> Settings:
    paths = {"videos_dir": str(out / "videos"), "work_dir": str(out / "work"), "dataset_dir": str(out / dataset)}
    return load_settings(overrides={"paths": paths, "h5": {"compression": compression}})


def prepare(out: Path, videos: int, frames: int) -> list[VideoRef]:
    """Synthetic corpus and its intermediates, made once and reused by later runs."""
    from trackset.cluster.worker_cache import get_stage, release_stages
    from trackset.stages.registry import enabled_stages
    from trackset.synthetic.corpus import make_corpus

    video_dir = out / "videos"
    paths = sorted(video_dir.glob("*.mp4"))
    if len(paths) < videos:
        paths = make_corpus(video_dir, videos, seed=11, num_frames=frames)
    refs = [
        VideoRef(f"{i:05d}", path, hashlib.sha256(path.read_bytes()).hexdigest())
        for i, path in enumerate(paths[:videos])
    ]
    settings = bench_settings(out, "unused")
    for stage in enabled_stages(settings):  # those the default settings run before the H5 build
        if stage == "h5_build":
            continue
        runner = get_stage(stage, stage_config(stage, settings))
        for ref in refs:
            record = runner.run(ref)
            assert record.status in ("done", "skipped"), record
        release_stages(stage)
    return refs


def warm_up(out: Path, dataset: str, compression: str, ready: Barrier) -> None:
    """Pool initializer: import and set up the stage, then wait until every worker has."""
    from trackset.cluster.worker_cache import get_stage

    get_stage("h5_build", stage_config("h5_build", bench_settings(out, dataset, compression)))
    ready.wait()


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent not idle since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def worker(args: tuple[Path, str, str, list[VideoRef]]) -> dict[str, object]:
    """One worker process: build its videos' H5 files, report timings, peak RSS, its own user
    and system CPU seconds and page faults, and the machine's busy CPU seconds around it."""
    out, dataset, compression, refs = args
    from trackset.cluster.worker_cache import get_stage

    stage = get_stage("h5_build", stage_config("h5_build", bench_settings(out, dataset, compression)))
    seconds, rss_half = [], None
    usage, machine = resource.getrusage(resource.RUSAGE_SELF), busy_cpu_s()
    first = time.perf_counter()
    for index, ref in enumerate(refs):
        start = time.perf_counter()
        record = stage.run(ref)
        assert record.status == "done", record
        seconds.append(time.perf_counter() - start)
        if index + 1 == max(1, len(refs) // 2):
            rss_half = read_vmhwm_bytes()
    last, machine_end = time.perf_counter(), busy_cpu_s()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "pid": os.getpid(),
        "seconds": seconds,
        "first": first,
        "last": last,
        "user_s": after.ru_utime - usage.ru_utime,
        "sys_s": after.ru_stime - usage.ru_stime,
        "minor_faults": after.ru_minflt - usage.ru_minflt,
        "machine_start": machine,
        "machine_end": machine_end,
        "rss_half": rss_half,
        "rss_end": read_vmhwm_bytes(),
    }


# What each --malloc choice puts in the workers' environment (None: unset).
MALLOC_ENV = {"glibc": None, "dask": "65536"}


def run(
    out: Path, refs: list[VideoRef], workers: int, compression: str, malloc: str = "glibc"
) -> tuple[float, list[dict[str, object]]]:
    """Wall seconds (first video start to last video end, over all workers) and worker reports.

    ``perf_counter`` is the system-wide monotonic clock on Linux, so the workers' readings
    compare. Spawned workers take this process's environment, as a Nanny's do.
    """
    dataset = f"dataset-{compression}-{workers}w"
    shutil.rmtree(out / dataset, ignore_errors=True)
    os.sync()  # the previous configuration's writeback would otherwise run during this one
    chunks = [refs[i::workers] for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(workers)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    if MALLOC_ENV[malloc] is not None:
        os.environ["MALLOC_TRIM_THRESHOLD_"] = MALLOC_ENV[malloc]
    try:
        with context.Pool(workers, initializer=warm_up, initargs=(out, dataset, compression, ready)) as pool:
            results = pool.map(worker, [(out, dataset, compression, chunk) for chunk in chunks], chunksize=1)
    finally:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    wall = max(float(r["last"]) for r in results) - min(float(r["first"]) for r in results)
    return wall, results


# Steps of one video in the H5 stage, timed by --phases where the stage looks them up.
PHASES = {
    "trackset.stages.h5_build": (
        "read_frames",
        "read_depth_camera",
        "read_tracks_3d",
        "read_hand_poses",
        "build_arrays",
        "video_moments",
        "write_h5",
    ),
    "trackset.formats.h5_layout": ("resize_rgb", "resize_depth"),
}


def phases(settings: Settings, refs: list[VideoRef], extra: dict[str, tuple[str, ...]] | None = None) -> None:
    """Seconds per video of each step of the stage, in this process (one worker, warmed up),
    building into ``settings.paths.dataset_dir`` (emptied first); ``extra`` steps are timed too
    (``bench/vs_script.py --phases`` adds the import path's).

    ``build_arrays`` includes ``resize_rgb`` and ``resize_depth``; the frames are memory-mapped,
    so reading them is paid inside ``resize_rgb``.
    """
    import importlib

    from trackset.cluster.worker_cache import get_stage

    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    extra = extra or {}
    steps = {module: PHASES.get(module, ()) + extra.get(module, ()) for module in PHASES | extra}
    for module_name, names in steps.items():
        module = importlib.import_module(module_name)
        for name in names:
            setattr(module, name, timed(name, getattr(module, name)))
    shutil.rmtree(settings.paths.dataset_dir, ignore_errors=True)
    os.sync()
    stage = get_stage("h5_build", stage_config("h5_build", settings))
    start, cpu_start = time.perf_counter(), time.process_time()
    for ref in refs:
        record = stage.run(ref)
        assert record.status == "done", record
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"Steps of the H5 stage, one worker, {len(refs)} videos: seconds per video")
    print("| step | s/video |")
    print("|---|---|")
    for name in (n for names in steps.values() for n in names):
        print(f"| {name} | {spent.get(name, 0.0) / len(refs):.3f} |")
    print(f"| whole stage (run) | {total / len(refs):.3f} |")
    print(f"| whole stage, CPU s of this process | {cpu / len(refs):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=190)
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-h5"))
    parser.add_argument(
        "--compression",
        nargs="+",
        default=["none"],
        choices=["none", "lzf", "gzip"],
        help="h5.compression values to measure",
    )
    parser.add_argument("--phases", action="store_true", help="time the steps of one video instead")
    parser.add_argument(
        "--malloc", nargs="+", default=["glibc"], choices=sorted(MALLOC_ENV), help="workers' malloc settings to measure"
    )
    args = parser.parse_args()
    refs = prepare(args.out, args.videos, args.frames)
    if args.phases:
        phases(bench_settings(args.out, "dataset-phases"), refs)
        return
    print(f"H5 stage, {len(refs)} videos x {args.frames} frames (512x384 -> 256), cpu_count={os.cpu_count()}")
    print(
        "| compression | malloc | workers | videos | wall s | wall s/video | s/video in worker | H5 MiB/video "
        "| peak RSS/worker after half (MiB) | peak RSS/worker at end (MiB) | user s/video | sys s/video "
        "| page faults/video | machine CPU s/video outside the workers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    walls: dict[tuple[str, str, int], float] = {}
    for compression, malloc, workers in [(c, m, w) for c in args.compression for w in (1, 2) for m in args.malloc]:
        wall, results = run(args.out, refs, workers, compression, malloc)
        walls[compression, malloc, workers] = wall
        per_video = [s for r in results for s in r["seconds"]]
        rss_end = max(int(r["rss_end"]) for r in results) / 2**20
        rss_half = max(int(r["rss_half"] or 0) for r in results) / 2**20
        h5_bytes = sum(p.stat().st_size for p in (args.out / f"dataset-{compression}-{workers}w").glob("*.hdf5"))
        user, system = (sum(float(r[key]) for r in results) / len(refs) for key in ("user_s", "sys_s"))
        faults = sum(int(r["minor_faults"]) for r in results) / len(refs)
        # Busy CPU of the whole machine over the run, less the workers' own: the kernel's
        # writeback of the page cache, and anything else that ran meanwhile.
        machine = max(float(r["machine_end"]) for r in results) - min(float(r["machine_start"]) for r in results)
        outside = (machine - sum(float(r["user_s"]) + float(r["sys_s"]) for r in results)) / len(refs)
        print(
            f"| {compression} | {malloc} | {workers} | {len(refs)} | {wall:.2f} | {wall / len(refs):.3f} "
            f"| {sum(per_video) / len(per_video):.3f} | {h5_bytes / len(refs) / 2**20:.1f} | {rss_half:.0f} "
            f"| {rss_end:.0f} | {user:.3f} | {system:.3f} | {faults:.0f} | {outside:.3f} |",
            flush=True,
        )
    for compression, malloc in [(c, m) for c in args.compression for m in args.malloc]:
        one, two = walls[compression, malloc, 1], walls[compression, malloc, 2]
        print(
            f"\n{compression}, malloc {malloc}: speedup 2 vs 1 workers {one / two:.2f}x "
            f"(parallel efficiency {one / two / 2:.0%}); "
            f"1 worker {one / len(refs):.3f} s/video = {one / len(refs) / SCRIPT_PIPELINE_S_PER_VIDEO:.2f} "
            f"of the script pipeline's {SCRIPT_PIPELINE_S_PER_VIDEO} s/video"
        )


if __name__ == "__main__":
    main()
