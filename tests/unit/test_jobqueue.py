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


def test_a_slurm_run_submits_jobs_of_its_settings_that_retire_before_the_walltime(tmp_path):
    jobqueue = pytest.importorskip("dask_jobqueue")
    from trackset.cluster.jobqueue import run_slurm_kwargs
    from trackset.config.settings import ClusterSettings

    write_secrets(tmp_path)
    cluster = ClusterSettings(
        kind="slurm",
        tls_dir=tmp_path / "tls",
        max_workers_per_gpu=3,
        worker_preload=["my.preload"],
        slurm={
            "partition": "gpu",
            "account": "lab",
            "gpus_per_job": 2,
            "gpu_type": "a100",
            "walltime": "02:00:00",
            "retire_before_walltime_s": 600,
            "retire_stagger_s": 120,
            "job_directives": ["--qos=high"],
            "job_prologue": ["module load cuda"],
        },
    )
    kwargs = run_slurm_kwargs(cluster, tmp_path / "work", ["export PREFECT_API_URL=http://127.0.0.1:1/api"])
    kwargs["scheduler_options"] |= {"port": 0}
    slurm = jobqueue.SLURMCluster(**kwargs)
    try:
        script = slurm.job_script()
    finally:
        slurm.close()
    for line in ("-p gpu", "-A lab", "-t 02:00:00", "--gres=gpu:a100:2", "--qos=high"):
        assert f"#SBATCH {line}" in script
    assert "#SBATCH --cpus-per-task=6" in script  # one per worker: 3 per GPU, 2 GPUs
    assert script.index("export PREFECT_API_URL") < script.index("module load cuda") < script.index("--nworkers 6")
    assert "--preload my.preload --preload trackset.cluster.gpu_worker --job-workers 6" in script
    assert "--retire-after-s 6600.0 --retire-stagger-s 120.0" in script  # 2 h less 600 s
    assert (tmp_path / "tls" / "key.pem").read_text().strip().splitlines()[1] not in script  # paths, never the key
