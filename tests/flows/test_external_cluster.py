"""A build on a cluster started by hand: ``dask scheduler`` and ``dask worker`` processes (slow suite).

Two GPU worker commands, each pinned with ``CUDA_VISIBLE_DEVICES`` and offering ``GPU=1``,
start three worker processes each (``--nworkers 3``); a third command starts a CPU worker.
Nobody gives them ``PREFECT_API_URL``: their task runs must still reach the test's server.
They talk TLS with the certificates of ``trackset secrets`` and ``deployments/dask.yaml``, as
README's walk-through starts them; a client without the certificate gets nowhere.
The fake GPUs are 16 GiB: profiling two short videos plans two workers per GPU; a long video
does not fit beside another one (whether two meet on a GPU depends on scheduling), and the
giant fits nowhere, so it runs out of memory at two workers per GPU, is run again alone and
is quarantined. The depth and tracks models are too large to be held together.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run_history import waves_task_runs
from tests.flows.helpers import SMALL_H, SMALL_W, digests, merge_sections, small_build, vid
from trackset.cluster.security import TlsFiles, write_secrets
from trackset.errors import ClusterShapeError
from trackset.flows.build_dataset import build_dataset
from trackset.gpu.fake_device import FakeDevice, ledger_dir_for
from trackset.synthetic.corpus import encode_scene, video_seed
from trackset.synthetic.scene import SceneSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DASK = Path(sys.executable).with_name("dask")
DASK_YAML = Path(__file__).parents[2] / "deployments" / "dask.yaml"
FRAMES = {"a_short": 8, "b_short": 8, "c_long": 30, "d_long": 30, "e_short": 8, "f_short": 8, "z_giant": 64}
GIANT = vid(len(FRAMES) - 1)  # names sort in this order
MIB = 2**20
DEPTH = {"model_mb": 4000, "per_video_mb": 500, "per_frame_mb": 200}  # 5.96 GiB short, 10.25 long, 16.89 giant
TRACKS = {"model_mb": 9000}  # with the depth model still loaded, a worker would hold 13,000 MiB


def overrides(root: Path, **cluster) -> dict:
    return merge_sections(
        small_build(root, points_per_window=16),
        {
            "cluster": {
                "runner": "dask",
                "profiling_videos": 2,
                "fake_gpus": [{"memory_gb": 16}, {"memory_gb": 16}],
                "cpu_workers": 1,
                **cluster,
            },
            "synthetic": {"depth_camera": DEPTH, "tracks_3d": TRACKS},
        },
    )


class HandStartedCluster:
    """``dask scheduler`` and ``dask worker`` commands, as a user would type them; with ``tls``,
    as README types them (``DASK_CONFIG=deployments/dask.yaml`` and the ``--tls-*`` options)."""

    def __init__(self, root: Path, gpu_workers: bool = True, tls: TlsFiles | None = None) -> None:
        self.file = root / "scheduler.json"
        self.tls = tls
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
        secure = []
        if tls is not None:
            env["DASK_CONFIG"] = str(DASK_YAML)
            secure = ["--tls-ca-file", str(tls.ca), "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        self.processes = [
            subprocess.Popen(
                [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(self.file), *secure],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        ]
        deadline = time.monotonic() + 60
        while not self.file.is_file():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        common = ["worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--host", "127.0.0.1", *secure]
        commands = [({"CUDA_VISIBLE_DEVICES": ""}, [*common, "--resources", "CPU=1", "--name", "hand-cpu"])]
        if gpu_workers:
            commands += [
                ({"CUDA_VISIBLE_DEVICES": str(g)}, [*common, "--nworkers", "3", "--resources", "GPU=1", "--name", f"hand-gpu{g}"])
                for g in (0, 1)
            ]
        for extra, command in commands:
            self.processes.append(
                subprocess.Popen([str(DASK), *command], env={**env, **extra}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            )
        self.workers = 1 + (6 if gpu_workers else 0)

    @property
    def address(self) -> str:
        import json

        return json.loads(self.file.read_text())["address"]

    def security(self):
        """The certificates as a client holds them (none without TLS)."""
        from distributed.security import Security

        if self.tls is None:
            return None
        files = self.tls
        return Security(tls_ca_file=str(files.ca), tls_client_cert=str(files.cert), tls_client_key=str(files.key),
                        require_encryption=True)

    def wait(self) -> None:
        from distributed import Client

        with Client(scheduler_file=str(self.file), timeout=60, security=self.security()) as client:
            client.wait_for_workers(self.workers, timeout=120)

    def stop(self) -> None:
        for process in reversed(self.processes):
            os.killpg(process.pid, 15)
        for process in self.processes:
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("external-corpus") / "videos"
    for index, (name, frames) in enumerate(FRAMES.items()):
        encode_scene(SceneSpec.from_seed(video_seed(5, index), frames, 10.0, SMALL_W, SMALL_H), videos / f"{name}.mp4")
    return videos


def fresh(corpus: Path, root: Path) -> Path:
    shutil.copytree(corpus, root / "videos")
    return root


def test_a_hand_started_cluster_is_profiled_sized_shrunk_and_gives_the_local_bytes(corpus, tmp_path):
    local = fresh(corpus, tmp_path / "local")
    assert [(f.video_id, f.kind) for f in build_dataset(overrides=overrides(local)).failures] == [(GIANT, "quarantined")]

    write_secrets(tmp_path / "secrets")
    cluster = HandStartedCluster(tmp_path, tls=TlsFiles.in_dir(tmp_path / "secrets" / "tls"))
    try:
        cluster.wait()
        assert cluster.address.startswith("tls://127.0.0.1:")
        root = fresh(corpus, tmp_path / "external")
        tls_dir = str(tmp_path / "secrets" / "tls")
        state = build_dataset(
            overrides=overrides(root, scheduler_address=cluster.address, tls_dir=tls_dir), return_state=True
        )
        summary = state.result()
        [giant] = summary.failures  # every other video fits one per GPU, so it lands
        assert (giant.video_id, giant.kind, giant.stage) == (GIANT, "quarantined", "depth_camera")
        assert "out of memory alone on a GPU" in giant.reason
        assert digests(root / "dataset") == digests(local / "dataset")

        # The workers' task runs reached this test's server, though nobody set their PREFECT_API_URL.
        runs = waves_task_runs(state.state_details.flow_run_id, "depth-camera-")
        sizes = {tag for run in runs for tag in run.tags if tag.startswith("workers-per-gpu-")}
        assert sizes == {"workers-per-gpu-2", "workers-per-gpu-1"}  # planned 2 of 3, shrunk to 1
        depth = {r.video_id: r for r in summary.records("depth_camera") if r.status == "done"}
        assert set(depth) == {vid(i) for i in range(len(FRAMES))} - {GIANT}
        assert all(r.worker.startswith("hand-gpu") for r in depth.values())
        assert {r.info["workers_per_gpu"] for r in depth.values()} <= {1, 2}

        ledgers = ledger_dir_for(root / "work")
        devices = [FakeDevice(ledgers, gpu, 16 * 1024**3) for gpu in (0, 1)]
        # Never the third worker of a GPU. The depth round after profiling has more tasks than
        # one GPU's two slots, so some GPU runs two at once; which GPUs do is the scheduler's choice.
        assert [d.most_holders() for d in devices] in ([2, 2], [2, 1], [1, 2])
        for device in devices:
            # Each worker's highest hold is one stage's model and video, never depth and tracks at once.
            assert max(device.lifetime_peaks().values()) < (DEPTH["model_mb"] + TRACKS["model_mb"]) * MIB
    finally:
        cluster.stop()


def test_a_cluster_without_gpu_workers_fails_at_once_naming_the_cause(corpus, tmp_path):
    cluster = HandStartedCluster(tmp_path, gpu_workers=False)
    try:
        cluster.wait()
        root = fresh(corpus, tmp_path / "no-gpu")
        started = time.monotonic()
        with pytest.raises(ClusterShapeError, match=r"no worker of the cluster at tcp://127\.0\.0\.1:\d+ offers a GPU"):
            build_dataset(overrides=overrides(root, scheduler_address=cluster.address))
        assert time.monotonic() - started < 120
    finally:
        cluster.stop()


async def run_directly(address: str, mark: str) -> object:
    """Dask's own RPC to a scheduler's or worker's ``run`` handler, no client in between. What an
    intruder runs is ``os.mkdir(mark)``: a folder to look for (and importable on the workers)."""
    from distributed.core import rpc
    from distributed.protocol.pickle import dumps

    async with rpc(address, timeout=5) as remote:
        return await remote.run(function=dumps(os.mkdir), args=dumps((mark,)))


def test_a_client_without_the_certificate_can_neither_connect_nor_run_anything(tmp_path):
    from distributed import Client
    from distributed.security import Security

    write_secrets(tmp_path / "secrets")
    cluster = HandStartedCluster(tmp_path, gpu_workers=False, tls=TlsFiles.in_dir(tmp_path / "secrets" / "tls"))
    mark = tmp_path / "mark"
    try:
        cluster.wait()
        with Client(cluster.address, security=cluster.security(), timeout=30) as client:
            [worker] = client.scheduler_info()["workers"]
        plain = {"distributed.comm.require-encryption": False}
        import dask

        with dask.config.set(plain):
            for address in (cluster.address, worker):  # the scheduler, and a worker directly
                with pytest.raises(OSError):
                    Client(address.replace("tls://", "tcp://"), timeout=5).run(os.mkdir, str(mark))
                with pytest.raises(OSError):
                    asyncio.run(run_directly(address.replace("tls://", "tcp://"), str(mark)))
        # TLS with a certificate the cluster's CA did not sign (its own, another user's).
        with pytest.raises(OSError):
            Client(cluster.address, security=Security.temporary(), timeout=5).run(os.mkdir, str(mark))
        assert not mark.exists()

        # With the certificates the same call runs: the attempts above failed for want of them.
        with Client(cluster.address, security=cluster.security(), timeout=30) as client:
            assert client.run(os.mkdir, str(mark)) == {worker: None}
        assert mark.is_dir()
    finally:
        cluster.stop()
