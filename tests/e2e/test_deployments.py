"""The deployments of ``deployments/prefect.yaml`` on a real server, run by a real worker.

Checks what README's "Run it with Prefect" promises: ``build-dataset/manual`` builds the
dataset and publishes its artifacts, ``build-dataset/nightly-refresh`` processes only the
videos added since and leaves statistics byte-identical to a clean build of everything, and
the nightly cron (set at deploy time) makes the server schedule runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest
import yaml
from prefect.client.schemas.objects import Artifact, FlowRun

from tests.e2e import (
    ADDED_SEED,
    ADDED_VIDEOS,
    BASE_VIDEOS,
    Build,
    DatasetDirs,
    PrefectServer,
    add_clips,
    artifacts_by_key,
    describe_state,
    upcoming_auto_scheduled_runs,
    video_ids,
)
from trackset.config.settings import Settings
from trackset.domain import stage_slug
from trackset.reports.run_report import RunReport
from trackset.stages.registry import GPU_STAGES, enabled_stages

pytestmark = pytest.mark.slow

STATS = "normalization_stats.yaml"
THREADS = {"cluster": {"runner": "threads"}}


def file_digests(dataset: Path) -> dict[str, str]:
    """sha256 of every H5 file and of the statistics of a dataset directory."""
    files = sorted(dataset.glob("*.hdf5")) + [dataset / STATS]
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def h5_mtimes(dataset: Path) -> dict[str, int]:
    """H5 file name -> modification time (ns): a file a run skipped keeps its time."""
    return {path.name: path.stat().st_mtime_ns for path in dataset.glob("*.hdf5")}


def manifest_sources(dataset: Path) -> dict[str, str]:
    """Video id -> source path of the manifest's video lines (the latest line of a path wins)."""
    lines = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    return {line["video_id"]: line["source"] for line in lines if line.get("kind") == "video"}


def report_statuses(summary: Artifact, stage: str) -> dict[str, str]:
    """Video -> status of ``stage`` in the run report the ``run-summary`` artifact names."""
    [path] = re.findall(r"every video of this run: `([^`]+)`", summary.data)
    return {record.video_id: record.status for record in RunReport(Path(path)).records(stage)}


def completed_run(server: PrefectServer, flow_run_id: UUID) -> tuple[FlowRun, dict[str, Artifact]]:
    """The flow run, asserted COMPLETED, and its artifacts (subflows' included) by key."""
    with server.client() as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = artifacts_by_key(client, flow_run_id)
    assert run.state is not None and run.state.is_completed(), f"flow run {run.name}: {describe_state(run)}"
    return run, artifacts


def wait_for_upcoming_runs(server: PrefectServer, deployment_id: UUID, cron_local: str, tz: ZoneInfo) -> list[FlowRun]:
    """Auto-scheduled runs of a deployment, once all of them start at ``cron_local`` (HH:MM) in ``tz``.

    The server's scheduler creates them in the background (~5 s after a deploy, ~15 s after
    start; its main loop runs every 60 s), so poll for up to 90 s.
    """
    deadline = time.monotonic() + 90
    while True:
        with server.client() as client:
            runs = upcoming_auto_scheduled_runs(client, deployment_id)
        starts = [run.expected_start_time.astimezone(tz).strftime("%H:%M") for run in runs]
        if runs and set(starts) == {cron_local}:
            return runs
        assert time.monotonic() < deadline, f"no runs scheduled at {cron_local} {tz}; upcoming: {starts}"
        time.sleep(2)


def test_manual_run_builds_the_dataset_and_publishes_every_artifact(deployed: PrefectServer, manual_build: Build):
    run, artifacts = completed_run(deployed, manual_build.flow_run_id)
    with deployed.client() as client:
        assert run.deployment_id == client.read_deployment_by_name("build-dataset/manual").id

    dataset = manual_build.dirs.dataset
    assert all((dataset / f"{vid}.hdf5").is_file() for vid in video_ids(0, BASE_VIDEOS))
    assert yaml.safe_load((dataset / STATS).read_text())["pose_num_samples"] > 0

    stages = enabled_stages(Settings())
    gpu_stages = [stage for stage in stages if stage in GPU_STAGES]
    slugs = [stage_slug(stage) for stage in stages]
    expected = {"run-summary"} | {f"progress-{s}" for s in slugs} | {f"stage-{s}" for s in slugs}
    expected |= {f"memory-profile-{stage_slug(stage)}" for stage in gpu_stages}  # Dask runner only
    assert expected <= set(artifacts), f"missing artifacts: {sorted(expected - set(artifacts))}"
    assert {artifacts[f"progress-{s}"].data for s in slugs} == {100}
    for stage in stages:
        statuses = report_statuses(artifacts["run-summary"], stage)
        assert statuses == dict.fromkeys(video_ids(0, BASE_VIDEOS), "done"), stage
    summary = artifacts["run-summary"].data
    assert f"videos in dataset: **{BASE_VIDEOS}**" in summary
    assert f"videos processed this run: **{BASE_VIDEOS}**" in summary
    assert "failures: **0**" in summary
    # The GPU stages ran on the pinned Dask workers (gpu<g>-w<k>), not in the flow's process.
    for stage in gpu_stages:
        workers = {row["worker"] for row in json.loads(artifacts[f"stage-{stage_slug(stage)}"].data) if row["worker"]}
        assert workers == {"gpu0-w0"}, (stage, workers)


def test_nightly_refresh_processes_only_added_videos_and_matches_a_clean_build(
    deployed: PrefectServer, manual_build: Build, tmp_path: Path
):
    nightly = manual_build.dirs
    before = h5_mtimes(nightly.dataset)
    add_clips(nightly.videos, ADDED_VIDEOS, seed=ADDED_SEED, first_index=BASE_VIDEOS)
    clean = DatasetDirs.under(tmp_path / "clean", videos=nightly.videos)

    # Both runs go to one run-once worker, which runs them side by side.
    nightly_id = deployed.run_deployment(
        "build-dataset/nightly-refresh", {"settings_path": "settings.yaml", "overrides": nightly.overrides(**THREADS)}
    )
    clean_id = deployed.run_deployment(
        "build-dataset/manual", {"settings_path": "settings.yaml", "overrides": clean.overrides(**THREADS)}
    )
    deployed.run_worker_once(timeout_s=300)

    _, artifacts = completed_run(deployed, nightly_id)
    completed_run(deployed, clean_id)
    added = video_ids(BASE_VIDEOS, BASE_VIDEOS + ADDED_VIDEOS)
    assert report_statuses(artifacts["run-summary"], "h5_build") == dict.fromkeys(added, "done")
    summary = artifacts["run-summary"].data
    assert f"videos in dataset: **{BASE_VIDEOS + ADDED_VIDEOS}**" in summary
    assert f"videos processed this run: **{ADDED_VIDEOS}**" in summary
    assert {vid: manifest_sources(nightly.dataset)[vid] for vid in added} == {
        vid: f"clip_{BASE_VIDEOS + i:03d}.mp4" for i, vid in enumerate(added)
    }
    assert {name: mtime for name, mtime in h5_mtimes(nightly.dataset).items() if name in before} == before

    stats = yaml.safe_load((nightly.dataset / STATS).read_text())
    assert stats["hand_pose_num_samples"] > 0, "the comparison below should cover the hand statistics"
    assert file_digests(nightly.dataset) == file_digests(clean.dataset)


def test_nightly_schedule_is_the_deploy_time_cron_and_the_server_schedules_runs(deployed: PrefectServer):
    with deployed.client() as client:
        deployment = client.read_deployment_by_name("build-dataset/nightly-refresh")
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "UTC", True)
    runs = wait_for_upcoming_runs(deployed, deployment.id, "02:00", ZoneInfo("UTC"))
    assert len(runs) >= 3  # the scheduler keeps at least three upcoming runs
    # The unattended refresh runs with the stricter failure setting and a time limit.
    nightly_overrides = {"run": {"fail_on_video_error": True}, "timeouts": {"flow_hours": 20}}
    assert all(run.parameters == {"settings_path": "settings.yaml", "overrides": nightly_overrides} for run in runs)

    # docs/prefect.md: cron and timezone are chosen when deploying.
    deployed.deploy(TRACKSET_NIGHTLY_CRON="30 3 * * 1-5", TRACKSET_NIGHTLY_TIMEZONE="Europe/Berlin")
    with deployed.client() as client:
        [schedule] = client.read_deployment_by_name("build-dataset/nightly-refresh").schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 3 * * 1-5", "Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    runs = wait_for_upcoming_runs(deployed, deployment.id, "03:30", berlin)
    assert all(run.expected_start_time.astimezone(berlin).weekday() < 5 for run in runs)


def test_each_deployment_runs_one_build_at_a_time(deployed: PrefectServer):
    """Manual builds queue behind a running one; a nightly refresh due during one is cancelled."""
    with deployed.client() as client:
        manual = client.read_deployment_by_name("build-dataset/manual")
        nightly = client.read_deployment_by_name("build-dataset/nightly-refresh")
    for deployment, strategy in ((manual, "ENQUEUE"), (nightly, "CANCEL_NEW")):
        assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
        assert deployment.concurrency_options is not None
        assert deployment.concurrency_options.collision_strategy.value == strategy
