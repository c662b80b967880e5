"""Workers grouped by GPU: by NVML UUID where there is one, so two jobs' "GPU 0" stay apart."""

from __future__ import annotations

from trackset.cluster.plan import ClusterPlan, ClusterWorker, gpu_task_resources

GPU = {"GPU": 1}


def test_workers_of_two_jobs_that_each_see_gpu_0_are_two_gpus():
    plan = ClusterPlan(
        [
            ClusterWorker("tcp://n1:1", "job1-0", "n1", 0, GPU, "GPU-aaaa"),
            ClusterWorker("tcp://n1:2", "job1-1", "n1", 0, GPU, "GPU-aaaa"),
            ClusterWorker("tcp://n1:3", "job2-0", "n1", 0, GPU, "GPU-bbbb"),
        ]
    )
    assert [(key.uuid, [w.name for w in group]) for key, group in plan.by_gpu.items()] == [
        ("GPU-aaaa", ["job1-0", "job1-1"]),
        ("GPU-bbbb", ["job2-0"]),
    ]
    assert plan.slots_per_gpu == 1  # a plan can use as many workers per GPU as the smallest group has
    assert plan.ranks() == {"job1-0": 1000, "job1-1": 999, "job2-0": 1000}
    assert {w.name for w in plan.unranked()} == {"job1-0", "job1-1", "job2-0"}


def test_a_worker_without_the_gpu_resource_or_a_pinned_gpu_takes_no_gpu_task():
    plan = ClusterPlan(
        [
            ClusterWorker("tcp://a:1", "pinned-no-resource", "a", 0, {}),
            ClusterWorker("tcp://a:2", "resource-no-pin", "a", None, GPU),
        ]
    )
    assert plan.gpus == [] and plan.slots_per_gpu == 0
    assert plan.cpu_task_resources == {}  # nobody offers CPU: CPU tasks may go anywhere
    assert plan.cpu_slots == 2
    with_cpu = ClusterPlan([*plan.workers, ClusterWorker("tcp://a:3", "cpu-w0", "a", None, {"CPU": 1})])
    assert with_cpu.cpu_slots == 1 and with_cpu.cpu_task_resources == {"CPU": 1}


def test_a_task_for_k_workers_per_gpu_fits_only_the_first_k_ranks():
    need = gpu_task_resources(2)["GPU_RANK"]
    assert [rank >= need for rank in (1000, 999, 998)] == [True, True, False]


def test_a_worker_that_ranked_itself_keeps_its_rank_and_a_clash_is_ranked_again():
    """A SLURM job's worker joins ranked and sized (trackset.cluster.gpu_worker): the run's look
    at its workers must leave it as it is, or its GPU tasks would wait for a new rank."""
    ranked = {"GPU": 1, "GPU_RANK": 999, "GPU_SHARE": 5}
    plan = ClusterPlan(
        [
            ClusterWorker("tls://n:1", "slurm-0-0", "n", 0, {"GPU": 1, "GPU_RANK": 1000, "GPU_SHARE": 10}, "U0"),
            ClusterWorker("tls://n:2", "slurm-0-1", "n", 0, ranked, "U0"),
            ClusterWorker("tls://n:3", "slurm-1-0", "n", 0, ranked, "U1"),  # a late job's, place 1
            ClusterWorker("tls://n:4", "slurm-1-1", "n", 0, ranked, "U1"),  # the same rank: a clash
        ]
    )
    assert plan.ranks() == {"slurm-0-0": 1000, "slurm-0-1": 999, "slurm-1-0": 999, "slurm-1-1": 1000}
    assert [w.name for w in plan.unranked()] == ["slurm-1-1"]
    assert plan.shares() == {key: shares for key, shares in zip(plan.by_gpu, [(10, 5), (5, 5)], strict=True)}
