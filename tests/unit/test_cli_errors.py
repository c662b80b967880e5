"""Every error path of the ``trackset`` CLI: its message, its stream and its exit status.

Exit status (``trackset --help``): 0 done, 1 failed videos (or a dataset with problems, or an
H5 that cannot be drawn), 2 bad arguments or settings, 3 a dataset held by another run.
Errors go to stderr, results to stdout. No test here runs a flow: where a command would,
``build_dataset`` is replaced by a stand-in that returns or raises what the flow would.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import h5py
import numpy as np
import pytest

import trackset.flows.build_dataset
from trackset.config.settings import H5Settings
from trackset.dataset.lock import DatasetBusyError, LockHolder
from trackset.domain import StageOutcome, StageRecord, VideoFailure
from trackset.errors import ClusterShapeError
from trackset.flows.cli import EXIT_BUSY, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from trackset.flows.temporary_server import EarlyServer
from trackset.formats.h5_layout import VideoArrays, write_h5
from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import Moments
from trackset.reports.pictures import write_run_pictures
from trackset.reports.run_report import RunReport, RunSummary, StageTally


@pytest.fixture(autouse=True)
def no_temporary_server(monkeypatch):
    """No flow runs here (its stand-in talks to no API), so the CLI starts no Prefect server."""

    def idle(cls: type[EarlyServer]) -> EarlyServer:
        server = cls(None)
        server.start()
        return server

    monkeypatch.setattr(EarlyServer, "start_if_needed", classmethod(idle))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def paths(tmp_path):
    """``--set`` arguments that keep a run's folders under ``tmp_path``."""
    return [
        *("--set", f"paths.videos_dir={tmp_path / 'videos'}"),
        *("--set", f"paths.work_dir={tmp_path / 'work'}"),
        *("--set", f"paths.dataset_dir={tmp_path / 'dataset'}"),
    ]


@pytest.fixture
def no_flow(monkeypatch):
    """Replace the flow; the test sets what it returns or raises."""
    calls: list[dict] = []
    outcome: dict[str, object] = {}

    def fake_build(**kwargs):
        calls.append(kwargs)
        if "raise" in outcome:
            raise outcome["raise"]
        return outcome["summary"]

    monkeypatch.setattr(trackset.flows.build_dataset, "build_dataset", fake_build)
    return outcome


# --- argparse, --help, --version -------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: command"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "--nope"], "unrecognized arguments: --nope"),
        (["make-corpus", "out", "--videos", "six"], "argument --videos: invalid int value: 'six'"),
        (["show", "abc"], "not a video id (digits, e.g. 00042): 'abc'"),
        (["show"], "the following arguments are required: VIDEO_ID"),
    ],
)
def test_bad_arguments_exit_2_on_stderr(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == EXIT_USAGE
    assert message in err and "usage: trackset" in err
    assert out == ""


def test_version_is_the_installed_one(capsys):
    code, out, err = run(capsys, "--version")
    assert (code, err) == (EXIT_OK, "")
    assert out.strip() == f"trackset {importlib.metadata.version('trackset')}"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["show", "--help"]])
def test_help_documents_the_exit_codes(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == EXIT_OK
    assert "exit status:" in out
    for status, words in ((0, "every video landed"), (1, "some videos failed"), (2, "bad arguments or settings")):
        assert f"  {status}  " in out and words in out
    assert "  3  the dataset, or its work directory, is in use by another run" in out


# --- settings: every problem, one line each, with where the value came from -------------


def test_every_bad_set_assignment_is_listed(capsys, paths):
    code, out, err = run(capsys, "run", *paths, "--set", "h5.target_size=[1", "--set", "nokey", "--set", "a..b=1")
    assert code == EXIT_USAGE and out == ""
    assert errors(err) == [
        "error: settings: --set h5.target_size=[1: the value is not valid YAML: expected ',' or ']', "
        "but got '<stream end>' (column 3 of the value)",
        "error: settings: --set nokey: expected key=value with a dotted key, e.g. h5.target_size=128",
        "error: settings: --set a..b=1: expected key=value with a dotted key, e.g. h5.target_size=128",
    ]


def test_a_set_below_a_value_is_named(capsys, paths):
    code, _, err = run(capsys, "run", *paths, "--set", "h5=5", "--set", "h5.target_size=3")
    assert code == EXIT_USAGE
    assert errors(err) == [
        "error: settings: --set h5.target_size=3: h5 is set to a value by an earlier --set, not to a section"
    ]


def test_yaml_syntax_error_names_file_line_column_and_key(capsys, tmp_path):
    settings = tmp_path / "mine.yaml"
    settings.write_text("run:\n  wave_size: 3\nh5:\n  target_size: [1\n  compression: lzf\n")
    code, out, err = run(capsys, "run", "--settings", str(settings))
    assert code == EXIT_USAGE and out == ""
    assert errors(err) == [
        f"error: settings: {settings}, line 5, column 14, in h5.target_size: not valid YAML: "
        "expected ',' or ']', but got ':' (while parsing a flow sequence, line 4)"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n- 2\n", "must hold a mapping of sections (h5:, run:, ...), not a list"),
        ("h5:\n\tx: 1\n", "line 2, column 1, in h5: not valid YAML: found character '\\t' that cannot start any token"),
    ],
)
def test_a_file_that_is_no_settings_mapping_is_named(capsys, tmp_path, text, message):
    settings = tmp_path / "s.yaml"
    settings.write_text(text)
    code, _, err = run(capsys, "validate", str(tmp_path), "--settings", str(settings))
    assert code == EXIT_USAGE
    assert len(errors(err)) == 1 and message in errors(err)[0] and str(settings) in errors(err)[0]


def test_missing_settings_file(capsys, tmp_path):
    code, _, err = run(capsys, "run", "--settings", str(tmp_path / "nope.yaml"))
    assert code == EXIT_USAGE
    assert errors(err) == [f"error: settings: file not found: {tmp_path / 'nope.yaml'}"]


def test_all_validation_errors_name_the_file_the_variable_or_the_set(capsys, tmp_path, paths, monkeypatch):
    settings = tmp_path / "s.yaml"
    settings.write_text("h5:\n  target_size: 0\n  nope: 1\npreprocess:\n  fps: 10\n  width: -5\n")
    monkeypatch.setenv("TRACKSET_PREPROCESS__FPS", "fast")
    monkeypatch.setenv("TRACKSET_CLUSTER__GPUS", "[0, x")
    code, out, err = run(
        capsys, "run", "--settings", str(settings), *paths, "--set", "run.wave_size=0", "--set", "h5.compression=zip"
    )
    assert code == EXIT_USAGE and out == ""
    assert sorted(errors(err)) == sorted(
        [
            "error: settings: preprocess.fps: Input should be a valid number, unable to parse string as a number "
            "(got 'fast'); from the environment, TRACKSET_PREPROCESS__FPS",
            f"error: settings: preprocess.width: Input should be greater than 0 (got -5); from {settings}, line 6",
            f"error: settings: h5.target_size: Input should be greater than 0 (got 0); from {settings}, line 2",
            f"error: settings: h5.nope: unknown key; from {settings}, line 3",
            "error: settings: h5.compression: Input should be 'none', 'lzf' or 'gzip' (got 'zip'); "
            "from --set h5.compression=zip",
            "error: settings: cluster.gpus: Input should be 'auto' (got '[0, x'), or a valid list (got '[0, x'); "
            "from the environment, TRACKSET_CLUSTER__GPUS",
            "error: settings: run.wave_size: Input should be greater than or equal to 1 (got 0); "
            "from --set run.wave_size=0",
        ]
    )
    assert not (tmp_path / "dataset").exists()


def test_a_section_problem_names_each_value_it_was_made_of(capsys, tmp_path, paths):
    settings = tmp_path / "s.yaml"
    settings.write_text("h5:\n  depth_max_m: 1.0\n")
    code, _, err = run(capsys, "run", "--settings", str(settings), *paths, "--set", "h5.depth_min_m=2")
    assert code == EXIT_USAGE
    assert errors(err) == [
        "error: settings: h5: depth_min_m must be below depth_max_m; "
        f"from {settings}, line 2 (h5.depth_max_m) and --set h5.depth_min_m=2"
    ]


def test_a_section_set_whole_is_named_by_its_assignment(capsys, paths):
    code, _, err = run(capsys, "run", *paths, "--set", "h5={target_size: 0}")
    assert code == EXIT_USAGE
    assert errors(err) == [
        "error: settings: h5.target_size: Input should be greater than 0 (got 0); from --set h5={target_size: 0}"
    ]


def test_env_json_that_does_not_parse_names_the_variable(capsys, paths, monkeypatch):
    monkeypatch.setenv("TRACKSET_H5", "{target_size: 3")
    code, _, err = run(capsys, "run", *paths)
    assert code == EXIT_USAGE
    assert errors(err) == [
        "error: settings: h5: not valid JSON (got '{target_size: 3'); from the environment, TRACKSET_H5"
    ]


def test_import_names_its_set_assignments(capsys, tmp_path):
    code, _, err = run(capsys, "import-intermediates", str(tmp_path), "--set", "h5.nope=1")
    assert code == EXIT_USAGE
    assert errors(err) == ["error: settings: h5.nope: unknown key; from --set h5.nope=1"]


# --- what the flow raises or returns ------------------------------------------------------


def summary_with(failures: list[VideoFailure], tmp_path: Path) -> RunSummary:
    tally = StageTally("depth_camera", done=1, failures=failures)
    return RunSummary(str(tmp_path / "dataset"), 3, 3, stages=[tally], report_path=str(tmp_path / "r.jsonl"))


def test_a_clean_run_exits_0_with_nothing_on_stderr(capsys, paths, no_flow, tmp_path):
    no_flow["summary"] = summary_with([], tmp_path)
    code, out, err = run(capsys, "run", *paths)
    assert (code, err) == (EXIT_OK, "")
    assert "Stages" in out


def test_a_run_prints_where_the_pictures_of_its_videos_are(capsys, paths, no_flow, tmp_path):
    dataset = tmp_path / "dataset"
    write_small_h5(dataset, "00007")
    (pictures,) = write_run_pictures(dataset, ["00007"], H5Settings())
    summary = summary_with([], tmp_path)
    RunReport(Path(summary.report_path)).write(StageOutcome("h5_build", [StageRecord("00007", "h5_build", "done")]))
    no_flow["summary"] = summary
    code, out, err = run(capsys, "run", *paths)
    assert (code, err) == (EXIT_OK, "")
    assert f"pictures of 00007: {pictures.mp4}  {pictures.png}" in out.splitlines()


def test_failed_videos_exit_1_and_are_listed_on_stderr(capsys, paths, no_flow, tmp_path):
    failures = [VideoFailure(f"{i:05d}", "depth_camera", f"flat depth [{i}]") for i in range(12)]
    no_flow["summary"] = summary_with(failures, tmp_path)
    code, _, err = run(capsys, "run", *paths)
    assert code == EXIT_FAILED
    assert errors(err) == ["error: 12 video(s) failed; the others landed"]
    assert "  00000 depth_camera (error): flat depth [0]" in err.splitlines()
    assert f"  ... and 2 more in {tmp_path / 'r.jsonl'}" in err.splitlines()
    assert "00011" not in err


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (
            DatasetBusyError(Path("/data/set"), LockHolder("gpu1", 42, "nightly", "2026-01-01T00:00:00Z")),
            EXIT_BUSY,
            "error: dataset /data/set is being built by another run (host gpu1, pid 42, flow run nightly, since "
            "2026-01-01T00:00:00Z); wait for it or cancel it",
        ),
        (
            ClusterShapeError("no worker of the cluster at tcp://x:8786 offers a GPU"),
            EXIT_USAGE,
            "error: no worker of the cluster at tcp://x:8786 offers a GPU",
        ),
        (
            trackset.engine.run_outcome.VideosFailedError("2 video(s) failed (run.fail_on_video_error is set)"),
            EXIT_FAILED,
            "error: 2 video(s) failed (run.fail_on_video_error is set)",
        ),
    ],
    ids=["dataset-busy", "cluster-shape", "fail-on-video-error"],
)
def test_errors_raised_by_the_flow(capsys, paths, no_flow, raised, code, message):
    no_flow["raise"] = raised
    status, out, err = run(capsys, "run", *paths)
    assert status == code
    assert errors(err) == [message]
    assert out == ""


def test_missing_model_package_exits_2(capsys, paths):
    code, out, err = run(capsys, "run", *paths, "--set", "tracks_3d.backend=real")
    assert code == EXIT_USAGE and out == ""
    assert len(errors(err)) == 1 and "backend 'real' for tracks_3d" in errors(err)[0]


# --- validate and show ---------------------------------------------------------------------


def test_validate_a_missing_directory_exits_2(capsys, tmp_path):
    code, out, err = run(capsys, "validate", str(tmp_path / "nope"))
    assert (code, out) == (EXIT_USAGE, "")
    assert errors(err) == [f"error: no dataset directory {tmp_path / 'nope'}"]


def test_validate_problems_exit_1_with_the_count_on_stderr(capsys, tmp_path):
    (tmp_path / "00000.hdf5").write_bytes(b"not an hdf5 file")
    code, out, err = run(capsys, "validate", str(tmp_path))
    assert code == EXIT_FAILED
    assert "00000.hdf5" in out  # the table of findings is the command's result
    assert len(errors(err)) == 1 and "problem(s) in" in errors(err)[0]


def write_small_h5(dataset: Path, video_id: str) -> None:
    starts = np.arange(3)
    query = np.array([[0.5, 0.5, 1.0]], np.float32)
    arrays = VideoArrays(
        video=np.zeros((5, 3, 64, 64), np.uint8),
        depth=np.ones((5, 64, 64), np.float32),
        depth_moments=Moments(0, np.zeros(1), np.zeros(1)),
        intrinsics=np.eye(3, dtype=np.float32),
        starts=starts,
        query_coords=[query] * 3,
        displacements=[np.zeros((3, 1, 3), np.float32)] * 3,
        poses=np.tile(np.array([1, 0, 0, 0, 1, 0, 0, 0, 0], np.float32), (3, 3, 1)),
        num_track_ts=3,
    )
    write_h5(DatasetLayout(dataset).h5(video_id), arrays)


def test_show_writes_the_pictures_and_prints_their_paths(capsys, tmp_path):
    write_small_h5(tmp_path / "dataset", "00007")
    code, out, err = run(capsys, "show", "7", "--dataset-dir", str(tmp_path / "dataset"))
    assert (code, err) == (EXIT_OK, "")
    pictures = tmp_path / "dataset" / "pictures"
    assert out.split() == [str(pictures / "00007.mp4"), str(pictures / "00007.png")]
    assert (pictures / "00007.mp4").stat().st_size > 0 and (pictures / "00007.png").stat().st_size > 0


def test_show_a_video_that_is_not_there_exits_2(capsys, tmp_path):
    code, out, err = run(capsys, "show", "00042", "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert (code, out) == (EXIT_USAGE, "")
    assert errors(err) == [f"error: no H5 of video 00042: {tmp_path / '00042.hdf5'} does not exist"]


def test_show_an_unreadable_h5_exits_1_and_draws_the_others(capsys, tmp_path):
    write_small_h5(tmp_path, "00001")
    with h5py.File(tmp_path / "00002.hdf5", "w") as f:
        f.create_dataset("root/video", data=np.zeros((2, 3, 8, 8), np.uint8))  # no root/tracks
    (tmp_path / "00003.hdf5").write_bytes(b"garbage")
    code, out, err = run(capsys, "show", "2", "3", "1", "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == EXIT_FAILED
    lines = errors(err)
    assert [line.split(": ")[1] for line in lines] == ["video 00002", "video 00003"]
    assert all(f"cannot draw {tmp_path}" in line for line in lines)
    assert out.split() == [str(tmp_path / "o" / "00001.mp4"), str(tmp_path / "o" / "00001.png")]


def test_settings_lists_every_setting_with_its_default_and_description(capsys):
    code, out, err = run(capsys, "settings", "h5.")
    assert (code, err) == (EXIT_OK, "")
    line = next(line for line in out.splitlines() if line.startswith("h5.target_size"))
    assert line.startswith(f"h5.target_size = {H5Settings().target_size}")
    assert H5Settings.model_fields["target_size"].description.split()[0] in line
    assert all(line.startswith("h5.") for line in out.splitlines())  # one line each, unwrapped


def test_settings_with_an_unknown_prefix_is_a_usage_error(capsys):
    code, out, err = run(capsys, "settings", "no_such_section")
    assert (code, out) == (EXIT_USAGE, "")
    assert errors(err) == ["error: no setting starts with 'no_such_section' (trackset settings lists them all)"]
