"""ETA benchmark: the run's published ETA over a real run, against when the run actually ended.

    .venv/bin/python bench/eta.py --videos 24 --wave-size 6 --out /tmp/trackset-bench-eta

Issue 32 asks that a run say when it will be done, and that on the demo-sized corpus with
real stage times its ETA after 30 % of the work be within 20 % of the time actually left.
This runs the real ``build-dataset`` flow in a child process (Dask runner, two fake GPUs,
a temporary Prefect server, as ``trackset run`` does) on ``bench/waves.py``'s corpus and
settings: synthetic GPU stages that take the time their settings give
(``synthetic.<stage>.gpu_s_per_frame`` in a GPU phase serialised per fake GPU,
``cpu_s_per_frame`` of real CPU work), and the real preprocessing and H5 build on
full-size source videos. A thread of the child reads the run's ``progress-run`` artifact
from the API every :data:`POLL_S` s, as the live display reads it; its metadata are the
engine's estimate (percent done, ETA, seconds since the stages started, on the engine's
clock). The end is the estimate the engine publishes when the stages are done. The child
has a ``PREFECT_HOME`` of its own under ``--out``: the temporary server's database is
otherwise the user's ``~/.prefect/prefect.db``, where an earlier run's (or another user's)
``progress-run`` would be read as this one's.

Printed: a markdown block for BENCHMARKS.md, the ETA at 10, 30 and 50 % done (the percent
the run published) and at each tenth of the run's time, against the time then left; while
a GPU stage had processed no video yet, the time left of the stages timed so far that the
run published instead ("+ ...", its error in brackets).
Each read is left in ``<out>/etas.json``.
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

from simulate import ETA_SHARES, EtaPoint, eta_at
from waves import overrides, prepare

POLL_S = 0.5
RUN_KEY = "progress-run"


class EtaReader(threading.Thread):
    """Reads the run's ``progress-run`` metadata every :data:`POLL_S` s from the flow's own
    temporary server, keeping each new estimate."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.points: list[dict[str, str]] = []
        self._finished = threading.Event()

    def read(self) -> None:
        from prefect.client.orchestration import SyncPrefectClient
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
        from prefect.client.schemas.sorting import ArtifactSort
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # the process's temporary server, the flow's
        if not server.running:
            return
        with SyncPrefectClient(server.api_url) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RUN_KEY])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
        metadata = artifacts[0].metadata_ if artifacts else None
        if metadata and (not self.points or metadata["elapsed_s"] != self.points[-1]["elapsed_s"]):
            self.points.append(dict(metadata))

    def run(self) -> None:
        while not self._finished.wait(POLL_S):
            try:
                self.read()
            except Exception:  # the server starting or busy: the next read tries again
                continue

    def stop(self) -> list[dict[str, str]]:
        self._finished.set()
        self.join()
        self.read()  # the estimate the engine published at the end
        return self.points


def child(out: Path, wave_size: int, gpu_s_per_frame: float) -> dict[str, Any]:
    """Run the flow once in this process, reading its ETA meanwhile; return the reads."""
    from trackset.flows.cli import EPHEMERAL_SERVER_DEFAULTS

    for key, value in {**EPHEMERAL_SERVER_DEFAULTS, "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    from trackset.flows.build_dataset import build_dataset

    reader = EtaReader()
    reader.start()
    started = time.time()
    state = build_dataset(overrides=overrides(out, wave_size, gpu_s_per_frame), return_state=True)
    wall = time.time() - started
    points = reader.stop()
    summary = state.result()
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} failures, e.g. {summary.failures[0]}")
    return {"wall_s": wall, "points": points}


def errors(points: list[EtaPoint], end: float, partial: dict[float, float]) -> list[str]:
    """Table rows: the ETA at 10, 30 and 50 % done, then at each tenth of the run's time;
    where the run published only the time left of the stages timed so far (``partial``, by
    elapsed time), that."""
    rows = []
    for share in ETA_SHARES:
        found = eta_at(points, end, share)
        rows.append(_row(f"{round(100 * share)} % done", found, partial))
    for tenth in range(1, 10):
        point = next((p for p in points if p.elapsed_s >= tenth * end / 10), None)
        found = None if point is None else (point, end - point.elapsed_s)
        rows.append(_row(f"{tenth * 10} % of the time", found, partial))
    return rows


def _row(when: str, found: tuple[EtaPoint, float] | None, partial: dict[float, float]) -> str:
    if found is None:
        return f"| {when} | - | - | - | - | - |"
    point, left = found
    eta, mark = point.eta_s, ""
    if eta is None and point.elapsed_s in partial:
        eta, mark = partial[point.elapsed_s], "+ "
    shown = "-" if eta is None else f"{mark}{eta:.1f}"
    error = "-" if eta is None or left <= 0 else f"{eta / left - 1:+.1%}"
    if mark and error != "-":
        error = f"({error})"
    return f"| {when} | {point.elapsed_s:.1f} | {point.percent:.1f} | {shown} | {left:.1f} | {error} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--wave-size", type=int, default=6)
    parser.add_argument("--gpu-s-per-frame", type=float, default=0.1)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--source", default="1280x720", help="source video size WxH")
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-eta"))
    parser.add_argument("--child", nargs=2, metavar=("DIR", "WAVE_SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), int(args.child[1]), args.gpu_s_per_frame)))
        return
    from trackset.synthetic.corpus import make_corpus

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    corpus = args.out / f"corpus-{args.videos}-{args.frames}-{args.source}"
    if len(list(corpus.glob("*.mp4"))) != args.videos:
        shutil.rmtree(corpus, ignore_errors=True)
        width, height = (int(x) for x in args.source.split("x"))
        make_corpus(corpus, args.videos, seed=5, num_frames=args.frames, width=width, height=height)
    run, home = args.out / "run", args.out / "prefect-home"
    prepare(run, corpus)
    shutil.rmtree(home, ignore_errors=True)
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(run),
            str(args.wave_size),
            "--gpu-s-per-frame",
            str(args.gpu_s_per_frame),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PREFECT_HOME": str(home)},
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (args.out / "etas.json").write_text(json.dumps(result))
    print(report(result, started, args))


def report(result: dict[str, Any], started: str, args: argparse.Namespace) -> str:
    reads = result["points"]
    end = float(reads[-1]["elapsed_s"])
    points = [
        EtaPoint(float(p["elapsed_s"]), float(p["percent"]), float(p["eta_s"]) if "eta_s" in p else None) for p in reads
    ]
    partial = {float(p["elapsed_s"]): float(p["eta_known_stages_s"]) for p in reads if "eta_known_stages_s" in p}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"- command: `.venv/bin/python bench/eta.py {' '.join(sys.argv[1:])}`",
            f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}, no GPU (2 fake GPUs, "
            f"2 workers each at most); load average at the end {load}",
            f"- date: {started}",
            f"- corpus: {args.videos} synthetic videos of {args.frames} frames at {args.source}, waves of "
            f"{args.wave_size}; GPU phase {args.gpu_s_per_frame} s per frame (hands and object masks half) "
            "per video, serialised per fake GPU (`bench/waves.py`'s settings)",
            f"- the stages ran {end:.1f} s (the flow {result['wall_s']:.1f} s); {len(points)} estimates read",
            "",
            "| when | elapsed s | % done (published) | ETA s | time left s | error |",
            "|---|---|---|---|---|---|",
            *errors(points, end, partial),
        ]
    )


if __name__ == "__main__":
    main()
