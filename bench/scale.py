"""Scale benchmark: the orchestration of a build at thousands of videos, then a nightly refresh.

    .venv/bin/python bench/scale.py --sizes 1000 5000 --refresh 500 --db sqlite postgres

Issue 15 asks whether the orchestration stays flat at the corpus sizes users have. The
stages cost (almost) nothing here: tiny synthetic clips (8 frames of 32x24, H5 of 16
pixels, zero-cost synthetic models), so what is measured is Prefect, Dask and trackset's
own bookkeeping. For each database (the temporary server's SQLite, or PostgreSQL started
by ``deployments/postgres.sh``) a real ``prefect server`` runs in its own process with its
own home; for each corpus size a fresh child process runs ``build-dataset`` on the Dask
runner against it, as ``trackset run`` does. A thread samples the peak RSS (VmHWM) of the
child (the flow engine and the Dask scheduler), of each Dask worker and of the server.

Reported per size: task runs created (from the API), wall time, the seconds spent inside
stage code (summed over videos) against the rest, peak RSS per process role, the server's
database size, and the largest artifact. Then a refresh adds ``--refresh`` new videos to
the largest dataset and reports how long registration, the statistics and everything
outside the stages took. The orchestration time is extrapolated to 50,000 videos from the
two largest sizes. Prints a markdown block for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trackset.domain import stage_slug
from trackset.stages.registry import GPU_STAGES

REPO = Path(__file__).resolve().parents[1]
GPU_SLUGS = tuple(stage_slug(stage) for stage in GPU_STAGES)  # task runs are named "<slug>-..."
FRAMES, WIDTH, HEIGHT, H5_SIZE, DISTINCT = 8, 32, 24, 16, 40
SAMPLE_S = 0.5
MIB = 2**20


def settings(out: Path) -> dict[str, Any]:
    return {
        "paths": {name: str(out / name.removesuffix("_dir")) for name in ("videos_dir", "work_dir", "dataset_dir")},
        "preprocess": {"width": WIDTH, "height": HEIGHT},
        "h5": {"target_size": H5_SIZE},
        "tracks_3d": {"window_length": 2, "points_per_window": 4},
        "cluster": {"max_workers_per_gpu": 2, "cpu_workers": 2},
        "run": {"keep_intermediates": "none"},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``prefect server`` of its own home, on SQLite or PostgreSQL."""

    def __init__(self, root: Path, db: str) -> None:
        self.root, self.db = root, db
        self.home = root / "prefect-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.pg_port = free_port()
        self.env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        if db == "postgres":
            started = subprocess.run(
                [str(REPO / "deployments" / "postgres.sh"), "start", str(root / "pg"), str(self.pg_port)],
                check=True,
                capture_output=True,
                text=True,
            )
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = started.stdout.strip().splitlines()[-1]
            self.env["PGPASSFILE"] = str(root / "pg" / "pgpass")  # the role's password (postgres.sh)
        prefect = Path(sys.executable).with_name("prefect")
        self.log = root / "server.log"
        with self.log.open("wb") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--analytics-off"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Prefect server did not start") from None
                time.sleep(1)

    def db_bytes(self) -> int:
        if self.db == "sqlite":
            return sum(p.stat().st_size for p in self.home.glob("prefect.db*"))
        query = "SELECT pg_database_size('prefect')"
        done = subprocess.run(
            [str(REPO / "deployments" / "postgres.sh"), "psql", str(self.root / "pg"), "-tAc", query],
            check=True,
            capture_output=True,
            text=True,
        )
        return int(done.stdout.strip())

    def check_alive(self) -> None:
        """Raise with the end of the server's log when it has exited (it must outlive every run)."""
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-30:]
            exited = f"the Prefect server exited ({self.process.returncode}); {self.log}:"
            raise RuntimeError("\n".join([exited, *tail]))

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)
        if self.db == "postgres":
            subprocess.run([str(REPO / "deployments" / "postgres.sh"), "stop", str(self.root / "pg")], check=False)


def vmhwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``. ``/proc/<pid>/task/<tid>/children`` lists the children
    one thread started: the Nannies spawn their workers from the cluster's event-loop thread,
    not the main one, so every thread's list is read."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = []
        for listing in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children += [int(c) for c in listing.read_text().split()]
            except OSError:  # the thread or the process ended meanwhile
                continue
        found += children
        frontier += children
    return found


class PeakSampler(threading.Thread):
    """Highest VmHWM per role: the flow (the child), its Dask workers, the server."""

    def __init__(self, flow_pid: int, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.flow_pid, self.server_pid = flow_pid, server_pid
        self.peaks: dict[str, int] = {}
        self._finished = threading.Event()

    def sample(self) -> None:
        roles = {"flow process (with the Dask scheduler)": [self.flow_pid], "server": [self.server_pid]}
        # The Nannies live in the flow process; the workers are the processes they spawn.
        roles["Dask worker (largest)"] = [p for p in descendants(self.flow_pid) if _is_spawned_worker(_cmdline(p))]
        for role, pids in roles.items():
            for pid in pids:
                peak = vmhwm(pid)
                if peak:
                    self.peaks[role] = max(self.peaks.get(role, 0), peak)

    def run(self) -> None:
        while not self._finished.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> dict[str, int]:
        self._finished.set()
        self.join()
        self.sample()
        return self.peaks


def _is_spawned_worker(cmdline: str) -> bool:
    """A process multiprocessing spawned, other than its resource tracker.

    Examples:
        >>> _is_spawned_worker("python -B -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=41)")
        True
        >>> _is_spawned_worker("python -c from multiprocessing.resource_tracker import main;main(7)")
        False
    """
    return "spawn_main" in cmdline and "resource_tracker" not in cmdline


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def child(out: Path) -> None:
    """Run the flow in this process (its PREFECT_API_URL is the benchmark's server)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    from trackset.flows.build_dataset import build_dataset

    started = time.time()
    state = build_dataset(overrides=settings(out), return_state=True)
    wall = time.time() - started
    summary = state.result()
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} failures, e.g. {summary.failures[0]}")
    stage_s = sum(tally.seconds for tally in summary.stages)
    print(json.dumps({"wall_s": wall, "stage_s": stage_s, "flow_run_id": str(state.state_details.flow_run_id)}))


def api_facts(flow_run_id: str) -> dict[str, Any]:
    """Task runs of the whole server, the run's subflow and task timings, the largest artifact."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        task_runs = client.request("POST", "/task_runs/count", json={}).json()
        gpu_task_runs = sum(
            client.request("POST", "/task_runs/count", json={"task_runs": {"name": {"like_": f"{slug}-"}}}).json()
            for slug in GPU_SLUGS
        )
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(flow_run_id)]))
        )
        waves = next((run for run in children if run.name == "waves"), None)
        waves_s = (waves.end_time - waves.start_time).total_seconds() if waves and waves.end_time else 0.0
        run = client.read_flow_run(UUID(flow_run_id))
        register_s = statistics_s = 0.0
        for task in client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[UUID(flow_run_id)]))
        ):
            seconds = (task.end_time - task.start_time).total_seconds() if task.end_time else 0.0
            if task.name.startswith("register-videos"):
                register_s = seconds
            elif task.name.startswith("aggregate-statistics"):
                statistics_s = seconds
        largest, offset = 0, 0
        while True:
            page = client.request("POST", "/artifacts/filter", json={"limit": 200, "offset": offset}).json()
            if not page:
                break
            largest = max([largest, *(len(json.dumps(a.get("data"))) for a in page)])
            offset += len(page)
    flow_s = (run.end_time - run.start_time).total_seconds() if run.end_time else 0.0
    return {
        "task_runs": task_runs,
        "gpu_task_runs": gpu_task_runs,
        "waves_s": waves_s,
        "flow_s": flow_s,
        "register_s": register_s,
        "statistics_s": statistics_s,
        "largest_artifact": largest,
    }


def corpus(out: Path, size: int, offset: int = 0) -> None:
    """``size`` clips under ``out/videos`` named from ``offset``: hard links to a few distinct ones."""
    from trackset.synthetic.corpus import make_corpus

    distinct = out.parent.parent / "distinct"
    if len(list(distinct.glob("*.mp4"))) < DISTINCT:
        shutil.rmtree(distinct, ignore_errors=True)
        make_corpus(distinct, DISTINCT, seed=9, num_frames=FRAMES, width=WIDTH, height=HEIGHT)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(offset, offset + size):
        for suffix in (".mp4", ".scene.json"):
            os.link(distinct / f"clip_{i % DISTINCT:03d}{suffix}", videos / f"clip_{i:06d}{suffix}")


def run_child(out: Path, server: Server) -> dict[str, Any]:
    env = {**server.env, "PREFECT_API_URL": server.url}
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    sampler = PeakSampler(process.pid, server.process.pid)
    sampler.start()
    stdout, _ = process.communicate()
    peaks = sampler.stop()
    server.check_alive()
    if process.returncode:
        raise RuntimeError(f"the flow failed (exit {process.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Not os.environ: Prefect reads it once per process, and each size has a server of its own.
    with temporary_settings(updates={PREFECT_API_URL: server.url}):
        result.update(api_facts(result["flow_run_id"]))
    result["peaks"] = peaks
    result["db_bytes"] = server.db_bytes()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--refresh", type=int, default=500)
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-scale"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks = []
    for db in args.db:
        root = args.out / db
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        results = []
        for size in args.sizes:
            server = Server(root / f"server-{size}", db)  # each size on a fresh database
            try:
                out = root / "runs" / str(size)
                corpus(out, size)
                print(f"{db}: building {size} videos", file=sys.stderr, flush=True)
                result = {"size": size, **run_child(out, server)}
                if size == max(args.sizes) and args.refresh:
                    corpus(out, args.refresh, offset=size)
                    print(f"{db}: refreshing with {args.refresh} new videos", file=sys.stderr, flush=True)
                    result["refresh"] = run_child(out, server)
                results.append(result)
            finally:
                server.stop()
        blocks.append(report(db, results))
    print(header(args, started) + "\n\n" + "\n\n".join(blocks))


def header(args: argparse.Namespace, started: str) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"- command: `.venv/bin/python bench/scale.py {' '.join(sys.argv[1:])}`",
            f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}, no GPU (2 fake GPUs, 2 workers "
            f"each, 2 CPU workers); load average at the end {load}",
            f"- date: {started}",
            f"- corpus: {FRAMES}-frame {WIDTH}x{HEIGHT} synthetic clips, H5 of {H5_SIZE} px, zero-cost synthetic "
            "models, `keep_intermediates: none`, default `wave_size`, `cpu_task_videos`, `gpu_task_videos`",
        ]
    )


def report(db: str, results: list[dict[str, Any]]) -> str:
    lines = [
        f"**{db}**",
        "",
        "| videos | wall s | in-stage s | task runs | task runs/video | GPU-stage task runs/video | server DB MiB "
        "| largest artifact KiB | flow RSS MiB | worker RSS MiB | server RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peaks = r["peaks"]
        lines.append(
            f"| {r['size']} | {r['wall_s']:.0f} | {r['stage_s']:.0f} | {r['task_runs']} "
            f"| {r['task_runs'] / r['size']:.2f} "
            f"| {r['gpu_task_runs'] / r['size']:.3f} "
            f"| {r['db_bytes'] / MIB:.0f} | {r['largest_artifact'] / 1024:.1f} "
            f"| {peaks.get('flow process (with the Dask scheduler)', 0) / MIB:.0f} "
            f"| {peaks.get('Dask worker (largest)', 0) / MIB:.0f} | {peaks.get('server', 0) / MIB:.0f} |"
        )
    if len(results) >= 2:
        small, large = results[-2], results[-1]
        extra = large["size"] - small["size"]
        role = "flow process (with the Dask scheduler)"
        growth = (large["peaks"].get(role, 0) - small["peaks"].get(role, 0)) / 1024 / extra
        per_video = (large["wall_s"] - small["wall_s"]) / extra
        lines += [
            "",
            f"- flow process RSS growth: {growth:+.1f} KiB per video ({small['size']} -> {large['size']})",
            f"- wall time per extra video: {per_video * 1000:.0f} ms; extrapolated to 50,000 videos: "
            f"{(large['wall_s'] + per_video * (50_000 - large['size'])) / 3600:.1f} h of orchestration",
        ]
    refresh = results[-1].get("refresh") if results else None
    if refresh:
        outside = refresh["flow_s"] - refresh["waves_s"]
        lines += [
            f"- refresh adding new videos to {results[-1]['size']}: wall {refresh['wall_s']:.0f} s; registration "
            f"{refresh['register_s']:.1f} s, statistics {refresh['statistics_s']:.1f} s, everything outside the "
            f"stages {outside:.1f} s",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
