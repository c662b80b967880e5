#!/usr/bin/env bash
# The Prefect server of README "Run it with Prefect", with authentication: every API call
# and the UI must give the auth string in $TRACKSET_SECRETS/prefect-auth (trackset secrets
# makes it). Whoever reaches an open Prefect API runs code on the worker hosts: a deployment's
# pull steps are commands, and anyone can rewrite them (SECURITY.md).
#
#   deployments/server.sh [HOST] [PORT]     # defaults 127.0.0.1 4200; leave it running
#
# Environment (defaults in brackets):
#   TRACKSET_SECRETS  the folder of prefect-auth [~/.config/trackset]
#   TRACKSET_PG_DIR   a DATA_DIR of deployments/postgres.sh: the server's database [Prefect's SQLite]
#   PREFECT           the prefect executable [.venv/bin/prefect, else prefect]
#
# The auth string and the database's password reach this process only, read from their 0600
# files here: never a command line, a shell history or the environment of the shell that
# runs flows and workers (their processes would pass it on to every flow run).
set -euo pipefail
cd "$(dirname "$0")/.."
host="${1:-127.0.0.1}"
port="${2:-4200}"
secrets="${TRACKSET_SECRETS:-$HOME/.config/trackset}"
auth_file="$secrets/prefect-auth"
if [ -z "${PREFECT:-}" ]; then
  if [ -x .venv/bin/prefect ]; then PREFECT=.venv/bin/prefect; else PREFECT=prefect; fi
fi

if [ ! -f "$auth_file" ]; then
  echo "server.sh: no $auth_file; make it once with: .venv/bin/trackset secrets $secrets" >&2
  exit 2
fi
mode="$(stat -c %a "$auth_file")"
if [ "${mode: -2}" != "00" ]; then
  echo "server.sh: $auth_file is readable by other accounts (mode $mode): chmod 600 it" >&2
  exit 2
fi
PREFECT_SERVER_API_AUTH_STRING="$(cat "$auth_file")"
export PREFECT_SERVER_API_AUTH_STRING
# The UI asks the API on this port (otherwise "Unable to connect to Prefect server").
export PREFECT_SERVER_API_PORT="$port"
if [ -n "${TRACKSET_PG_DIR:-}" ]; then
  PREFECT_API_DATABASE_CONNECTION_URL="$(deployments/postgres.sh url "$TRACKSET_PG_DIR")"
  export PREFECT_API_DATABASE_CONNECTION_URL
  # asyncpg reads the password from here (and refuses the file if others can read it).
  export PGPASSFILE="$(realpath "$TRACKSET_PG_DIR")/pgpass"
fi
exec "$PREFECT" server start --host "$host" --port "$port" --analytics-off
