"""``deployments/postgres.sh``: a database nobody else on the machine gets into, under a Prefect server.

Tried as another user would: the superuser over TCP without a password, another OS account
on the Unix socket, and Prefect's own role running ``COPY ... TO PROGRAM``. Then the Prefect
server of ``deployments/server.sh`` runs on it. Needs Debian's postgresql and root (to act as
another account): without them it skips, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import (
    PREFECT,
    REPO,
    TRACKSET,
    clean_environ,
    free_port,
    start_in_own_session,
    stop_process_group,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow

POSTGRES_SH = REPO / "deployments" / "postgres.sh"
OTHER_ACCOUNT = "nobody"


def missing_tools() -> str | None:
    """Why the test cannot run here, or None."""
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        return "PostgreSQL is not installed (apt-get install -y postgresql)"
    if os.geteuid() != 0:
        return "needs root, to act as another account"
    if not shutil.which("psql"):
        return "psql not found (apt-get install -y postgresql-client)"
    return None


@pytest.fixture(scope="module")
def database() -> Iterator[tuple[Path, int]]:
    """``postgres.sh start`` in a folder the postgres account can reach; stopped and removed after."""
    reason = missing_tools()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the postgres test needs {reason}")
        pytest.skip(reason)
    # pytest's own folders are 0700: the postgres account could not pass through them.
    root = Path(tempfile.mkdtemp(prefix="trackset-pg-", dir="/var/tmp"))
    root.chmod(0o711)
    data_dir, port = root / "db", free_port()
    try:
        started = subprocess.run(
            [str(POSTGRES_SH), "start", str(data_dir), str(port)], capture_output=True, text=True, timeout=180
        )
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
        yield data_dir, port
    finally:
        subprocess.run([str(POSTGRES_SH), "stop", str(data_dir)], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def psql(*args: str, account: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``psql -X -w ARGS`` (never prompting for a password), as ``account`` if given."""
    command = ["psql", "-X", "-w", *args]
    if account is not None:
        command = ["runuser", "-u", account, "--", *command]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | env
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment, cwd="/")


def test_the_superuser_cannot_log_in_over_tcp(database):
    data_dir, port = database
    for account in (None, OTHER_ACCOUNT):
        refused = psql("-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "SELECT 1", account=account)
        assert refused.returncode != 0
        assert "no password supplied" in refused.stderr
    guessed = psql("-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "SELECT 1", PGPASSWORD="postgres")
    assert guessed.returncode != 0 and "password authentication failed" in guessed.stderr
    hba = (data_dir / "pgdata" / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules == [["local", "all", "all", "peer"], ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"]]


def test_another_account_cannot_use_the_socket(database):
    data_dir, port = database
    socket_dir = data_dir / "run"
    assert (socket_dir / f".s.PGSQL.{port}").exists()
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    refused = psql("-h", str(socket_dir), "-p", str(port), "-U", "postgres", "-c", "SELECT 1", account=OTHER_ACCOUNT)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    # The database's own account gets in over it, as itself (what `postgres.sh psql` does).
    owner = subprocess.run(
        [str(POSTGRES_SH), "psql", str(data_dir), "-tAc", "SELECT current_user"], capture_output=True, text=True
    )
    assert owner.returncode == 0 and owner.stdout.strip() == "postgres", owner.stderr


def test_prefects_role_owns_its_database_and_cannot_run_programs(database):
    data_dir, port = database
    passfile = data_dir / "pgpass"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    tcp = ("-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "-d", "prefect")
    anonymous = psql(*tcp, "-c", "SELECT 1")
    assert anonymous.returncode != 0 and "no password supplied" in anonymous.stderr
    facts = psql(*tcp, "-tAc", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user", PGPASSFILE=str(passfile))
    assert facts.returncode == 0 and facts.stdout.strip() == "f", facts.stderr
    owner = psql(
        *tcp,
        "-tAc",
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'prefect'",
        PGPASSFILE=str(passfile),
    )
    assert owner.stdout.strip() == "prefect"
    mark = data_dir.parent / "ran"
    program = psql(*tcp, "-c", f"COPY (SELECT 1) TO PROGRAM 'touch {mark}'", PGPASSFILE=str(passfile))
    assert program.returncode != 0 and "must be superuser" in program.stderr
    assert not mark.exists()


def test_the_prefect_server_runs_on_it(database, tmp_path):
    data_dir, _ = database
    secrets = tmp_path / "secrets"
    subprocess.run([str(TRACKSET), "secrets", str(secrets)], check=True, capture_output=True, timeout=60)
    auth = (secrets / "prefect-auth").read_text().strip()
    port = free_port()
    api_url = f"https://127.0.0.1:{port}/api"  # server.sh serves the certificate trackset secrets made
    trusted = ssl.create_default_context(cafile=secrets / "api-tls" / "ca.pem")
    env = clean_environ() | {
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_UI_STATIC_DIRECTORY": str(tmp_path / "ui"),
        "TRACKSET_SECRETS": str(secrets),
        "TRACKSET_PG_DIR": str(data_dir),
        "PREFECT": str(PREFECT),
        "PYTHON": sys.executable,
    }
    log = tmp_path / "server.log"
    process = start_in_own_session([str(REPO / "deployments" / "server.sh"), "127.0.0.1", str(port)], env, log)
    try:
        wait_until_healthy(process, api_url, log, timeout_s=180, context=trusted)
        request = urllib.request.Request(
            f"{api_url}/flows/",
            data=b'{"name": "stored-in-postgres"}',
            headers={"Content-Type": "application/json", "Authorization": f"Basic {b64encode(auth.encode()).decode()}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60, context=trusted) as response:
            assert response.status in (200, 201)
    finally:
        stop_process_group(process)
    stored = subprocess.run(
        [str(POSTGRES_SH), "psql", str(data_dir), "-tAc", "SELECT name FROM flow"], capture_output=True, text=True
    )
    assert "stored-in-postgres" in stored.stdout.split(), stored.stderr
    assert not (tmp_path / "home" / "prefect.db").exists()  # not Prefect's SQLite
