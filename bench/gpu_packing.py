"""Benchmark of GPU packing: profiled vs observed peak, out-of-memory recovery, 1 vs k workers per GPU.

    .venv/bin/python bench/gpu_packing.py --out /tmp/trackset-bench-gpu

Issue 5 asks whether the memory profile predicts what a GPU stage really holds, whether
packing several workers per GPU pays, and whether out-of-memory failures are recovered. On a
machine without a GPU the fake device stands in (DECISIONS.md "GPU memory"): ``--fake-gpus``
fake GPUs of ``--gpu-gb`` GiB (smaller than the default 32 GiB, so packing is tight) whose
shared ledger raises ``torch.cuda.OutOfMemoryError`` past capacity, and whose GPU phase is
serialised per fake GPU while the CPU phase does real work.

What it does:

1. Writes a corpus whose videos have *different* lengths (``--lengths``, in video-id order),
   so the depth stage's footprint ``model_mb + per_video_mb + per_frame_mb * frames`` varies
   per video and the profile's prediction is tested rather than assumed. The first three
   videos are short, short, long; the longest video of all comes later.
2. Builds every intermediate once with the thread runner and no simulated cost (outputs do
   not depend on the runner or the costs, see ``trackset.stages.config``).
3. For each configuration, deletes only the depth stage's and the H5 build's outputs and runs
   the real ``build-dataset`` flow on the Dask runner, so depth_camera is the only stage doing
   real work (plus the cheap H5 rebuild, the same in every configuration):

   - ``1 worker/GPU``: ``cluster.max_workers_per_gpu: 1``, the baseline;
   - ``sized, mixed profile``: 3 profiling videos (short, short, long), k from the sizing;
   - ``sized, short profile``: 2 profiling videos (both short). The prediction is then too
     low and k too high, long videos run out of memory, and the out-of-memory policy re-runs
     them on fewer workers per GPU: the prediction is only as good as the profiled videos.

4. Prints a markdown block for BENCHMARKS.md: the predicted peak (largest peak among the
   profiling videos' records, as ``profile-memory`` takes it) vs the highest peak of the run,
   the workers per GPU of each round (planned by the ``memory-profile-depth-camera`` artifact
   and shrinking, and seen in the records' worker names), out-of-memory failures and whether
   they were recovered or quarantined, and videos/s. Times come from the Prefect API: each
   depth subflow's wall time (Dask cluster start and stop included) and its processing span
   (first task start to last task end), plus the whole flow timed here.

With a real GPU the same script runs unchanged on real allocations: NVML's inventory replaces
the fake one (``--fake-gpus``/``--gpu-gb`` are then ignored), stage workers allocate real
``torch.ones`` tensors on their pinned GPU (``TorchAllocator``), and peaks come from
``torch.cuda.max_memory_reserved`` + the CUDA context and NVML. Scale the costs to the GPU,
e.g. on one 80 GB H100 ``--model-mb 15000 --per-video-mb 2500 --per-frame-mb 250``. The GPU
phase is then a plain sleep without a per-GPU lock, so the throughput columns only measure
CPU overlap there; the memory columns are the real test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import run_history

from trackset.domain import STAGE_ORDER, StageRecord
from trackset.flows.cli import EPHEMERAL_SERVER_DEFAULTS
from trackset.gpu.sizing import GIB, shrink
from trackset.synthetic.corpus import encode_scene, video_seed
from trackset.synthetic.scene import SceneSpec

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, TaskRun

    from trackset.domain import StageOutcome
    from trackset.reports.run_report import RunSummary

STAGE = "depth_camera"
MIB = 2**20
# Frames of each video in id order: the first three are the "mixed" profiling set (short,
# short, long); the rest mixes lengths, and its longest video (64) exceeds every profiled one.
DEFAULT_LENGTHS = "20,22,58,60,40,64,18,56,42,62,24,60,38,20,44"
WIDTH, HEIGHT, H5_SIZE, FPS = 128, 96, 64, 10.0


@dataclass(frozen=True)
class Config:
    """One way to run the depth stage: how many videos are profiled, how many workers may share a GPU."""

    name: str
    profiling_videos: int
    max_workers_per_gpu: int


CONFIGS = (
    Config("1 worker/GPU", profiling_videos=3, max_workers_per_gpu=1),
    Config("sized, mixed profile", profiling_videos=3, max_workers_per_gpu=4),
    Config("sized, short profile", profiling_videos=2, max_workers_per_gpu=4),
)


@dataclass
class Round:
    """One subflow of the depth stage: the profiling run, or one (re-)run of the other videos."""

    kind: str
    videos: int
    wall_s: float
    span_s: float
    workers_per_gpu: int | None
    workers_seen: int


@dataclass
class Result:
    """What one configuration's flow run did in the depth stage."""

    config: Config
    flow_s: float
    rounds: list[Round]
    profiled_frames: list[int]
    predicted_peak: int
    observed_peak: int
    observed_peak_frames: int
    oom: int
    recovered: int
    quarantined: int
    done: int
    in_worker_s_per_frame: float
    failures: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[Round]:
        return [r for r in self.rounds if r.kind != "profile"]

    @property
    def run_videos(self) -> int:
        """Videos after profiling: the first run's (re-runs repeat some of them)."""
        return self.runs[0].videos if self.runs else 0

    def run_rate(self, processing: bool) -> float:
        """Videos/s after profiling, over the processing spans or the subflows' wall time."""
        seconds = sum(r.span_s if processing else r.wall_s for r in self.runs)
        return self.run_videos / seconds if seconds else 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-gpu"), help="corpus, work and dataset")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="frames of each video, in id order")
    parser.add_argument("--seed", type=int, default=5, help="corpus seed")
    parser.add_argument("--fake-gpus", type=int, default=2, help="fake GPUs (used without NVML)")
    parser.add_argument("--gpu-gb", type=float, default=16.0, help="GiB of each fake GPU")
    parser.add_argument("--model-mb", type=float, default=3000.0, help="MiB the depth model holds per worker")
    parser.add_argument("--per-video-mb", type=float, default=500.0, help="MiB held per video")
    parser.add_argument("--per-frame-mb", type=float, default=50.0, help="MiB held per frame of a video")
    parser.add_argument("--gpu-s-per-frame", type=float, default=0.05, help="GPU seconds per frame (serialised per GPU)")
    parser.add_argument("--cpu-s-per-frame", type=float, default=0.05, help="real CPU seconds per frame")
    return parser.parse_args()


def make_corpus_of_lengths(videos_dir: Path, lengths: list[int], seed: int) -> None:
    """One directory of videos of different lengths, each with its ``.scene.json`` sidecar.

    ``make_corpus`` gives all clips of a call one length and names them ``clip_<i>``, so
    several calls would collide in one directory; its per-clip step ``encode_scene`` writes
    a video and its sidecar under any name. Names sort in id order (the manifest numbers
    videos by sorted path), which fixes which videos are profiled. A corpus with the same
    names is reused.
    """
    plan = {f"v{i:02d}-f{n:03d}.mp4": n for i, n in enumerate(lengths)}
    existing = {p.name for p in videos_dir.glob("*.mp4")} if videos_dir.is_dir() else set()
    if existing == set(plan) and all((videos_dir / name).with_suffix(".scene.json").is_file() for name in plan):
        return
    shutil.rmtree(videos_dir, ignore_errors=True)
    videos_dir.mkdir(parents=True)
    for index, (name, frames) in enumerate(plan.items()):
        encode_scene(SceneSpec.from_seed(video_seed(seed, index), frames, FPS, WIDTH, HEIGHT), videos_dir / name)


def base_overrides(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Settings every run shares: small frames, the fake GPUs, quick retries."""
    return {
        "paths": {"videos_dir": str(out / "videos"), "work_dir": str(out / "work"), "dataset_dir": str(out / "dataset")},
        "preprocess": {"width": WIDTH, "height": HEIGHT, "fps": FPS},
        "h5": {"target_size": H5_SIZE},
        "tracks_3d": {"points_per_window": 32},
        "retry": {"retries": 1, "retry_delay_s": 0.1},
        "cluster": {"fake_gpus": [{"name": "FakeGPU", "memory_gb": args.gpu_gb}] * args.fake_gpus},
    }


def with_cluster(overrides: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    return {**overrides, "cluster": {**overrides["cluster"], **cluster}}


def invalidate_depth(overrides: dict[str, Any], video_ids: list[str]) -> None:
    """Make the depth stage and the H5 build due again; every other stage stays current.

    Their markers and outputs go (the H5 build has no marker: its partials file is one). The
    H5 files must go too, or registration finds every video current and runs nothing.
    """
    from trackset.config.settings import load_settings
    from trackset.stages.registry import build_stage

    settings = load_settings(overrides=overrides)
    for stage in (STAGE, "h5_build"):
        checker = build_stage(stage, settings)
        for video_id in video_ids:
            for path in (checker.marker_path(video_id), *checker.outputs(video_id)):
                path.unlink(missing_ok=True)


def outcome_of(summary: RunSummary, stage: str) -> StageOutcome:
    return next(o for o in summary.stages if o.stage == stage)


def processing_span_s(task_runs: list[TaskRun]) -> float:
    """First task start to last task end: a subflow's work without the cluster's start and stop."""
    return (max(r.end_time for r in task_runs) - min(r.start_time for r in task_runs)).total_seconds()


def planned_workers(profile_run_id: UUID) -> int | None:
    """Workers per GPU of the ``memory-profile-depth-camera`` artifact (smallest over GPUs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["memory-profile-depth-camera"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[profile_run_id]),
            )
        )
    if not artifacts:
        return None
    rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
    return min(int(row["workers per GPU"]) for row in rows)


def workers_seen(records: list[StageRecord]) -> int:
    """Most distinct workers one GPU ran these records on (worker names are ``gpu<g>-w<k>``)."""
    per_gpu: dict[str | None, set[str]] = {}
    for record in records:
        per_gpu.setdefault(record.gpu, set()).add(record.worker)
    return max((len(workers) for workers in per_gpu.values()), default=0)


def read_rounds(subflows: list[FlowRun], task_runs: list[list[TaskRun]], records: dict[str, StageRecord]) -> list[Round]:
    """Each subflow (with its task runs) as a round; a record belongs to the last round its video ran in."""
    rounds: list[Round] = []
    workers: int | None = 1
    for index, run in enumerate(subflows):
        ids = run_history.video_ids(task_runs[index])
        later = {v for runs in task_runs[index + 1 :] for v in run_history.video_ids(runs)}
        if index == 1:
            workers = planned_workers(subflows[0].id)
        elif index > 1 and workers is not None:
            workers = shrink(workers)
        rounds.append(
            Round(
                "profile" if index == 0 else f"run {index}",
                len(ids),
                (run.end_time - run.start_time).total_seconds(),
                processing_span_s(task_runs[index]),
                workers,
                workers_seen([records[v] for v in ids if v in records and v not in later]),
            )
        )
    return rounds


def run_config(config: Config, overrides: dict[str, Any], video_ids: list[str], frames: dict[str, int]) -> Result:
    """Run the flow once for ``config`` and read back what the depth stage did."""
    from trackset.flows.build_dataset import build_dataset

    invalidate_depth(overrides, video_ids)
    run_overrides = with_cluster(
        overrides, runner="dask", profiling_videos=config.profiling_videos, max_workers_per_gpu=config.max_workers_per_gpu
    )
    start = time.perf_counter()
    state = build_dataset(overrides=run_overrides, return_state=True)
    flow_s = time.perf_counter() - start
    summary: RunSummary = state.result()

    others = [s for s in STAGE_ORDER if s not in (STAGE, "h5_build")]
    busy = [s for s in others if any(r.status != "skipped" for r in outcome_of(summary, s).records)]
    if busy:
        raise RuntimeError(f"stages {busy} did work; only {STAGE} and h5_build were meant to run")

    depth = outcome_of(summary, STAGE)
    records = {r.video_id: r for r in depth.records if r.status == "done"}
    if not records:
        raise RuntimeError(f"{config.name}: no video got through {STAGE}: {depth.failures}")
    profiled = video_ids[: config.profiling_videos]
    observed_id = max(records, key=lambda v: records[v].peak_bytes or 0)
    subflows = run_history.stage_subflows(state.state_details.flow_run_id, [STAGE])
    task_runs = [run_history.settled_task_runs(run, run_history.subflow_videos(run)) for run in subflows]
    rounds = read_rounds(subflows, task_runs, records)
    rerun_ids = {v for runs in task_runs[2:] for v in run_history.video_ids(runs)}
    quarantined = [f for f in depth.failures if f.kind == "quarantined"]
    after_profile = [records[v] for v in video_ids[config.profiling_videos :] if v in records]
    return Result(
        config=config,
        flow_s=flow_s,
        rounds=rounds,
        profiled_frames=[frames[v] for v in profiled],
        predicted_peak=max((records[v].peak_bytes or 0 for v in profiled if v in records), default=0),
        observed_peak=records[observed_id].peak_bytes or 0,
        observed_peak_frames=frames[observed_id],
        oom=len(rerun_ids | {f.video_id for f in quarantined}),
        recovered=sum(v in records for v in rerun_ids),
        quarantined=len(quarantined),
        done=len(records),
        in_worker_s_per_frame=sum(r.seconds for r in after_profile) / max(1, sum(frames[r.video_id] for r in after_profile)),
        failures=[f"{f.video_id} ({f.kind}): {f.reason}" for f in depth.failures],
    )


def machine_line() -> str:
    """nproc, memory, CPU, GPU and load: what makes these numbers comparable, or not."""
    import torch

    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (fake device)"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"nproc {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), {mem_kib / 2**20:.1f} GiB RAM, {model}, {gpu}; "
        f"load average {load} at start; Python {platform.python_version()}, torch {torch.__version__}"
    )


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def report(args: argparse.Namespace, lengths: list[int], results: list[Result], started: str, machine: str) -> str:
    """The markdown block for BENCHMARKS.md."""
    formula = (args.model_mb + args.per_video_mb + args.per_frame_mb * max(lengths)) * MIB
    lines = [
        "### GPU packing (`bench/gpu_packing.py`)",
        "",
        f"- command: `.venv/bin/python {' '.join(sys.argv)}`",
        f"- machine: {machine}",
        f"- date: {started}",
        (
            f"- corpus: {len(lengths)} videos, {sum(lengths)} frames, {WIDTH}x{HEIGHT} at {FPS:g} fps; "
            f"frames in id order: {', '.join(map(str, lengths))}"
        ),
        f"- GPUs: {args.fake_gpus} fake x {args.gpu_gb:g} GiB unless NVML finds real ones; headroom 0.9",
        (
            f"- depth_camera cost: {args.model_mb:g} MiB model + {args.per_video_mb:g} MiB/video + "
            f"{args.per_frame_mb:g} MiB/frame (longest video by this formula: {gib(formula)} GiB); "
            f"GPU phase {args.gpu_s_per_frame:g} s/frame, one worker at a time per GPU; CPU work "
            f"{args.cpu_s_per_frame:g} s/frame. Every other stage is current and skipped; the H5 build "
            "re-runs alike in every configuration."
        ),
        "",
        "Memory: predicted = largest peak among the profiling videos; observed = largest over the stage.",
        "",
        (
            "| configuration | profiled videos (frames) | predicted peak GiB | observed peak GiB (frames) "
            "| observed / predicted | rounds: videos @ workers/GPU planned (seen) | OOM failures | recovered "
            "| quarantined |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rounds = "; ".join(f"{x.kind}: {x.videos} @ {x.workers_per_gpu} ({x.workers_seen})" for x in r.rounds)
        lines.append(
            f"| {r.config.name} | {r.config.profiling_videos} ({', '.join(map(str, r.profiled_frames))}) "
            f"| {gib(r.predicted_peak)} | {gib(r.observed_peak)} ({r.observed_peak_frames}) "
            f"| {r.observed_peak / r.predicted_peak:.3f} | {rounds} | {r.oom} | {r.recovered} | {r.quarantined} |"
        )
    lines += [
        "",
        (
            "Throughput of the videos after profiling: processing = first task start to last task end of "
            "each run subflow; wall = the subflows' start to end, Dask cluster start and stop included."
        ),
        "",
        (
            "| configuration | videos | processing s | videos/s (processing) | wall s | videos/s (wall) "
            "| in-worker s/frame | depth stage wall s (with profiling) | flow s |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.config.name} | {r.run_videos} | {sum(x.span_s for x in r.runs):.1f} | {r.run_rate(True):.3f} "
            f"| {sum(x.wall_s for x in r.runs):.1f} | {r.run_rate(False):.3f} | {r.in_worker_s_per_frame:.3f} "
            f"| {sum(x.wall_s for x in r.rounds):.1f} | {r.flow_s:.1f} |"
        )
    base = results[0]
    lines += ["", f"Ratios against `{base.config.name}`, measured in this run of the script:", ""]
    lines += [
        (
            f"- {r.config.name}: videos/s x{r.run_rate(True) / base.run_rate(True):.2f} (processing), "
            f"x{r.run_rate(False) / base.run_rate(False):.2f} (wall); flow x{base.flow_s / r.flow_s:.2f}"
        )
        for r in results[1:]
    ]
    lines += [
        "",
        (
            "The prediction is only as good as the profiled videos: it is the largest peak among them, so a "
            "longer video later in the corpus holds more (observed / predicted > 1). A few per cent are absorbed "
            "by the 0.9 headroom; when only short videos were profiled, k is too high, videos run out of memory, "
            "and the out-of-memory policy re-runs them with one fewer worker per GPU (rounds above)."
        ),
    ]
    lines += [f"- {r.config.name}: failure {failure}" for r in results for failure in r.failures]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    for key, value in {**EPHEMERAL_SERVER_DEFAULTS, "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    from trackset.flows.build_dataset import build_dataset

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_line()
    lengths = [int(n) for n in args.lengths.split(",")]
    out: Path = args.out
    for stale in ("work", "dataset"):
        shutil.rmtree(out / stale, ignore_errors=True)
    print(f"corpus of {len(lengths)} videos in {out / 'videos'}", file=sys.stderr)
    make_corpus_of_lengths(out / "videos", lengths, args.seed)

    overrides = base_overrides(out, args)
    print("building the intermediates once (thread runner, no simulated cost)", file=sys.stderr)
    prepared = build_dataset(overrides=with_cluster(overrides, runner="threads"))
    if prepared.failures:
        raise RuntimeError(f"building the intermediates failed: {prepared.failures}")
    video_ids = sorted(r.video_id for r in outcome_of(prepared, "h5_build").records)
    frames = dict(zip(video_ids, lengths, strict=True))

    cost = {
        "model_mb": args.model_mb,
        "per_video_mb": args.per_video_mb,
        "per_frame_mb": args.per_frame_mb,
        "gpu_s_per_frame": args.gpu_s_per_frame,
        "cpu_s_per_frame": args.cpu_s_per_frame,
    }
    costed = {**overrides, "synthetic": {STAGE: cost}}
    results = []
    for config in CONFIGS:
        print(f"running {config.name}", file=sys.stderr)
        results.append(run_config(config, costed, video_ids, frames))
    print(report(args, lengths, results, started, machine))


if __name__ == "__main__":
    main()
