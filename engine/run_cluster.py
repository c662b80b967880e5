"""The one Dask cluster of a run: started here for this machine, or an existing one by address.

A run used to start a cluster per stage subflow (6-14 s each on two cores, per wave once
builds went in waves). Now ``build-dataset`` opens one :class:`RunCluster` for the run and
every task runner connects to it by address:

- ``cluster.runner: dask`` without an address starts a ``SpecCluster`` of ``Nanny``
  workers on 127.0.0.1 (``trackset/cluster/worker_spec.py``): ``cluster.cpu_workers`` CPU workers
  and ``cluster.max_workers_per_gpu`` workers pinned to each GPU (only CPU workers for a
  run without a GPU stage, an import). A GPU stage is sized by
  restricting its tasks to some of them (``trackset/cluster/plan.py``); workers it does not
  use never touch CUDA.
- ``cluster.kind: slurm`` starts dask-jobqueue's ``SLURMCluster``: the scheduler here, the
  CPU workers here too, and the GPU workers as SLURM jobs, as many as the wave planner's
  pending GPU work can use (:mod:`trackset.engine.slurm_jobs`), each worker pinned, ranked
  and sized by itself as it starts (:mod:`trackset.cluster.gpu_worker`). Closing the cluster
  gives every job back (``scancel``), whether the run ended, failed or was cancelled; a run
  killed outright leaves jobs whose workers stop 60 s after the scheduler is gone
  (dask-jobqueue's ``--death-timeout``).
- ``cluster.scheduler_address`` connects to a cluster someone else started (``dask
  worker`` on several hosts, dask-jobqueue, dask-kubernetes); the same restrictions size it.
- ``cluster.runner: threads`` runs every task in the flow's own process (tests, laptops).

Every comm is TLS (:mod:`trackset.cluster.security`): with the certificates of
``cluster.tls_dir``, else, for a cluster started here, a certificate made for the run; an
existing cluster without ``cluster.tls_dir`` gets Dask's own config (``DASK_CONFIG``). The
settings refuse an unencrypted address on another machine unless ``cluster.trusted_network``
says the network is trusted. Tasks go to the workers without Prefect's secrets
(:mod:`trackset.engine.task_context`).

The workers are asked what they are (:mod:`trackset.cluster.worker_probe`): host, GPU, how much
of it is free now; each worker is asked once, as it joins. Between stages the models are
released on every GPU worker (``release_stages`` through ``Client.run``), so a stage never
loads its model on top of the previous stage's.
"""

from __future__ import annotations

import logging
import shlex
import ssl
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import certifi
import dask
import httpx
from distributed import Client, SpecCluster
from distributed.comm.core import CommClosedError
from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import MissingContextError
from prefect.settings import get_current_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

import trackset
from trackset.cluster.jobqueue import run_slurm_kwargs
from trackset.cluster.plan import ClusterPlan, ClusterWorker
from trackset.cluster.security import TlsFiles, temporary_tls_config, tls_config
from trackset.cluster.worker_cache import release_stages
from trackset.cluster.worker_probe import GpuRanks, current_gpu, describe_worker
from trackset.cluster.worker_spec import cpu_worker_spec, run_cluster_spec
from trackset.config.settings import Settings
from trackset.engine.slurm_jobs import SlurmJobs, settle
from trackset.engine.task_context import DaskTaskRunnerWithoutSecrets
from trackset.errors import ClusterShapeError
from trackset.gpu.fake_device import ledger_dir_for
from trackset.gpu.inventory import GpuInfo, detect_inventory


def worker_env() -> dict[str, str]:
    """Environment every local Dask worker needs: the API of the server this flow run reports to.

    Without it, a worker of a flow started without ``PREFECT_API_URL`` (the CLI demo) would
    start a temporary server of its own and record its task runs where nobody looks.
    """
    with get_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url).rstrip("/")}


def describe_run_worker(readable: list[str], writable: list[str], api_url: str) -> dict[str, Any]:
    """:func:`~trackset.cluster.worker_probe.describe_worker`, and whether this worker's own
    Prefect settings may use the API at ``api_url``.

    Tasks carry the API URL but no credentials (:mod:`trackset.engine.task_context`): a worker
    without the server's auth string would fail every task with ``401 Unauthorized``, so the
    run's start-up check names it instead.
    """
    context, unreadable = None, ""
    if api_url.startswith("https://"):
        try:
            context = api_ssl_context()
        except (OSError, ssl.SSLError) as exc:
            # Raised, it would read as a worker that died meanwhile and be left out unnamed.
            ca_file = get_current_settings().api.ssl_cert_file
            unreadable = f"cannot load PREFECT_API_SSL_CERT_FILE {ca_file} to check the API's certificate ({exc})"
    answer = describe_worker(readable, writable, "" if unreadable else api_url, context)
    if unreadable:
        answer["problems"].append(unreadable)
    elif api_url and not answer["problems"]:
        answer["problems"] += api_credentials_problems(api_url)
    return answer


def api_ssl_context() -> ssl.SSLContext:
    """What this process's Prefect clients check an ``https://`` API's certificate against, as
    ``PrefectClient`` and Prefect's websockets build it: the CAs of ``PREFECT_API_SSL_CERT_FILE``
    (the server's ``api-tls/ca.pem``), else certifi's; nothing with
    ``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``."""
    api = get_current_settings().api
    if api.tls_insecure_skip_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=api.ssl_cert_file or certifi.where())


def api_credentials_problems(api_url: str) -> list[str]:
    """Why this process's Prefect settings (its environment and profile) cannot use the API."""
    api = get_current_settings().api
    auth = api.auth_string.get_secret_value() if api.auth_string else None
    key = api.key.get_secret_value() if api.key else None
    try:
        with SyncPrefectClient(api_url, auth_string=auth, api_key=key) as client:
            client.hello()
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        if status == 401:
            return [
                f"is refused by the Prefect API at {api_url} (401 Unauthorized): give it the server's auth string "
                "as PREFECT_API_AUTH_STRING (README, 'Several machines')"
            ]
        return [f"cannot use the Prefect API at {api_url} ({status})"]
    return []


# Every batched comm of Dask keeps its last ``low-level-log-length`` batches for debugging
# (default 1,000). A batch that submits or dispatches a Prefect task holds the whole task
# spec (the Prefect task, its parameters, its serialized context): in the flow process, the
# client's comm to the scheduler and the in-process scheduler's comm to each worker kept
# ~145 KiB per video of a 5,000-video build (BENCHMARKS.md, scale). A few batches are enough
# to debug with.
DASK_MESSAGE_LOG_LENGTH = 16


def job_environment() -> list[str]:
    """What a SLURM job of the run exports before its workers start: the run's Prefect API (and
    the CA file its HTTPS certificate is checked against, where one is set) and its Dask
    settings (:func:`run_dask_config`). No secret: the job script is a readable file, and SLURM
    hands the jobs the environment of the process that submits them (the Prefect auth string
    included) without writing it anywhere."""
    nested: dict[str, Any] = {}
    for key, value in run_dask_config().items():
        *path, last = key.split(".")
        place = nested
        for part in path:
            place = place.setdefault(part, {})
        place[last] = value
    lines = [f"export PREFECT_API_URL={worker_env()['PREFECT_API_URL']}"]
    ca_file = get_current_settings().api.ssl_cert_file
    if ca_file:
        lines.append(f"export PREFECT_API_SSL_CERT_FILE={shlex.quote(ca_file)}")
    return [*lines, f"export DASK_INTERNAL_INHERIT_CONFIG={dask.config.serialize(nested)}"]


def _run_logger() -> Any:
    """The flow run's logger (the jobs' changes show in the run's log), else trackset's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("trackset.slurm")


def run_dask_config() -> dict[str, Any]:
    """Dask settings for the run's clients and the workers it starts.

    - ``low-level-log-length``: :data:`DASK_MESSAGE_LOG_LENGTH` batches per comm.
    - No ``MALLOC_TRIM_THRESHOLD_`` for the workers a Nanny spawns. Dask sets it (65,536) so
      that freed memory goes back to the OS at once; setting it also turns off glibc's
      adaptive mmap threshold, so every array over 128 KiB is a fresh mmap whose pages the
      kernel faults in and zeroes, per frame and per video: an H5 build of a 187-frame video
      took ~68,000 page faults instead of ~3,000, +0.1-0.2 s of system time (BENCHMARKS.md,
      H5 build). A stage's tasks hold no Dask data to spill; they allocate and free the same
      sizes video after video, which is what glibc's default reuses. ``None`` is Dask's way
      to leave a variable unset.
    """
    return {
        "distributed.admin.low-level-log-length": DASK_MESSAGE_LOG_LENGTH,
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    }


GPU_READ_ATTEMPTS = 3
"""Reads of the cluster's GPUs before a GPU whose workers keep leaving fails the stage."""


class GpuWorkersLeftError(RuntimeError):
    """Every worker of a GPU left between the reading of the plan and the question asked of them."""


class RunCluster:
    """The run's cluster (or none, for threads), open from ``__enter__`` to ``__exit__``.

    ``build-dataset`` opens one and hands it down to ``process-waves`` as a parameter, which
    has two consequences. A flow run's parameters are stored in the API as JSON, and an
    object without a ``__dict__`` is stored as Prefect's placeholder ``<RunCluster>``, not as
    its settings and client: hence ``__slots__``. And Prefect pickles a flow run's parameters
    into the context of every task it submits: a pickled cluster is detached (its settings
    and address, no client, nothing to close), which is all a worker could use of it.
    """

    __slots__ = (
        "_cluster",
        "_context",
        "_facts",
        "_folders",
        "address",
        "client",
        "gpu_workers",
        "jobs",
        "settings",
        "threads",
    )

    def __init__(self, settings: Settings, gpu_workers: bool = True) -> None:
        """``gpu_workers=False``: a run without a GPU stage (an import) starts only the CPU
        workers, not the ``max_workers_per_gpu`` per GPU it would never use (on two GPUs
        with the defaults, 10 worker processes to start and stop become 2)."""
        self.settings = settings
        self.gpu_workers = gpu_workers
        self.threads = settings.cluster.runner == "threads"
        self.address: str | None = None
        self.client: Client | None = None
        self._cluster: SpecCluster | None = None
        self.jobs: SlurmJobs | None = None
        self._context = ExitStack()
        # What each worker said of itself (host, GPU), by address: asked once per worker,
        # since a stage transition that asks every busy CPU worker again waits on the slowest.
        self._facts: dict[str, dict[str, Any]] = {}
        # The run's folders every worker must reach, from the first check: asked of a worker that joins later too.
        self._folders: tuple[list[str], list[str]] = ([], [])

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "gpu_workers": self.gpu_workers, "address": self.address}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RunCluster.__init__(self, state["settings"], state["gpu_workers"])
        self.address = state["address"]

    def __enter__(self) -> RunCluster:
        cluster = self.settings.cluster
        if self.threads:
            return self
        # Before any comm opens (each reads the length once) and any Nanny spawns a worker.
        self._context.enter_context(dask.config.set(run_dask_config() | self._tls_config()))
        if cluster.scheduler_address:
            self.address = cluster.scheduler_address
            self.client = Client(self.address, timeout=cluster.connect_timeout_s)
            return self
        if cluster.kind == "slurm":
            return self._start_slurm()
        gpus = self._local_gpus() if self.gpu_workers else []
        spec = run_cluster_spec(
            [gpu.index for gpu in gpus],
            cluster.max_workers_per_gpu,
            cluster.cpu_workers,
            env=worker_env(),
            preload=cluster.worker_preload,
            cpu_nice=cluster.cpu_worker_nice,
            protocol="tls",
            available_bytes={gpu.index: gpu.available_bytes for gpu in gpus},
            headroom=cluster.headroom,
        )
        self._cluster = SpecCluster(**spec)
        self.address = self._cluster.scheduler_address
        self.client = Client(self._cluster)
        self.client.wait_for_workers(len(spec["workers"]), timeout=cluster.connect_timeout_s)
        return self

    def _start_slurm(self) -> RunCluster:
        """The scheduler and the CPU workers here, the GPU workers as SLURM jobs (module docstring).

        The jobs come as the planner announces GPU work (:meth:`want`); none is submitted yet.

        Raises:
            ClusterShapeError: dask-jobqueue is not installed.
        """
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ClusterShapeError(
                "cluster.kind slurm needs dask-jobqueue: pip install 'trackset[slurm]' (or dask-jobqueue)"
            ) from exc
        cluster = self.settings.cluster
        kwargs = run_slurm_kwargs(cluster, Path(self.settings.paths.work_dir).resolve(), job_environment())
        Path(kwargs["log_directory"]).mkdir(parents=True, exist_ok=True)
        slurm = SLURMCluster(**kwargs)
        self._cluster = slurm
        # The CPU workers beside the jobs, in the same spec; the jobs are managed by name.
        slurm.worker_spec.update(
            cpu_worker_spec(
                cluster.cpu_workers,
                env=worker_env(),
                preload=cluster.worker_preload,
                nice=cluster.cpu_worker_nice,
                protocol="tls",
                interface=cluster.slurm.interface,
            )
        )
        slurm.sync(settle, slurm)
        self.address = slurm.scheduler_address
        self.client = Client(slurm)
        self.client.wait_for_workers(cluster.cpu_workers, timeout=cluster.connect_timeout_s)
        self.jobs = SlurmJobs(slurm, self.client, cluster, _run_logger()).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.jobs is not None:
            self.jobs.close()
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._context.close()

    def want(self, videos: int) -> None:
        """``videos`` of GPU work are pending in this wave and the next: a SLURM run holds as
        many jobs as they can use (none for none); any other cluster is what it is."""
        if self.jobs is not None:
            self.jobs.want(videos)

    @property
    def elastic(self) -> bool:
        """Whether GPU workers come and go with the work (SLURM jobs): none at the start is no error."""
        return self.jobs is not None

    def _tls_config(self) -> dict[str, Any]:
        """Dask settings for this run's TLS: ``cluster.tls_dir``'s certificates; for a cluster
        started here without them, a certificate of the run's own; for an existing cluster
        without them, nothing (Dask's config, or the run's when a subflow connects to it).

        Raises:
            ClusterShapeError: ``cluster.tls_dir`` lacks a file or lets others read the key, or a
                ``tls://`` address comes with no certificate at all.
        """
        cluster = self.settings.cluster
        if cluster.tls_dir is not None:
            files = TlsFiles.in_dir(Path(cluster.tls_dir).expanduser())
            problems = files.problems()
            if problems:
                raise ClusterShapeError(f"cluster.tls_dir: {'; '.join(problems)}")
            return tls_config(files)
        if not cluster.scheduler_address:
            return temporary_tls_config()
        if cluster.scheduler_address.startswith("tls://") and not dask.config.get("distributed.comm.tls.client.cert"):
            raise ClusterShapeError(
                f"cluster.scheduler_address {cluster.scheduler_address} needs the cluster's certificates: set "
                "cluster.tls_dir (trackset secrets DIR makes them; README, 'Several machines')"
            )
        return {}

    def _local_gpus(self) -> list[GpuInfo]:
        """The GPUs of this machine the run may use (``cluster.gpus``; fake ones without NVML)."""
        inventory = detect_inventory(self.settings.cluster, ledger_dir_for(Path(self.settings.paths.work_dir)))
        try:
            return inventory.gpus()
        finally:
            inventory.close()

    def task_runner(self) -> TaskRunner[Any]:
        """A runner of this cluster for a flow or subflow of the run."""
        if self.threads or self.address is None:
            return ThreadPoolTaskRunner(max_workers=self.settings.cluster.cpu_workers)
        return DaskTaskRunnerWithoutSecrets(address=self.address)

    def plan(self, readable: list[str] | None = None, writable: list[str] | None = None) -> ClusterPlan | None:
        """The workers grouped by GPU, as they report themselves, each ranked; None for threads.

        Workers started by someone else offer ``GPU=1`` but no ``GPU_RANK``: they get one
        (:class:`~trackset.cluster.worker_probe.GpuRanks`) before any GPU task is submitted. With
        ``readable`` / ``writable`` folders, every worker is also checked (:meth:`check`).

        Raises:
            ClusterShapeError: naming every worker that cannot take part, and why.
        """
        if self.client is None:
            return None
        plan = self._read_plan(self.client, readable, writable)
        if plan.unranked():
            work_dir = str(self.settings.paths.work_dir)
            self.client.register_plugin(GpuRanks(plan.ranks(), self.settings.cluster, work_dir))
            plan = self._read_plan(self.client, None, None)
        return plan

    def wait_for_gpus(self) -> ClusterPlan | None:
        """The plan once a GPU worker is in it: at once, except on a SLURM run whose jobs
        have not started yet, which waits for them (and says so every minute)."""
        plan = self.plan()
        if self.jobs is None or plan is None or plan.gpus:
            return plan
        self.jobs.wait_for_gpu_workers(lambda: bool((self.plan() or plan).gpus))
        return self.plan()

    def _read_plan(self, client: Client, readable: list[str] | None, writable: list[str] | None) -> ClusterPlan:
        """The plan from the scheduler's worker list, asking only workers not seen before
        what they are (all of them when checking folders and the API)."""
        workers = client.scheduler_info(n_workers=-1)["workers"]
        checking = readable is not None or writable is not None
        if checking:
            self._folders = (list(readable or []), list(writable or []))
        asked = list(workers) if checking else [address for address in workers if address not in self._facts]
        if asked:
            # A worker that joined since the first check (a SLURM job started mid-run) is checked as every other.
            late = not checking and any(self._folders)
            readable, writable = self._folders
            api_url = worker_env()["PREFECT_API_URL"] if checking or late else ""
            answers = client.run(describe_run_worker, readable, writable, api_url, workers=asked, on_error="return")
            if checking or late:
                self.check(workers, answers)
            # A worker that died since the scheduler listed it answers with an error: it takes no part.
            self._facts.update({address: answer for address, answer in answers.items() if isinstance(answer, dict)})
        self._facts = {address: facts for address, facts in self._facts.items() if address in workers}
        facts = self._facts
        return ClusterPlan(
            [
                ClusterWorker(
                    address,
                    str(info.get("name", address)),
                    str(facts[address]["host"]),
                    facts[address]["gpu"],
                    dict(info.get("resources", {})),
                    facts[address].get("gpu_uuid"),
                )
                for address, info in workers.items()
                if address in facts
            ]
        )

    def check(self, workers: dict[str, Any], answers: dict[str, Any]) -> None:
        """Fail at once, naming the workers, when the cluster cannot run the build as it is.

        A worker without trackset, or of another version, answers ``describe_run_worker`` with an
        error or another version; one on a host that does not share the run's folders, or that
        cannot reach the Prefect API its task runs report to, names that problem.
        """
        problems = []
        for address, answer in sorted(answers.items()):
            name = workers.get(address, {}).get("name", address)
            where = f"worker {name} ({address})"
            if isinstance(answer, OSError | CommClosedError):
                continue  # gone since the scheduler listed it
            if isinstance(answer, BaseException):
                problems.append(f"{where} cannot run trackset's code: {type(answer).__name__}: {answer}")
            elif answer["version"] != trackset.__version__:
                problems.append(f"{where} has trackset {answer['version']}, this flow {trackset.__version__}")
            else:
                problems += [f"{where} {problem}" for problem in answer["problems"]]
        if problems:
            raise ClusterShapeError(
                f"the cluster at {self.address} cannot run this build (every worker needs this trackset "
                "installed and the run's folders on shared storage, see README 'Several machines'):\n  "
                + "\n  ".join(problems)
            )

    def measure_gpus(self, attempts: int = GPU_READ_ATTEMPTS) -> tuple[ClusterPlan | None, list[GpuInfo]]:
        """The plan once a GPU worker is in it (:meth:`wait_for_gpus`) and its GPUs as they are now.

        Every worker of a GPU may leave between the two reads (a SLURM worker retiring before
        its walltime, a preempted job): the plan is then read again, up to ``attempts`` times.

        Raises:
            GpuWorkersLeftError: they had still left at the last attempt.
        """
        attempt = 1
        while True:
            plan = self.wait_for_gpus()
            if plan is None or not plan.gpus:
                return plan, []
            try:
                return plan, self.gpu_infos(plan)
            except GpuWorkersLeftError as gone:
                if attempt >= attempts:
                    raise
                attempt += 1
                _run_logger().info("%s; reading the cluster again", gone)

    def gpu_infos(self, plan: ClusterPlan) -> list[GpuInfo]:
        """Every GPU of ``plan`` as it is now, asked of its workers in one round trip.

        Raises:
            GpuWorkersLeftError: every worker of a GPU left since ``plan`` was read.
            RuntimeError: no worker of a GPU could tell, and one answered with an error.
        """
        if self.client is None:
            return []
        addresses = [worker.address for group in plan.by_gpu.values() for worker in group]
        cluster, work_dir = self.settings.cluster, str(self.settings.paths.work_dir)
        answers = self.client.run(current_gpu, cluster, work_dir, workers=addresses, on_error="return")
        infos = []
        for gpu, group in plan.by_gpu.items():
            # Any live worker of the GPU can tell; one that died since the plan was read cannot.
            replies = [answers.get(worker.address) for worker in group]
            found = [reply for reply in replies if isinstance(reply, GpuInfo)]
            if not found:
                errors = "; ".join(str(reply) for reply in replies)
                where = f"no worker of GPU {gpu.index} on {gpu.host} answered: {errors}"
                if all(isinstance(reply, OSError | CommClosedError) for reply in replies):
                    raise GpuWorkersLeftError(where)
                raise RuntimeError(where)
            info = found[0]
            name = info.name if plan.single_host else f"{info.name} @ {gpu.host}"
            infos.append(GpuInfo(info.index, name, info.total_bytes, info.used_bytes, info.free_bytes))
        return infos

    def release(self, stage: str) -> None:
        """Free ``stage``'s models on the GPU workers (and in this process, for threads).

        Only GPU workers load a GPU stage's model; the CPU workers, busy with the next wave's
        preprocessing and the last one's H5 files, are not asked.
        """
        release_stages(stage)
        if self.client is not None:
            # Only live workers: connecting to one that died would wait out Dask's connect
            # timeout. One that joined since the last plan is asked too (it may serve a GPU).
            alive = self.client.scheduler_info(n_workers=-1)["workers"]
            gpu_workers = [a for a in alive if a not in self._facts or self._facts[a]["gpu"] is not None]
            if gpu_workers:
                self.client.run(release_stages, stage, workers=gpu_workers, on_error="ignore")
