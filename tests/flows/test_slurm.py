"""Builds whose GPU workers are SLURM jobs, against a real one-node SLURM (slow suite).

``deployments/slurm-local.sh up`` starts it (as root; ``.ci/run`` does): two fake GPUs as
GRES of types ``small`` (index 0) and ``big`` (index 1). Without a controller answering,
these tests skip, unless ``TRACKSET_REQUIRE_SLURM=1`` (``.ci/run``) makes that a failure.
Every job asks one CPU (the node has two), so both GPUs get a job at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.flows.helpers import SMALL_H, SMALL_W, digests, merge_sections, small_build
from trackset.cluster.security import write_secrets
from trackset.flows.build_dataset import build_dataset
from trackset.synthetic.corpus import encode_scene, video_seed
from trackset.synthetic.scene import SceneSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

VIDEOS = 6
FRAMES = 8


def slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    if not slurm_answers():
        if os.environ.get("TRACKSET_REQUIRE_SLURM") == "1":
            pytest.fail("no SLURM controller answers: deployments/slurm-local.sh up")
        pytest.skip("no SLURM controller answers (deployments/slurm-local.sh up starts one)")


def squeue() -> list[tuple[str, str]]:
    """This user's jobs as ``(id, state)``."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]  # type: ignore[misc]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("slurm-corpus") / "videos"
    for index in range(VIDEOS):
        encode_scene(
            SceneSpec.from_seed(video_seed(7, index), FRAMES, 10.0, SMALL_W, SMALL_H), videos / f"v{index}.mp4"
        )
    return videos


@pytest.fixture(scope="module")
def local_digests(corpus, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("slurm-local")
    shutil.copytree(corpus, root / "videos")
    summary = build_dataset(overrides=overrides(root))
    assert not summary.failures
    return digests(root / "dataset")


def overrides(root: Path, fake_gb: tuple[int, int] = (16, 16), **slurm) -> dict:
    cluster = {
        "runner": "dask",
        "cpu_workers": 1,
        "profiling_videos": 2,
        "gpu_task_videos": 1,
        "fake_gpus": [{"memory_gb": fake_gb[0]}, {"memory_gb": fake_gb[1]}],
    }
    if slurm:
        write_secrets(root / "secrets")
        cluster |= {
            "kind": "slurm",
            "tls_dir": str(root / "secrets" / "tls"),
            "max_workers_per_gpu": 2,
            "slurm": {
                "cpus_per_job": 1,
                "memory": "2GB",
                "max_jobs": 2,
                "poll_s": 0.5,
                "walltime": "00:30:00",
                "retire_before_walltime_s": 60,
                "retire_stagger_s": 0,
                **slurm,
            },
        }
    return merge_sections(small_build(root, points_per_window=16), {"cluster": cluster})


def fresh(corpus: Path, root: Path) -> Path:
    shutil.copytree(corpus, root / "videos")
    return root


def listeners() -> set[str]:
    """Where this test's processes, SLURM's daemons and the jobs' processes listen."""
    import psutil

    roots = [psutil.Process()]
    for pid_file in ("/run/slurmd.pid", "/run/slurmctld.pid"):
        with contextlib.suppress(OSError, ValueError, psutil.Error):  # a daemon not running has no listener
            roots.append(psutil.Process(int(Path(pid_file).read_text())))
    pids = {p.pid for root in roots for p in [root, *root.children(recursive=True)]}
    return {
        conn.laddr.ip
        for conn in psutil.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    }


class JobCounter:
    """Counts this user's jobs every half second while a build runs (its jobs over time), and
    notes every address the build's processes listen on."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (seconds, running, pending)
        self.addresses: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobCounter:
        self.start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            states = [state for _, state in squeue()]
            self.samples.append((time.monotonic() - self.start, states.count("RUNNING"), states.count("PENDING")))
            self.addresses |= listeners()


def wait_for_no_job(timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while squeue():
        assert time.monotonic() < deadline, f"jobs left after the run: {squeue()}"
        time.sleep(0.5)


def marks(folder: Path) -> list[tuple[str, str, str]]:
    """The depth starts the preload marked, as ``(job id, worker, video file)``, oldest first."""
    found = sorted((p.name.split(".") for p in folder.iterdir()), key=lambda parts: int(parts[-1]))
    return [(job, worker, f"{video}.{ext}") for job, worker, video, ext, _, _ in found]


@pytest.fixture
def mark_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    monkeypatch.setenv("TRACKSET_TEST_MARK_DIR", str(folder))
    return folder


PRELOAD = ["bench.slurm_marks"]
SLOW_DEPTH = {"depth_camera": {"gpu_s_per_frame": 0.4}}  # 3.2 s a video: a job is cancelled mid-task


def test_a_build_on_slurm_jobs_gives_the_local_bytes_scales_up_and_back_to_zero(corpus, local_digests, tmp_path):
    root = fresh(corpus, tmp_path / "slurm")
    assert not squeue()
    with JobCounter() as counter:
        summary = build_dataset(overrides=overrides(root, max_jobs=2))
    assert not summary.failures
    assert digests(root / "dataset") == local_digests
    workers = {r.worker for r in summary.records("depth_camera") if r.status == "done"}
    assert workers and all(w.startswith("slurm-") for w in workers), workers
    held = [running + pending for _, running, pending in counter.samples]
    assert max(held) == 2  # up with the wave, to max_jobs
    assert held[-1] == 0  # given back before the run ended (the last H5 files need no GPU)
    assert counter.addresses == {"127.0.0.1"}  # scheduler, workers, dashboards, slurmctld, slurmd
    wait_for_no_job()


def test_a_job_cancelled_mid_wave_loses_no_video_and_a_late_job_gets_work(corpus, local_digests, mark_dir, tmp_path):
    """A blocker holds one GPU, so the run's second job waits; once the first job has started a
    video, it is cancelled (as a preemption would) and the blocker freed: the videos of the
    cancelled job run again elsewhere, every video lands once, and the jobs that start late
    (the waiting one, the replacement) take GPU work."""
    blocker = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--gres=gpu:1",
            "--cpus-per-task=1",
            "--mem=100M",
            "--output=/dev/null",
            "--wrap",
            "sleep 600",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    root = fresh(corpus, tmp_path / "cancel")
    settings = merge_sections(
        overrides(root, max_jobs=2), {"cluster": {"worker_preload": PRELOAD}, "synthetic": SLOW_DEPTH}
    )
    cancelled: list[str] = []

    def cancel_first_job() -> None:
        deadline = time.monotonic() + 300
        while not os.listdir(mark_dir):
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        job = marks(mark_dir)[0][0]
        subprocess.run(["scancel", job], check=True)
        subprocess.run(["scancel", blocker], check=True)
        cancelled.append(job)

    canceller = threading.Thread(target=cancel_first_job, daemon=True)
    canceller.start()
    try:
        summary = build_dataset(overrides=settings)
    finally:
        subprocess.run(["scancel", blocker], check=False)
        canceller.join(timeout=60)
    assert cancelled, "no depth task started"
    assert not summary.failures
    assert digests(root / "dataset") == local_digests
    depth = [r for r in summary.records("depth_camera") if r.status == "done"]
    assert sorted(r.video_id for r in depth) == sorted({r.video_id for r in depth})  # once each
    started = marks(mark_dir)
    on_cancelled = {video for job, _, video in started if job == cancelled[0]}
    elsewhere = {video for job, _, video in started if job != cancelled[0]}
    assert on_cancelled and on_cancelled <= elsewhere  # what it had started ran again on another job
    first_job = {job for job, _, _ in started}
    assert len(first_job) >= 2  # jobs that started after the first one took GPU work
    wait_for_no_job()


def test_two_gres_types_of_different_memory_get_different_workers_per_gpu(corpus, tmp_path):
    """The node's ``small`` GPU (index 0) has 8 GiB, its ``big`` one (index 1) 16 GiB. Profiling
    measures the depth peak (5.96 GiB) and that one peak sizes each by its own memory: one
    worker on the small GPU, two on the big one, though every job starts two workers."""
    from trackset.gpu.fake_device import FakeDevice, ledger_dir_for

    root = fresh(corpus, tmp_path / "gres")
    depth = {"model_mb": 4000, "per_video_mb": 500, "per_frame_mb": 200, "gpu_s_per_frame": 0.2}
    settings = merge_sections(overrides(root, fake_gb=(8, 16), max_jobs=2), {"synthetic": {"depth_camera": depth}})
    summary = build_dataset(overrides=settings)
    assert not summary.failures
    sized = [r for r in summary.records("depth_camera") if r.status == "done" and r.info["workers_per_gpu"] != 1]
    assert {r.info["workers_per_gpu"] for r in sized} == {2}
    ledgers = ledger_dir_for(root / "work")
    small, big = (FakeDevice(ledgers, gpu, gb * 1024**3) for gpu, gb in ((0, 8), (1, 16)))
    assert small.most_holders() == 1  # never two depth models at once on 8 GiB
    assert big.most_holders() == 2
    wait_for_no_job()


def test_a_run_that_fails_with_its_jobs_running_gives_them_back(tmp_path):
    """The run's cluster closes whatever ends the run: an error raised while its jobs run
    leaves no job behind (a cancelled flow run leaves through the same exit)."""
    from trackset.config.settings import Settings
    from trackset.engine.run_cluster import RunCluster

    settings = Settings(**overrides(tmp_path, max_jobs=2))
    with pytest.raises(RuntimeError, match="the run failed"), RunCluster(settings) as cluster:
        assert cluster.elastic and not squeue()  # no job before GPU work is announced
        cluster.want(20)
        deadline = time.monotonic() + 120
        while [state for _, state in squeue()].count("RUNNING") < 2:
            assert time.monotonic() < deadline, f"the jobs did not start: {squeue()}"
            time.sleep(0.5)
        raise RuntimeError("the run failed")
    wait_for_no_job(timeout_s=15)


def test_jobs_that_cannot_start_their_workers_fail_the_run_naming_their_error_files(tmp_path):
    """A job whose workers never join (here its prologue fails, as a node without the run's
    Python would) is replaced, but not forever: the third fails the run, naming the files."""
    from trackset.config.settings import Settings
    from trackset.engine.run_cluster import RunCluster
    from trackset.errors import ClusterShapeError

    settings = Settings(**overrides(tmp_path, max_jobs=1, job_prologue=["echo no trackset here >&2; exit 3"]))
    started = time.monotonic()
    never = r"3 SLURM jobs ended before any of their workers joined"
    with pytest.raises(ClusterShapeError, match=never) as error, RunCluster(settings) as cluster:
        cluster.want(5)
        cluster.wait_for_gpus()
    assert time.monotonic() - started < 120
    files = [Path(name.rstrip(",")) for name in str(error.value).split("say why: ")[1].split()]
    assert len(files) == 3 and all("no trackset here" in file.read_text() for file in files)
    wait_for_no_job(timeout_s=15)


def test_workers_retire_before_the_walltime_between_tasks_and_their_jobs_are_replaced(corpus, mark_dir, tmp_path):
    """Jobs of a one-minute walltime whose workers retire 15 s after they start (45 s before it),
    mid-build: each finishes the video it runs and leaves, its job ends, a new one is submitted
    while work is left, and no video is started twice (nothing ran inside a retirement)."""
    root = fresh(corpus, tmp_path / "walltime")
    retiring = {"walltime": "1", "retire_before_walltime_s": 45, "retire_stagger_s": 0, "max_jobs": 2}
    # 12 s a video, 3 per job: depth outlasts the first workers' 15 s however soon after their
    # start it begins (at 3.2 s a video it was done before they retired on a quiet machine).
    slower = {"depth_camera": {"gpu_s_per_frame": 1.5}}
    settings = merge_sections(
        overrides(root, **retiring), {"cluster": {"worker_preload": PRELOAD}, "synthetic": slower}
    )
    summary = build_dataset(overrides=settings)
    assert not summary.failures
    started = marks(mark_dir)
    videos = [video for _, _, video in started]
    assert sorted(videos) == sorted(set(videos)) and len(videos) == VIDEOS  # each depth video once
    assert len({job for job, _, _ in started}) > 2  # the first two jobs left and others took over
    wait_for_no_job()
