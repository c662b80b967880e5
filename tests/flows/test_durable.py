"""Outputs are durable and checked, and a work directory serves one dataset at a time (slow suite).

Issue 29, items 4 and 5, each against one clean build of the same small corpus:

- two builds of two datasets sharing one ``work_dir``: the second fails at once naming the
  first, whose H5 files are a clean build's;
- an emptied H5, truncated partials, an emptied ``frames.npy`` and a truncated depth file
  are each recomputed by the next run, which names each file once;
- a run SIGKILLed half-way through a write leaves a temporary file, which the next run
  removes; every file the builds leave is 0644 under umask 022.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.settings import get_current_settings

from tests.flows.helpers import SMALL_H, SMALL_W, digests, merge_sections, small_build, vid
from trackset.dataset.lock import WORK_LOCK_NAME, WorkDirBusyError
from trackset.flows.build_dataset import build_dataset
from trackset.synthetic.corpus import make_corpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NUM_VIDEOS, FRAMES = 3, 12
REPO = Path(__file__).resolve().parents[2]


def overrides(root: Path, **extra) -> dict:
    return merge_sections(small_build(root, points_per_window=32), extra)


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


def done_ids(summary, stage: str) -> set[str]:
    return {r.video_id for r in summary.records(stage) if r.status == "done"}


@pytest.fixture(autouse=True)
def umask_022():
    """The usual umask, whatever the machine's: outputs must then be 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """Two corpora of the same shape and different content: two datasets' videos."""
    root = tmp_path_factory.mktemp("durable-corpora")
    for name, seed in (("a", 11), ("b", 12)):
        make_corpus(root / name, NUM_VIDEOS, seed=seed, num_frames=FRAMES, width=SMALL_W, height=SMALL_H)
    return {"a": root / "a", "b": root / "b"}


@pytest.fixture(scope="module")
def clean(corpora, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One clean build of corpus a: the bytes every other build of it must end with."""
    root = tmp_path_factory.mktemp("durable-clean")
    shutil.copytree(corpora["a"], root / "videos")
    previous = os.umask(0o022)
    try:
        summary = build_dataset(overrides=overrides(root))
    finally:
        os.umask(previous)
    assert not summary.failures
    result = digests(root / "dataset")
    assert len(result) == NUM_VIDEOS + 1
    return root, result


def start_cli_run(root: Path, settings: dict, **env: str) -> subprocess.Popen:
    """``trackset run`` on ``settings`` in a process of its own, on this session's server,
    with :mod:`tests.flows.kill_mid_write` imported first."""
    path = root / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    code = "import sys, tests.flows.kill_mid_write; from trackset.flows.cli import main; sys.exit(main(sys.argv[1:]))"
    environment = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url), **env}
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", "--settings", str(path)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_second_dataset_on_a_work_directory_in_use_fails_at_once_naming_the_first(corpora, clean, tmp_path):
    work = tmp_path / "shared-work"
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(corpora["a"], first / "videos")
    shutil.copytree(corpora["b"], second / "videos")
    slow = {"tracks_3d": {"cpu_s_per_frame": 0.2}}  # ~2.4 s per video: the first run is still going
    run = start_cli_run(tmp_path, overrides(first, paths={"work_dir": str(work)}, synthetic=slow))
    try:
        deadline = time.monotonic() + 300
        while True:  # the flow's own hold, not the CLI's check before it (which names no flow run)
            assert run.poll() is None, "the first run ended before the second started"
            assert time.monotonic() < deadline, "the first run never took the work directory"
            text = (work / WORK_LOCK_NAME).read_text() if (work / WORK_LOCK_NAME).is_file() else ""
            if text and json.loads(text)["flow_run_id"]:
                holder = json.loads(text)
                break
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(WorkDirBusyError) as caught:
            build_dataset(overrides=overrides(second, paths={"work_dir": str(work)}))
        assert time.monotonic() - started < 30  # at once: before registering a video
        assert run.poll() is None, "the first run ended before the second was refused"
    finally:
        code = run.wait(timeout=600)
    message = str(caught.value)
    assert message.startswith(f"work directory {work} is in use by another run (host ")
    assert f"pid {run.pid}, flow run {holder['flow_run_id']}" in message
    assert f"building dataset {first / 'dataset'}" in message
    assert code == 0
    assert not list((second / "dataset").glob("*.hdf5")) and not (second / "dataset" / "manifest.jsonl").exists()
    assert digests(first / "dataset") == clean[1]


def test_damaged_outputs_of_any_stage_are_recomputed_by_the_next_run_which_names_each(clean, tmp_path, caplog):
    root = tmp_path / "r"
    shutil.copytree(clean[0], root)
    dataset, work = root / "dataset", root / "work"
    damaged = {
        "h5_build": dataset / f"{vid(0)}.hdf5",  # truncate -s 0
        "partials": dataset / "partials" / f"{vid(1)}.json",  # cut short
        "preprocess": work / "frames" / vid(2) / "frames.npy",  # emptied under its marker
        "depth_camera": work / "vipe" / f"{vid(2)}.npz",  # cut short under its marker
    }
    for name, path in damaged.items():
        with open(path, "r+b") as out:
            out.truncate(0 if name in ("h5_build", "preprocess") else path.stat().st_size // 2)
    for path in (dataset / f"{vid(2)}.hdf5", dataset / "partials" / f"{vid(2)}.json"):
        path.unlink()  # video 2's H5 is due: its stages read the damaged intermediates

    with caplog.at_level(logging.WARNING, logger="trackset"):
        summary = build_dataset(overrides=overrides(root))
    assert not summary.failures
    assert done_ids(summary, "h5_build") == {vid(0), vid(1), vid(2)}
    assert done_ids(summary, "preprocess") == done_ids(summary, "depth_camera") == {vid(2)}
    assert done_ids(summary, "tracks_3d") == done_ids(summary, "hands") == set()  # intact: still current
    recomputing = [r.getMessage() for r in caplog.records if "recomputing video" in r.getMessage()]
    for path in damaged.values():
        assert sum(str(path) in line for line in recomputing) == 1, (path, recomputing)
    assert f"h5_build: recomputing video {vid(0)}: {damaged['h5_build']} has 0 bytes" in recomputing[0]
    assert digests(dataset) == clean[1]


def test_a_run_killed_mid_write_leaves_a_temporary_that_the_next_run_removes(corpora, clean, tmp_path):
    root = tmp_path
    shutil.copytree(corpora["a"], root / "videos")
    run = start_cli_run(root, overrides(root), TRACKSET_TEST_KILL_NPZ=vid(1))
    assert run.wait(timeout=600) == -9  # killed by its own hand, half-way through the depth file
    # The half-written depth file, and whatever other threads of the run were writing then.
    left = temporaries(root)
    assert any(p.parent == root / "work" / "vipe" and p.name.startswith(f".{vid(1)}.npz.") for p in left), left

    summary = build_dataset(overrides=overrides(root))
    assert not summary.failures
    assert temporaries(root) == []
    assert digests(root / "dataset") == clean[1]
    written = [p for folder in ("work", "dataset") for p in (root / folder).rglob("*") if p.is_file()]
    modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o644} == {}
    assert any(name.endswith(".hdf5") for name in modes) and any(name.endswith("frames.npy") for name in modes)
