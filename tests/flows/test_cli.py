"""The ``trackset`` command line against the real flow and server: one-line errors on stderr
and exit codes before any video is touched (every other error path:
``tests/unit/test_cli_errors.py``), and the live display's reading of a run's progress."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from trackset.dataset.lock import DatasetLock
from trackset.flows.cli import EXIT_BUSY, EXIT_OK, EXIT_USAGE, main
from trackset.flows.live_progress import Line, api_fetch


def run_args(tmp_path, *args: str) -> list[str]:
    videos = tmp_path / "videos"
    return [
        "run",
        "--settings",
        "settings.yaml",
        "--set",
        f"paths.videos_dir={videos}",
        "--set",
        f"paths.work_dir={tmp_path / 'work'}",
        "--set",
        f"paths.dataset_dir={tmp_path / 'dataset'}",
        *args,
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "h5.target_size=0"],
            "settings: h5.target_size: Input should be greater than 0 (got 0); from --set h5.target_size=0",
        ),
        (["--set", "h5.nope=1"], "settings: h5.nope: unknown key; from --set h5.nope=1"),
        (["--set", "depth_camera.backend=real"], "backend 'real' for depth_camera needs the 'vipe' package"),
        (["--set", "hands.backend=real"], "backend 'real' for hands needs"),
    ],
)
def test_bad_settings_and_missing_models_fail_in_one_line(tmp_path, capsys, args, message):
    code = main(run_args(tmp_path, *args))
    captured = capsys.readouterr()
    assert code == EXIT_USAGE and captured.out == ""
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "dataset").exists()  # nothing was touched


def test_a_dataset_held_by_another_run_exits_3_naming_the_holder(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    with DatasetLock(tmp_path / "dataset", flow_run_id="the-nightly-build"):
        code = main(run_args(tmp_path, "--set", "cluster.runner=threads"))
    captured = capsys.readouterr()
    assert code == EXIT_BUSY
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert f"error: dataset {tmp_path / 'dataset'} is being built by another run" in error_lines[0]
    assert "flow run the-nightly-build" in error_lines[0]
    assert not (tmp_path / "work").exists()


def test_a_work_directory_held_by_another_dataset_exits_3_naming_the_holder(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    with DatasetLock(tmp_path / "nightly", flow_run_id="the-nightly-build", work_dir=tmp_path / "work"):
        code = main(run_args(tmp_path, "--set", "cluster.runner=threads"))
    captured = capsys.readouterr()
    assert code == EXIT_BUSY
    [line] = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: work directory {tmp_path / 'work'} is in use by another run")
    assert "flow run the-nightly-build" in line and f"building dataset {tmp_path / 'nightly'}" in line
    assert not (tmp_path / "dataset").exists()  # the CLI's probe creates nothing


@pytest.mark.slow  # a whole (empty) flow run: ~7 s
def test_a_folder_of_files_that_are_not_videos_is_said_so_not_taken_for_an_empty_corpus(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.m4v", "b.M4V", "metadata.csv"):
        (videos / name).write_bytes(b"x")
    code = main(run_args(tmp_path, "--set", "cluster.runner=threads"))
    captured = capsys.readouterr()
    assert code == EXIT_OK  # nothing failed: the folder holds no video
    assert "not registered: 2 files (name not ending in one of paths.video_extensions): a.m4v, b.M4V" in captured.out
    [warning] = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warning.startswith("warning: the dataset has no videos: nothing was registered (the videos folder holds 2")


def test_the_live_display_reads_the_progress_of_runs_started_after_it():
    from prefect import flow
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    @flow
    def earlier():
        create_progress_artifact(5.0, key="progress-hands")

    @flow
    def staged():
        create_progress_artifact(100.0, key="progress-preprocess")
        run = create_progress_artifact(20.0, key="progress-run", description="ETA estimating")
        depth = create_progress_artifact(10.0, key="progress-depth-camera")
        update_progress_artifact(depth, 40.0, description="4 of 10 videos")
        update_progress_artifact(run, 30.0, description="ETA 2 min")

    earlier()
    time.sleep(0.05)
    fetch = api_fetch(datetime.now(timezone.utc))
    staged()
    assert fetch() == {
        "preprocess": Line(100.0, ""),
        "depth-camera": Line(40.0, "4 of 10 videos"),
        "run": Line(30.0, "ETA 2 min"),
    }
