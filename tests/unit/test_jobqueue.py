"""SLURM jobs started by dask-jobqueue give trackset GPU workers of the shape it expects."""

from __future__ import annotations

import pytest

from trackset.cluster.jobqueue import slurm_gpu_workers


def test_the_job_script_asks_for_one_gpu_and_starts_pinned_single_thread_gpu_workers():
    jobqueue = pytest.importorskip("dask_jobqueue")
    cluster = jobqueue.SLURMCluster(**slurm_gpu_workers(2, "64GB"), scheduler_options={"host": "127.0.0.1"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script
    assert "--nworkers 2" in script and "--nthreads 1" in script and "--resources GPU=1" in script


def test_a_job_has_at_least_one_worker():
    with pytest.raises(ValueError, match="at least 1"):
        slurm_gpu_workers(0, "8GB")
