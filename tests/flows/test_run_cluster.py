"""A misshaped cluster fails at once, naming each worker and what is wrong with it (fast)."""

from __future__ import annotations

import pytest
from distributed.comm.core import CommClosedError

import trackset
from flows.run_cluster import RunCluster
from trackset.errors import ClusterShapeError
from trackset.settings import Settings
from trackset.worker_probe import describe_worker


def answer(**changes):
    return {"host": "h", "pid": 1, "gpu": 0, "version": trackset.__version__, "problems": [], **changes}


def test_a_sound_cluster_passes_and_a_worker_that_died_meanwhile_is_left_out():
    cluster = RunCluster(Settings(cluster={"scheduler_address": "tcp://scheduler:8786"}))
    workers = {"tcp://a:1": {"name": "gpu0-w0"}, "tcp://a:2": {"name": "gpu0-w1"}}
    cluster.check(workers, {"tcp://a:1": answer(), "tcp://a:2": CommClosedError("gone")})


def test_every_bad_worker_is_named_with_its_problem():
    cluster = RunCluster(Settings(cluster={"scheduler_address": "tcp://scheduler:8786"}))
    cluster.address = "tcp://scheduler:8786"
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
    assert lines[0].startswith("the cluster at tcp://scheduler:8786 cannot run this build")
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
