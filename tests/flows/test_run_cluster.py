"""A misshaped cluster fails at once, naming each worker and what is wrong with it; stage
transitions ask the workers only what they must (fast)."""

from __future__ import annotations

import itertools
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest
from distributed.comm.core import CommClosedError
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, temporary_settings

import trackset
from trackset.cluster.plan import GPU, GPU_RANK, GPU_SHARE, gpu_rank
from trackset.cluster.security import TlsFiles, write_secrets
from trackset.cluster.worker_probe import current_gpu, describe_worker
from trackset.config.settings import Settings
from trackset.engine.run_cluster import (
    GPU_READ_ATTEMPTS,
    GpuWorkersLeftError,
    RunCluster,
    describe_run_worker,
    job_environment,
)
from trackset.errors import ClusterShapeError
from trackset.gpu.inventory import GpuInfo


def answer(**changes):
    return {"host": "h", "pid": 1, "gpu": 0, "version": trackset.__version__, "problems": [], **changes}


def test_a_sound_cluster_passes_and_a_worker_that_died_meanwhile_is_left_out():
    cluster = RunCluster(Settings(cluster={"scheduler_address": "tls://scheduler:8786"}))
    workers = {"tcp://a:1": {"name": "gpu0-w0"}, "tcp://a:2": {"name": "gpu0-w1"}}
    cluster.check(workers, {"tcp://a:1": answer(), "tcp://a:2": CommClosedError("gone")})


def test_every_bad_worker_is_named_with_its_problem():
    cluster = RunCluster(Settings(cluster={"scheduler_address": "tls://scheduler:8786"}))
    cluster.address = "tls://scheduler:8786"
    workers = {f"tcp://a:{i}": {"name": f"w{i}"} for i in range(4)}
    answers = {
        "tcp://a:0": ModuleNotFoundError("No module named 'trackset'"),
        "tcp://a:1": answer(version="0.0.1"),
        "tcp://a:2": answer(problems=["cannot see /data/work"]),
        "tcp://a:3": answer(),
    }
    with pytest.raises(ClusterShapeError) as caught:
        cluster.check(workers, answers)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("the cluster at tls://scheduler:8786 cannot run this build")
    assert lines[1:] == [
        "  worker w0 (tcp://a:0) cannot run trackset's code: ModuleNotFoundError: No module named 'trackset'",
        f"  worker w1 (tcp://a:1) has trackset 0.0.1, this flow {trackset.__version__}",
        "  worker w2 (tcp://a:2) cannot see /data/work",
    ]


def test_a_worker_names_the_folders_and_the_api_it_cannot_reach(tmp_path):
    (tmp_path / "videos").mkdir()
    facts = describe_worker([str(tmp_path / "videos")], [str(tmp_path / "missing")], "http://127.0.0.1:9/api")
    assert facts["problems"][0] == f"cannot see {tmp_path / 'missing'}"
    assert facts["problems"][1].startswith("cannot reach the Prefect API at http://127.0.0.1:9/api")


@contextmanager
def https_api(files: TlsFiles) -> Iterator[str]:
    """An API on 127.0.0.1 over HTTPS with ``files``' certificate, answering every GET with
    ``true`` (``/health``, ``/hello``), as ``deployments/server.sh`` serves it; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_worker_reaches_an_https_api_with_the_servers_ca_and_is_named_without_it(tmp_path):
    """A worker checks the API's certificate as its Prefect clients will (README, 'Several
    machines': PREFECT_API_SSL_CERT_FILE on every host)."""
    write_secrets(tmp_path / "secrets", api_hosts=["127.0.0.1"])
    files = TlsFiles.in_dir(tmp_path / "secrets" / "api-tls")
    with https_api(files) as api_url:
        with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(files.ca)}):
            assert describe_run_worker([str(tmp_path)], [], api_url)["problems"] == []
        with temporary_settings({PREFECT_API_SSL_CERT_FILE: None}):
            [problem] = describe_run_worker([str(tmp_path)], [], api_url)["problems"]
    assert problem.startswith(f"does not trust the certificate of the Prefect API at {api_url} (")
    assert "PREFECT_API_SSL_CERT_FILE" in problem


def test_a_worker_whose_api_ca_file_is_missing_is_named_not_left_out(tmp_path):
    """Raised, the error would read as a worker that died since the scheduler listed it."""
    missing = tmp_path / "not-shared" / "ca.pem"
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(missing)}):
        [problem] = describe_run_worker([str(tmp_path)], [], "https://head:4200/api")["problems"]
        assert describe_run_worker([str(tmp_path)], [], "")["problems"] == []  # no API to check: no CA needed
    assert problem.startswith(f"cannot load PREFECT_API_SSL_CERT_FILE {missing} to check the API's certificate (")


class FakeClient:
    """A Dask client to a cluster of ``workers`` (address -> scheduler info) that records each
    ``run``: which function, on which workers."""

    def __init__(self, workers: dict[str, dict], gpus: dict[str, int | None]) -> None:
        self.workers, self.gpus = workers, gpus
        self.runs: list[tuple[str, list[str]]] = []
        # address -> what asking it meets, and the worker (address, name) that replaces it then
        self.leaving: dict[str, tuple[BaseException, tuple[str, str] | None]] = {}

    def scheduler_info(self, n_workers: int) -> dict:
        return {"workers": dict(self.workers)}

    def run(self, function, *args, workers=None, on_error="raise"):
        asked = sorted(self.workers if workers is None else workers)
        self.runs.append((function.__name__, asked))
        if function is describe_run_worker:
            return {address: answer(gpu=self.gpus[address]) for address in asked}
        if function is current_gpu:
            answers = {address: GpuInfo(self.gpus[address], "Fake", 16, 0, 16) for address in asked}
            for address in set(asked) & set(self.leaving):
                answers[address], replacement = self.leaving.pop(address)
                left = self.workers.pop(address)
                if replacement is not None:
                    self.workers[replacement[0]] = {"name": replacement[1], "resources": left["resources"]}
                    self.gpus[replacement[0]] = self.gpus[address]
            return answers
        return {address: 0 for address in asked}


def test_stage_transitions_ask_only_the_workers_they_need_once_each():
    """Between two GPU stages a run reads the plan again, the GPUs and releases the models: the
    busy CPU workers are asked nothing, each worker is described once, the GPUs in one call."""
    gpu = {GPU: 1, GPU_RANK: gpu_rank(0), GPU_SHARE: 16}  # ranked and sized, as the run starts them
    workers = {"tcp://a:1": {"name": "gpu0-w0", "resources": gpu}, "tcp://a:2": {"name": "gpu1-w0", "resources": gpu}}
    workers["tcp://a:3"] = {"name": "cpu-w0", "resources": {"CPU": 1}}
    client = FakeClient(workers, {"tcp://a:1": 0, "tcp://a:2": 1, "tcp://a:3": None})
    cluster = RunCluster(Settings(cluster={"scheduler_address": "tls://scheduler:8786"}))
    cluster.client = client

    plan = cluster.plan()
    assert client.runs == [("describe_run_worker", ["tcp://a:1", "tcp://a:2", "tcp://a:3"])]
    assert [g.index for g in plan.gpus] == [0, 1]
    client.runs.clear()
    assert [g.index for g in cluster.plan().gpus] == [0, 1] and client.runs == []  # nobody asked again
    assert [info.index for info in cluster.gpu_infos(plan)] == [0, 1]
    cluster.release("depth_camera")
    assert client.runs == [("current_gpu", ["tcp://a:1", "tcp://a:2"]), ("release_stages", ["tcp://a:1", "tcp://a:2"])]

    client.runs.clear()
    del client.workers["tcp://a:2"]  # gpu1-w0 restarted under a new address
    client.workers["tcp://a:4"], client.gpus["tcp://a:4"] = {"name": "gpu1-w0", "resources": gpu}, 1
    assert [w.address for w in cluster.plan().workers if w.gpu is not None] == ["tcp://a:1", "tcp://a:4"]
    cluster.release("tracks_3d")
    assert client.runs == [("describe_run_worker", ["tcp://a:4"]), ("release_stages", ["tcp://a:1", "tcp://a:4"])]

    client.runs.clear()
    del client.workers["tcp://a:4"]  # died after the plan was read: not waited for
    cluster.release("hands")
    assert client.runs == [("release_stages", ["tcp://a:1"])]


def test_the_run_keeps_only_a_few_of_dasks_sent_batches_whatever_it_submits():
    """Dask keeps each comm's last batches for debugging; a batch that submits a Prefect task
    holds its whole spec, so 1,000 of them per comm grew the flow process with the corpus."""
    from distributed import LocalCluster

    from trackset.engine.run_cluster import DASK_MESSAGE_LOG_LENGTH

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as local:
        cluster = RunCluster(Settings(cluster={"scheduler_address": local.scheduler_address}))
        with cluster:
            client = cluster.client
            for index in range(3 * DASK_MESSAGE_LOG_LENGTH):
                assert client.submit(pow, index, 2, pure=False).result() == index**2
            assert len(client.scheduler_comm.recent_message_log) == DASK_MESSAGE_LOG_LENGTH


def test_workers_a_nanny_spawns_keep_glibcs_adaptive_malloc(monkeypatch):
    """Dask's MALLOC_TRIM_THRESHOLD_ (65536) made every freed array a fresh mmap, faulted in
    again for each frame and video; the run's workers must not get it (a real spawned worker)."""
    import os

    import dask
    from distributed import Client, LocalCluster

    from trackset.engine.run_cluster import run_dask_config

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # a Nanny started earlier in this process sets it
    with (
        dask.config.set(run_dask_config()),
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as local,
        Client(local) as client,
    ):
        assert list(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == [None]
        assert list(client.run(os.environ.get, "OMP_NUM_THREADS").values()) == ["1"]  # Dask's others stay


def test_the_dask_config_file_for_hand_started_clusters_says_what_the_run_sets():
    import yaml

    from trackset.engine.run_cluster import run_dask_config

    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            name = f"{prefix}{key}"
            out |= flat(value, f"{name}.") if isinstance(value, dict) else {name: value}
        return out

    path = Path(__file__).parents[2] / "deployments" / "dask.yaml"
    # And TLS only: the run's own clusters get it with their certificates (test below).
    assert flat(yaml.safe_load(path.read_text())) == run_dask_config() | {"distributed.comm.require-encryption": True}


def test_the_cluster_a_run_starts_talks_tls_and_its_subflows_join_it():
    """Another account on the machine reaches 127.0.0.1 too: without the run's certificate,
    no comm; a subflow's runner (a client of the run's address in the same process, as the
    runner ``task_runner`` gives ``process-waves``) gets in."""
    from distributed import Client

    settings = Settings(cluster={"cpu_workers": 1, "cpu_worker_nice": 0})
    with RunCluster(settings, gpu_workers=False) as cluster:
        assert cluster.address is not None and cluster.address.startswith("tls://127.0.0.1:")
        with Client(cluster.address, timeout=30) as subflow:
            assert len(subflow.scheduler_info()["workers"]) == 1
        address = cluster.address
        import dask

        with dask.config.set({"distributed.comm.require-encryption": False}), pytest.raises(OSError):
            Client(address.replace("tls://", "tcp://"), timeout=5)


def test_tls_settings_that_cannot_work_fail_at_once_naming_the_setting(tmp_path):
    with pytest.raises(ClusterShapeError, match=r"^cluster\.tls_dir: missing .*ca\.pem.*trackset secrets"):
        with RunCluster(Settings(cluster={"scheduler_address": "tls://10.0.0.7:8786", "tls_dir": str(tmp_path)})):
            pass
    with pytest.raises(ClusterShapeError, match=r"tls://10\.0\.0\.7:8786 needs the cluster's certificates: set cluster\.tls_dir"):
        with RunCluster(Settings(cluster={"scheduler_address": "tls://10.0.0.7:8786"})):
            pass


def test_the_run_cluster_is_handed_down_as_a_placeholder_and_pickles_detached():
    """build-dataset hands its cluster to process-waves as a parameter: the API stores a
    placeholder, not its settings and client, and the context Prefect pickles into every task
    carries only its settings and address."""
    import pickle

    from trackset.flows.waves import process_waves

    cluster = RunCluster(Settings(cluster={"scheduler_address": "tls://scheduler:8786"}))
    cluster.address = "tls://scheduler:8786"
    assert process_waves.serialize_parameters({"cluster": cluster}) == {"cluster": "<RunCluster>"}
    shipped = pickle.loads(pickle.dumps(cluster))
    assert (shipped.address, shipped.client, shipped.settings) == (cluster.address, None, cluster.settings)


def gpu_cluster(count: int) -> tuple[RunCluster, FakeClient]:
    """A run's cluster of ``count`` GPUs with one ranked worker each, on a fake client."""
    gpu = {GPU: 1, GPU_RANK: gpu_rank(0), GPU_SHARE: 16}
    workers = {f"tcp://a:{i}": {"name": f"gpu{i}-w0", "resources": gpu} for i in range(count)}
    client = FakeClient(workers, {f"tcp://a:{i}": i for i in range(count)})
    cluster = RunCluster(Settings(cluster={"scheduler_address": "tls://scheduler:8786"}))
    cluster.client = client
    return cluster, client


def test_a_gpu_whose_workers_left_while_it_was_measured_is_read_again():
    """A SLURM worker that retires between the plan and the question, its replacement joining:
    the GPUs are read again (CI saw a stage fail on it)."""
    cluster, client = gpu_cluster(2)
    gone = OSError("Timed out trying to connect to tcp://a:1 after 30 s")
    client.leaving["tcp://a:1"] = gone, ("tcp://a:9", "gpu1-r")
    plan, infos = cluster.measure_gpus()
    assert [info.index for info in infos] == [0, 1]
    assert plan is not None and [w.address for w in plan.workers] == ["tcp://a:0", "tcp://a:9"]
    assert [asked for name, asked in client.runs if name == "current_gpu"] == [
        ["tcp://a:0", "tcp://a:1"],
        ["tcp://a:0", "tcp://a:9"],
    ]


def test_a_gpu_whose_workers_keep_leaving_or_that_answers_an_error_fails_naming_it():
    cluster, client = gpu_cluster(2)
    chain = ["tcp://a:1"] + [f"tcp://b:{n}" for n in range(GPU_READ_ATTEMPTS)]
    for n, (address, replacement) in enumerate(itertools.pairwise(chain)):
        client.leaving[address] = CommClosedError("gone"), (replacement, f"gpu1-r{n}")
    with pytest.raises(GpuWorkersLeftError, match="no worker of GPU 1 on h answered: gone"):
        cluster.measure_gpus()
    assert sum(name == "current_gpu" for name, _ in client.runs) == GPU_READ_ATTEMPTS

    cluster, client = gpu_cluster(2)
    client.leaving["tcp://a:1"] = RuntimeError("NVML: driver not loaded"), None
    with pytest.raises(RuntimeError, match="NVML: driver not loaded") as caught:
        cluster.measure_gpus()
    assert not isinstance(caught.value, GpuWorkersLeftError)
    assert sum(name == "current_gpu" for name, _ in client.runs) == 1  # an error, not a departure: not read again


def test_a_slurm_job_exports_the_api_and_the_ca_its_certificate_is_checked_against(tmp_path):
    ca = tmp_path / "api tls" / "ca.pem"  # any CA file the client can load
    ca.parent.mkdir()
    ca.write_bytes(Path(certifi.where()).read_bytes())
    with temporary_settings({PREFECT_API_URL: "https://head:4200/api", PREFECT_API_SSL_CERT_FILE: str(ca)}):
        lines = job_environment()
    assert lines[:2] == ["export PREFECT_API_URL=https://head:4200/api", f"export PREFECT_API_SSL_CERT_FILE='{ca}'"]
    assert lines[2].startswith("export DASK_INTERNAL_INHERIT_CONFIG=")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api", PREFECT_API_SSL_CERT_FILE: ""}):
        assert not any("SSL_CERT_FILE" in line for line in job_environment())
