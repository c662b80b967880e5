"""One build per dataset: the lock refuses a second holder at once and survives its holder's death."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys

import pytest

from trackset.dataset.lock import LOCK_NAME, DatasetBusyError, DatasetLock


def test_a_second_holder_fails_at_once_naming_the_first(tmp_path):
    with DatasetLock(tmp_path, flow_run_id="first-run"):
        with pytest.raises(DatasetBusyError) as caught:
            DatasetLock(tmp_path, flow_run_id="second-run").acquire()
    message = str(caught.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}, flow run first-run" in message
    assert caught.value.holder is not None and caught.value.holder.flow_run_id == "first-run"
    DatasetLock(tmp_path, flow_run_id="third-run").acquire()  # free again after release


def test_another_process_holding_the_lock_is_named(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from trackset.dataset.lock import DatasetLock; "
        f"lock = DatasetLock(Path({str(tmp_path)!r}), flow_run_id='other'); lock.acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DatasetBusyError, match=rf"pid {holder.pid}, flow run other"):
            DatasetLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)  # a killed run: the kernel drops its flock
        holder.wait()
        with DatasetLock(tmp_path, flow_run_id="next") as lock:
            assert json.loads(lock.path.read_text())["flow_run_id"] == "next"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_holder_record_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = multiprocessing.get_context("spawn").Process(target=int)
    dead.start()
    dead.join()  # a pid that no longer runs
    record = {"host": socket.gethostname(), "pid": dead.pid, "flow_run_id": "killed", "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with caplog.at_level("WARNING"), DatasetLock(tmp_path, flow_run_id="new"):
        pass
    assert f"left by host {socket.gethostname()}, pid {dead.pid}, flow run killed" in caplog.text
    assert "no longer running" in caplog.text
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: nothing to take over next time


def test_the_run_that_takes_over_a_dead_holders_lock_knows_whose_build_it_resumes(tmp_path):
    record = {"host": "gpu1", "pid": 4242, "flow_run_id": "crashed-run", "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with DatasetLock(tmp_path, flow_run_id="rerun") as lock:
        assert lock.previous is not None and lock.previous.flow_run_id == "crashed-run"
    with DatasetLock(tmp_path, flow_run_id="later") as lock:
        assert lock.previous is None  # the rerun released it: nothing left unfinished


def test_a_probe_refuses_a_held_dataset_and_leaves_a_dead_holders_record_to_the_run(tmp_path):
    DatasetLock.probe(tmp_path)  # no lock file yet: free
    with DatasetLock(tmp_path, flow_run_id="first"), pytest.raises(DatasetBusyError, match="flow run first"):
        DatasetLock.probe(tmp_path)
    record = {"host": "gpu1", "pid": 4242, "flow_run_id": "crashed-run", "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    DatasetLock.probe(tmp_path)
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == record
    with DatasetLock(tmp_path, flow_run_id="rerun") as lock:
        assert lock.previous is not None and lock.previous.flow_run_id == "crashed-run"
