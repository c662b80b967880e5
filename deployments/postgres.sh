#!/usr/bin/env bash
# A PostgreSQL database for the Prefect server: SQLite (Prefect's default) locks under the
# write load of a large build ("database is locked" at a few hundred videos) and grows by
# ~31 kB per task run. Uses Debian's postgresql package (installed if missing, as root).
#
#   deployments/postgres.sh start DATA_DIR [PORT]   # initialise on first use, start, print the URL
#   deployments/postgres.sh stop  DATA_DIR
#   deployments/postgres.sh url   DATA_DIR          # the URL again (it holds no password)
#   deployments/postgres.sh psql  DATA_DIR [ARGS]   # psql as the superuser, over the private socket
#
# Then start the server on it (README, "A production server"):
#   TRACKSET_PG_DIR=DATA_DIR deployments/server.sh
#
# Nobody else on the machine gets in (SECURITY.md):
# - TCP (127.0.0.1 only) takes passwords, checked with scram-sha-256; the superuser has none,
#   so it cannot log in over TCP at all.
# - The Unix socket lives in DATA_DIR/run (0700), not /tmp: only the account that runs the
#   database reaches it, and it logs in as the role of its own name (peer).
# - Prefect's database is owned by the role prefect, which is not a superuser: a leaked
#   password gives Prefect's tables, not COPY ... TO PROGRAM (a shell as the database's account).
# - That password is random and sits in DATA_DIR/pgpass (0600, the libpq password-file format
#   asyncpg reads through PGPASSFILE): it is never in a URL, a command line or a setting.
#
# As root, the database runs as the package's postgres account and DATA_DIR must let it pass
# (the folders above it too); otherwise it runs as you.
set -euo pipefail

command="${1:-}"
if [ -z "${2:-}" ]; then
  echo "usage: $0 start|stop|url|psql DATA_DIR [PORT | PSQL ARGS]" >&2
  exit 2
fi
data_dir="$(realpath -m "$2")"
pg_data="$data_dir/pgdata"
socket_dir="$data_dir/run"
passfile="$data_dir/pgpass"
role=prefect
database=prefect

if [ "$(id -u)" -eq 0 ]; then owner=postgres; else owner="$(id -un)"; fi

bin_dir() {
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "postgres.sh: PostgreSQL is not installed; as root: apt-get install -y postgresql" >&2
      exit 2
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)"
}

# PostgreSQL refuses to run as root: as root, run it as the package's postgres account.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$owner" -- "$@"; else "$@"; fi
}

port_of() {
  sed -n "s/^port = \([0-9]*\)$/\1/p" "$pg_data/postgresql.conf" 2>/dev/null | tail -1
}

url() {
  echo "postgresql+asyncpg://${role}@127.0.0.1:$(port_of)/${database}"
}

# The superuser's psql over the private socket (peer: the OS account is the role).
superuser_psql() {
  as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$socket_dir" -p "$(port_of)" "$@"
}

initialise() {
  local port="$1"
  # Private from the first byte: the folder, the socket folder and the password file.
  (umask 077 && mkdir -p "$data_dir" "$pg_data" "$socket_dir")
  if [ "$(id -u)" -eq 0 ]; then
    chmod 711 "$data_dir"  # the postgres account passes through; nobody lists it
    chown "$owner" "$pg_data" "$socket_dir"
    if ! runuser -u "$owner" -- test -x "$data_dir"; then
      echo "postgres.sh: the $owner account cannot reach $data_dir: a folder above it is closed (chmod o+x it)" >&2
      exit 2
    fi
  fi
  as_owner "$bin/initdb" -D "$pg_data" --username="$owner" --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 >/dev/null
  as_owner tee "$pg_data/pg_hba.conf" >/dev/null <<EOF
# Written by trackset's deployments/postgres.sh (SECURITY.md). No trust, no other address.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 peer
host    all       all   127.0.0.1/32  scram-sha-256
EOF
  as_owner tee -a "$pg_data/postgresql.conf" >/dev/null <<EOF

# trackset (deployments/postgres.sh): this machine only, a private socket, scram passwords.
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$socket_dir'
unix_socket_permissions = 0700
password_encryption = scram-sha-256
EOF
}

# The role prefect with a new random password, its database, and the password file (again
# after a start that stopped half-way: a new password replaces the old).
create_database() {
  local password
  password="$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  # Through stdin, never a command line that `ps` shows to every account.
  superuser_psql -d postgres <<EOF
SELECT 'CREATE ROLE $role' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') \gexec
ALTER ROLE $role LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '$password';
SELECT 'CREATE DATABASE $database OWNER $role' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database') \gexec
EOF
  # Prefect's migrations create pg_trgm; made here, its creation needs no superuser later.
  superuser_psql -d "$database" -c "CREATE EXTENSION IF NOT EXISTS pg_trgm"
  local temporary="$passfile.$$.tmp"
  (umask 077 && printf '127.0.0.1:%s:%s:%s:%s\n' "$(port_of)" "$database" "$role" "$password" >"$temporary")
  mv "$temporary" "$passfile"
}

case "$command" in
  start)
    bin="$(bin_dir)"
    if [ ! -f "$pg_data/PG_VERSION" ]; then
      initialise "${3:-${TRACKSET_PG_PORT:-5433}}"
    elif [ -n "${3:-}" ] && [ "$3" != "$(port_of)" ]; then
      echo "postgres.sh: $data_dir listens on port $(port_of), not $3" >&2
      exit 2
    fi
    if grep -Eq '^[^#]*[[:space:]]trust([[:space:]]|$)' "$pg_data/pg_hba.conf"; then
      echo "postgres.sh: $pg_data trusts every local account (made by an earlier postgres.sh); dump it" \
        "(pg_dump) and start a new DATA_DIR" >&2
      exit 2
    fi
    if ! as_owner "$bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w start >/dev/null
    fi
    if [ ! -f "$passfile" ]; then
      create_database
    fi
    url
    ;;
  stop)
    as_owner "$(bin_dir)/pg_ctl" -D "$pg_data" -m fast stop >/dev/null
    ;;
  url)
    url
    ;;
  psql)
    bin="$(bin_dir)"
    shift 2
    superuser_psql -d "$database" "$@"
    ;;
  *)
    echo "usage: $0 start|stop|url|psql DATA_DIR [PORT | PSQL ARGS]" >&2
    exit 2
    ;;
esac
