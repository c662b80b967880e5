"""The SLURM jobs of a run of ``cluster.kind: slurm``: submitted, replaced and given back.

The run's cluster (:mod:`trackset.engine.run_cluster`) is dask-jobqueue's ``SLURMCluster``
with the run's CPU workers beside the jobs. How many jobs is decided from the wave planner's
count of pending GPU work (:func:`trackset.cluster.jobqueue.jobs_for`) and what to do about
the jobs as they are (:func:`trackset.cluster.jobqueue.reconcile`); this module only looks
(``squeue``, the scheduler's workers) and acts (``sbatch`` and ``scancel``, through
dask-jobqueue's spec of the cluster: a job is an entry of ``worker_spec``).

Not dask's ``adapt``: it scales by the tasks the scheduler holds, so it cannot see the next
wave coming, it would give back a job whose worker holds a result the next stage needs, and
it counts the CPU workers as jobs. Nor prefect-dask's ``cluster_class``/``adapt_kwargs``: a
task runner built so starts a cluster per flow run, and a run has one cluster across its
subflows.

A thread looks every ``cluster.slurm.poll_s`` seconds, so a job that ended (walltime,
preemption, ``scancel``, a failed node) is replaced while work is left, and an extra one is
given back once its workers are idle. Jobs that end before any of their workers joined
(a node without the run's Python, a wrong partition option) fail the run after
:data:`NEVER_JOINED_LIMIT` of them, naming the jobs' error files, instead of resubmitting forever.
"""

from __future__ import annotations

import getpass
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import Client, SpecCluster

from trackset.cluster.jobqueue import Job, JobState, jobs_for, reconcile
from trackset.config.settings import ClusterSettings
from trackset.errors import ClusterShapeError

NEVER_JOINED_LIMIT = 3
"""Jobs in a row that end before a worker joins, after which the run fails."""

_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"}
_RUNNING = {"RUNNING", "SUSPENDED", "STOPPED"}


async def settle(cluster: SpecCluster) -> None:
    """Start and stop workers until ``cluster`` runs what its ``worker_spec`` says.

    Awaiting a SpecCluster is its public way to apply an edited spec (distributed's
    ``scale_down`` does the same after it removes names): for dask-jobqueue, a new entry
    is an ``sbatch``, a removed one an ``scancel``. It returns once the jobs are submitted,
    not when they run.
    """
    await cluster


def squeue_states(job_ids: list[str]) -> dict[str, JobState]:
    """``squeue``'s word on each of ``job_ids``: pending, running, or gone (not listed: ended)."""
    if not job_ids:
        return {}
    listed = subprocess.run(
        ["squeue", "--noheader", "--format=%i %T", f"--user={getpass.getuser()}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    found = dict(line.split() for line in listed.splitlines() if len(line.split()) == 2)
    states: dict[str, JobState] = {}
    for job_id in job_ids:
        state = found.get(job_id, "")
        states[job_id] = "pending" if state in _PENDING else "running" if state in _RUNNING else "gone"
    return states


class SlurmJobs:
    """The run's jobs, as many as :meth:`want` says, looked after by a thread (module docstring).

    Args:
        cluster: the run's ``SLURMCluster`` (its ``worker_spec`` holds the jobs and the CPU workers).
        client: a client of it.
        settings: the run's ``cluster`` settings.
        logger: where each change of the jobs is said.
    """

    def __init__(self, cluster: Any, client: Client, settings: ClusterSettings, logger: logging.Logger) -> None:
        self.cluster = cluster
        self.client = client
        self.settings = settings
        self.logger = logger
        self.target = 0
        self.error: Exception | None = None
        self._jobs: list[str] = []  # the spec's names of the jobs this run holds, in order
        self._ids: dict[str, str] = {}  # SLURM's job id of each, once submitted
        self._joined: set[str] = set()
        self._never_joined: list[str] = []  # jobs that ended before a worker joined, since one last joined
        self._said = ""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="trackset-slurm-jobs", daemon=True)

    def start(self) -> SlurmJobs:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop looking (closing the cluster gives every job back)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def want(self, videos: int) -> int:
        """Hold as many jobs as ``videos`` of GPU work can use; return that number.

        Raises:
            ClusterShapeError: ``sbatch`` refused a job, or jobs keep ending before their workers join.
        """
        slurm = self.settings.slurm
        jobs = jobs_for(videos, slurm.gpus_per_job, self.settings.gpu_task_videos, slurm.max_jobs)
        with self._lock:
            self.target = jobs
            self._look()
        self.check()
        return jobs

    def check(self) -> None:
        """Raise what went wrong with the jobs, if anything did."""
        if self.error is not None:
            raise self.error

    def wait_for_gpu_workers(self, has_gpus: Callable[[], bool], poll_s: float = 1.0) -> None:
        """Wait until ``has_gpus()`` (a GPU worker joined), saying every minute what the jobs do.

        Raises:
            ClusterShapeError: no job is wanted, or the jobs cannot start (:meth:`check`).
        """
        started = last_said = time.monotonic()
        while not has_gpus():
            self.check()
            if self.target == 0:
                raise ClusterShapeError("no GPU worker: the run holds no SLURM job (no GPU work was announced)")
            if time.monotonic() - last_said >= 60:
                last_said = time.monotonic()
                waited = last_said - started
                self.logger.info("waiting %.0f s for a GPU worker of the SLURM jobs: %s", waited, self.describe())
            time.sleep(poll_s)

    def describe(self) -> str:
        """The jobs in a few words, as the last look saw them."""
        return self._said or "none submitted"

    # -- the thread ----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.slurm.poll_s):
            try:
                with self._lock:
                    self._look()
            except Exception as exc:  # the flow raises it at its next want or wait
                self.error = exc
                return

    def _look(self) -> None:
        """See the jobs as they are and apply :func:`reconcile`'s changes."""
        jobs = self._see()
        changes = reconcile(jobs, self.target)
        self._never_joined += list(changes.never_joined)
        if len(self._never_joined) >= NEVER_JOINED_LIMIT:
            files = ", ".join(self._error_file(name) for name in self._never_joined[-NEVER_JOINED_LIMIT:])
            raise ClusterShapeError(
                f"{len(self._never_joined)} SLURM jobs ended before any of their workers joined the run; "
                f"their error files say why: {files}"
            )
        if changes.cancel:
            self._retire_workers_of(changes.cancel)
        for name in (*changes.forget, *changes.cancel):
            self.cluster.worker_spec.pop(name, None)
            self._jobs.remove(name)
        for _ in range(changes.submit):
            spec = self.cluster.new_worker_spec()
            self.cluster.worker_spec.update(spec)
            self._jobs += list(spec)
        if changes.submit or changes.cancel or changes.forget:
            self._apply()
        self._say(jobs, changes.submit)

    def _apply(self) -> None:
        """Submit and cancel what the spec now says (dask-jobqueue runs ``sbatch``, ``scancel``)."""
        try:
            self.cluster.sync(settle, self.cluster)
        except Exception as exc:
            refused = [name for name in self._jobs if name not in self.cluster.workers]
            for name in refused:
                self.cluster.worker_spec.pop(name, None)
                self._jobs.remove(name)
            raise ClusterShapeError(f"SLURM refused a job of the run: {exc}") from exc

    def _see(self) -> list[Job]:
        """Each job of the run as ``squeue`` and the scheduler see it."""
        for name in self._jobs:
            job_id = getattr(self.cluster.workers.get(name), "job_id", None)
            if job_id:
                self._ids[name] = str(job_id)
        ids = {name: self._ids.get(name, "") for name in self._jobs}
        states = squeue_states([job_id for job_id in ids.values() if job_id])
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        processing = self.client.processing()
        jobs = []
        for name in self._jobs:
            mine = [address for address, info in workers.items() if _of_job(str(info.get("name", "")), name)]
            if mine and name not in self._joined:
                self._joined.add(name)
                self._never_joined.clear()  # jobs start again
            state = states.get(ids[name], "pending") if ids[name] else "pending"
            busy = any(processing.get(address) for address in mine)
            jobs.append(Job(name, state, len(mine), name in self._joined, busy))
        return jobs

    def _retire_workers_of(self, names: tuple[str, ...]) -> None:
        """Have the workers of jobs about to be cancelled hand their results to other workers."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        addresses = [a for a, info in workers.items() if any(_of_job(str(info.get("name", "")), n) for n in names)]
        if addresses:
            self.client.retire_workers(workers=addresses, close_workers=False)

    def _say(self, jobs: list[Job], submitted: int) -> None:
        running = sum(job.state == "running" and not job.leaving for job in jobs)
        queued = sum(job.state == "pending" for job in jobs) + submitted
        said = f"{running} running, {queued} queued, {self.target} wanted"
        if said != self._said:
            self._said = said
            self.logger.info("SLURM jobs: %s", said)

    def _error_file(self, name: str) -> str:
        job_id = self._ids.get(name)
        folder = Path(self.cluster._job_kwargs.get("log_directory") or ".")
        return str(folder / f"trackset-gpu-{job_id}.err") if job_id else f"job {name}"


def _of_job(worker: str, job: str) -> bool:
    """Whether a worker's name is one of ``job``'s (dask-jobqueue names them ``job`` or ``job-<i>``)."""
    return worker == job or worker.startswith(f"{job}-")
