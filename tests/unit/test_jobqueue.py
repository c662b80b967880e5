"""SLURM jobs started by dask-jobqueue give trackset GPU workers of the shape it expects, over TLS."""

from __future__ import annotations

import pytest

from trackset.cluster.jobqueue import slurm_gpu_workers
from trackset.cluster.security import write_secrets


def test_the_job_script_asks_for_one_gpu_and_starts_pinned_single_thread_tls_gpu_workers(tmp_path):
    jobqueue = pytest.importorskip("dask_jobqueue")
    write_secrets(tmp_path)
    tls = tmp_path / "tls"
    kwargs = slurm_gpu_workers(2, "64GB", tls)
    kwargs["scheduler_options"] |= {"host": "127.0.0.1", "port": 0, "dashboard_address": "127.0.0.1:0"}
    cluster = jobqueue.SLURMCluster(**kwargs)
    try:
        script = cluster.job_script()
        address = cluster.scheduler_address
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script
    assert "--nworkers 2" in script and "--nthreads 1" in script and "--resources GPU=1" in script
    assert address.startswith("tls://")
    assert f"tls://{address.removeprefix('tls://')}" in script  # the workers dial the TLS address
    for option, name in (("--tls-ca-file", "ca.pem"), ("--tls-cert", "cert.pem"), ("--tls-key", "key.pem")):
        assert f"{option} {tls / name}" in script
    assert "--dashboard-address 127.0.0.1:0" in script


def test_a_job_has_at_least_one_worker(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        slurm_gpu_workers(0, "8GB", tmp_path)
