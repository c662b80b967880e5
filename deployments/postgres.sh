#!/usr/bin/env bash
# A PostgreSQL database for the Prefect server: SQLite (Prefect's default) locks under the
# write load of a large build ("database is locked" at a few hundred videos) and grows by
# ~31 kB per task run. Uses Debian's postgresql package (installed if missing, as root).
#
#   deployments/postgres.sh start [DATA_DIR] [PORT]   # initialise on first use, start, print the URL
#   deployments/postgres.sh stop  [DATA_DIR]
#
# Then start the server against it (README, "A production server"):
#   PREFECT_API_DATABASE_CONNECTION_URL="$(deployments/postgres.sh url [PORT])" \
#       .venv/bin/prefect server start --host 127.0.0.1 --port 4200 --analytics-off
set -euo pipefail

command="${1:-start}"
data_dir="$(realpath -m "${2:-${TRACKSET_PG_DATA:-.prefect-postgres}}")"
port="${3:-${TRACKSET_PG_PORT:-5433}}"
user=postgres
database=prefect

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

# PostgreSQL refuses to run as root: as root, run it as the package's postgres user.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

url() {
  local owner
  owner="$(if [ "$(id -u)" -eq 0 ]; then echo "$user"; else id -un; fi)"
  echo "postgresql+asyncpg://${owner}@127.0.0.1:${port}/${database}"
}

case "$command" in
  start)
    bin="$(bin_dir)"
    if [ ! -f "$data_dir/PG_VERSION" ]; then
      mkdir -p "$data_dir"
      if [ "$(id -u)" -eq 0 ]; then chown "$user" "$data_dir"; fi
      as_owner "$bin/initdb" -D "$data_dir" --auth=trust --username="$(if [ "$(id -u)" -eq 0 ]; then echo "$user"; else id -un; fi)" >/dev/null
    fi
    if ! as_owner "$bin/pg_ctl" -D "$data_dir" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$data_dir" -l "$data_dir/server.log" -w \
        -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
    fi
    if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='$database'" | grep -q 1; then
      as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" "$database"
    fi
    url
    ;;
  stop)
    as_owner "$(bin_dir)/pg_ctl" -D "$data_dir" -m fast stop >/dev/null
    ;;
  url)
    port="${2:-$port}"
    url
    ;;
  *)
    echo "usage: $0 start|stop|url [DATA_DIR] [PORT]" >&2
    exit 2
    ;;
esac
