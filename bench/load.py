"""Load benchmark: the full flow on the Dask runner over corpora of many short videos.

    .venv/bin/python bench/load.py --sizes 50 200 --out /tmp/trackset-bench-load

Issue 8 asks what orchestration costs at scale and whether memory grows with the corpus.
For each corpus size, a fresh child process runs the real ``build-dataset`` flow (Dask
runner, the demo's fake-GPU model footprints, so GPU stages are profiled and sized as in
``trackset demo``) on that many short synthetic videos against a temporary Prefect
server, as ``trackset run`` does. A thread in the child samples the peak RSS (VmHWM) of
the child itself (the flow engine, and the Dask scheduler, which ``SpecCluster`` runs in
the flow's process), of every Dask worker process and of the Prefect server every 0.25 s.

Overhead share of a stage = 1 - (seconds spent inside the stage's own code, summed over
videos) / (the stage's subflows' wall time x their worker slots): the share of worker time
that went to Prefect and Dask (task set-up, cluster start and stop, idle slots) rather than
to the stage. Prints a markdown block for BENCHMARKS.md.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FRAMES, WIDTH, HEIGHT, H5_SIZE = 12, 128, 96, 64
SAMPLE_S = 0.25
MIB = 2**20


def overrides(out: Path) -> dict[str, Any]:
    """The demo's settings, on small frames; the Dask runner is the default."""
    from flows.cli import DEMO_COSTS

    return {
        "paths": {"videos_dir": str(out / "videos"), "work_dir": str(out / "work"), "dataset_dir": str(out / "dataset")},
        "preprocess": {"width": WIDTH, "height": HEIGHT},
        "h5": {"target_size": H5_SIZE},
        "tracks_3d": {"points_per_window": 32},
        "synthetic": DEMO_COSTS,
    }


class PeakSampler(threading.Thread):
    """Highest VmHWM seen per process of this process tree, by role."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, tuple[str, int]] = {}
        self._finished = threading.Event()

    @staticmethod
    def role(pid: int, cmdline: list[str]) -> str:
        if pid == os.getpid():
            return "flow process (with the Dask scheduler)"
        text = " ".join(cmdline)
        if "spawn_main" in text:
            return "Dask worker"
        if "prefect" in text or "uvicorn" in text:
            return "Prefect server"
        return "other"

    def sample(self) -> None:
        import psutil

        from trackset.memory_probe import read_vmhwm_bytes

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                peak = read_vmhwm_bytes(Path(f"/proc/{proc.pid}/status"))
                # Read every time: just after fork, before exec, a child still shows our cmdline.
                role = self.role(proc.pid, proc.cmdline())
            except (psutil.Error, OSError):
                continue  # ended between listing and reading
            if peak:
                self.peaks[proc.pid] = (role, max(peak, self.peaks.get(proc.pid, (role, 0))[1]))

    def run(self) -> None:
        while not self._finished.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> dict[str, dict[str, float]]:
        self._finished.set()
        self.join()
        self.sample()
        by_role: dict[str, list[int]] = {}
        for role, peak in self.peaks.values():
            by_role.setdefault(role, []).append(peak)
        return {role: {"processes": len(p), "max_mib": max(p) / MIB} for role, p in sorted(by_role.items())}


def stage_walls(flow_run_id: Any) -> dict[str, list[dict[str, Any]]]:
    """Each stage's subflows (profiling and runs): wall seconds and videos, from the Prefect API."""
    from run_history import stage_subflows, subflow_videos

    walls: dict[str, list[dict[str, Any]]] = {}
    for run in stage_subflows(flow_run_id):
        kind, _, stage = run.name.partition("-")  # "process-<stage>" or "profile-<stage>"
        walls.setdefault(stage, []).append(
            {"kind": kind, "wall_s": (run.end_time - run.start_time).total_seconds(), "videos": subflow_videos(run)}
        )
    return walls


def child(size: int, out: Path) -> dict[str, Any]:
    """Run the flow once over ``size`` videos in this process; return what was measured."""
    from flows.cli import EPHEMERAL_SERVER_DEFAULTS

    for key, value in {**EPHEMERAL_SERVER_DEFAULTS, "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    from flows.build_dataset import build_dataset
    from trackset.settings import load_settings
    from trackset.stages.registry import GPU_STAGES

    settings = overrides(out)
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    state = build_dataset(overrides=settings, return_state=True)
    flow_s = time.perf_counter() - start
    memory = sampler.stop()
    summary = state.result()
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} failures, e.g. {summary.failures[0]}")
    walls = stage_walls(state.state_details.flow_run_id)
    cluster = load_settings(overrides=settings).cluster
    stages = []
    for outcome in summary.stages:
        runs = walls.get(outcome.stage, [])
        if outcome.stage in GPU_STAGES:
            gpus = len(cluster.fake_gpus)
            planned = max((int(r.info.get("workers_per_gpu", 1)) for r in outcome.records), default=1)
            slot_s = sum(r["wall_s"] * gpus * (1 if r["kind"] == "profile" else planned) for r in runs)
        else:
            slot_s = sum(r["wall_s"] * cluster.cpu_workers for r in runs)
        work_s = sum(r.seconds for r in outcome.records)
        stages.append(
            {
                "stage": outcome.stage,
                "videos": sum(r.status == "done" for r in outcome.records),
                "subflows": len(runs),
                "wall_s": sum(r["wall_s"] for r in runs),
                "work_s": work_s,
                "overhead": 1 - work_s / slot_s if slot_s else None,
            }
        )
    return {"size": size, "flow_s": flow_s, "stages": stages, "memory": memory}


def prepare(out: Path, size: int, seed: int) -> None:
    """A corpus of ``size`` short clips under ``out/videos`` (reused); work and dataset emptied."""
    from trackset.synthetic.corpus import make_corpus

    videos = out / "videos"
    if len(list(videos.glob("*.mp4"))) != size:
        shutil.rmtree(videos, ignore_errors=True)
        make_corpus(videos, size, seed=seed, num_frames=FRAMES, width=WIDTH, height=HEIGHT)
    for stale in ("work", "dataset"):
        shutil.rmtree(out / stale, ignore_errors=True)


def report(results: list[dict[str, Any]], started: str) -> str:
    """The markdown block for BENCHMARKS.md."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"- command: `.venv/bin/python {' '.join(sys.argv)}`",
        f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}, no GPU (2 fake GPUs); "
        f"load average at the end {load}",
        f"- date: {started}",
        f"- corpus: short synthetic videos of {FRAMES} frames at {WIDTH}x{HEIGHT}, H5 size {H5_SIZE}; "
        "Dask runner, demo model footprints",
        "",
        "| videos | stage | subflows | videos done | stage wall s | in-stage s (sum) | overhead share |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for stage in result["stages"]:
            overhead = "" if stage["overhead"] is None else f"{stage['overhead']:.0%}"
            lines.append(
                f"| {result['size']} | {stage['stage']} | {stage['subflows']} | {stage['videos']} "
                f"| {stage['wall_s']:.1f} | {stage['work_s']:.1f} | {overhead} |"
            )
    lines += ["", "| videos | flow wall s | s/video | stages' wall s | outside stages s |", "|---|---|---|---|---|"]
    for result in results:
        stage_s = sum(s["wall_s"] for s in result["stages"])
        lines.append(
            f"| {result['size']} | {result['flow_s']:.1f} | {result['flow_s'] / result['size']:.2f} "
            f"| {stage_s:.1f} | {result['flow_s'] - stage_s:.1f} |"
        )
    roles = sorted({role for result in results for role in result["memory"]})
    lines += ["", "Peak RSS (VmHWM), largest process of each role:", "", "| role | " + " | ".join(
        f"{r['size']} videos (MiB, processes)" for r in results
    ) + " |", "|---|" + "---|" * len(results)]
    for role in roles:
        cells = []
        for result in results:
            entry = result["memory"].get(role)
            cells.append("" if entry is None else f"{entry['max_mib']:.0f} ({entry['processes']})")
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        extra = large["size"] - small["size"]
        for role in roles:
            if role in small["memory"] and role in large["memory"]:
                growth = (large["memory"][role]["max_mib"] - small["memory"][role]["max_mib"]) * 1024 / extra
                lines.append(f"- {role}: {growth:+.1f} KiB per extra video ({small['size']} -> {large['size']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-load"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.out / str(args.child))))
        return
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = []
    for size in args.sizes:
        out = args.out / str(size)
        prepare(out, size, args.seed)
        print(f"running the flow over {size} videos", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--out", str(args.out)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(report(results, started))


if __name__ == "__main__":
    main()
