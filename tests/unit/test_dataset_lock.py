"""One build per dataset and one dataset per work directory: the locks refuse a second holder at once
and survive their holder's death."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys

import pytest

from trackset.dataset.lock import (
    LAST_DATASET_NAME,
    LOCK_NAME,
    WORK_LOCK_NAME,
    DatasetBusyError,
    DatasetLock,
    DirectoryBusyError,
    WorkDirBusyError,
)


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


def test_a_second_dataset_on_a_held_work_directory_fails_at_once_naming_the_holder(tmp_path):
    work = tmp_path / "work"
    with DatasetLock(tmp_path / "nightly", flow_run_id="nightly-run", work_dir=work):
        with pytest.raises(WorkDirBusyError) as caught:
            DatasetLock(tmp_path / "manual", flow_run_id="manual-run", work_dir=work).acquire()
        # The second run's dataset is free again: nothing of it stays held.
        DatasetLock(tmp_path / "manual").acquire()
    message = str(caught.value)
    assert message.startswith(f"work directory {work} is in use by another run (host {socket.gethostname()}, ")
    assert (
        f"pid {os.getpid()}, flow run nightly-run" in message and f"building dataset {tmp_path / 'nightly'}" in message
    )
    assert isinstance(caught.value, DirectoryBusyError) and not isinstance(caught.value, DatasetBusyError)
    assert pickle.loads(pickle.dumps(caught.value)).holder == caught.value.holder  # crosses process borders
    DatasetLock(tmp_path / "manual", work_dir=work).acquire()  # free after release


def test_a_dataset_may_be_its_own_work_directory(tmp_path):
    with DatasetLock(tmp_path, work_dir=tmp_path) as lock:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LAST_DATASET_NAME, LOCK_NAME, WORK_LOCK_NAME])
        assert json.loads((tmp_path / WORK_LOCK_NAME).read_text())["pid"] == os.getpid()
    assert lock.path.read_text() == ""


def test_a_work_directory_taken_over_by_another_dataset_says_so(tmp_path, caplog):
    work = tmp_path / "work"
    with DatasetLock(tmp_path / "a", work_dir=work):
        pass
    with caplog.at_level("WARNING"):
        with DatasetLock(tmp_path / "a", work_dir=work):
            pass
        assert caplog.text == ""
        with DatasetLock(tmp_path / "b", work_dir=work):
            pass
    assert f"work directory {work} last worked for dataset {tmp_path / 'a'}" in caplog.text
    assert (work / LAST_DATASET_NAME).read_text().strip() == str(tmp_path / "b")


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


def test_a_probe_names_the_run_that_holds_the_work_directory(tmp_path):
    DatasetLock.probe(tmp_path / "manual", work_dir=tmp_path / "work")  # nothing there yet: free
    with DatasetLock(tmp_path / "nightly", flow_run_id="nightly-run", work_dir=tmp_path / "work"):
        with pytest.raises(WorkDirBusyError, match="flow run nightly-run"):
            DatasetLock.probe(tmp_path / "manual", work_dir=tmp_path / "work")
    assert not (tmp_path / "manual").exists()  # a probe creates nothing
