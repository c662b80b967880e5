#!/usr/bin/env bash
# The Prefect server of README "Run it with Prefect", with authentication: every API call
# and the UI must give the auth string in $TRACKSET_SECRETS/prefect-auth (trackset secrets
# makes it). Whoever reaches an open Prefect API runs code on the worker hosts: a deployment's
# pull steps are commands, and anyone can rewrite them (SECURITY.md).
#
#   deployments/server.sh [HOST] [PORT]     # defaults 127.0.0.1 4200; leave it running
#
# HTTPS: where $TRACKSET_SECRETS/api-tls holds the API's certificate (trackset secrets makes
# it, naming the hosts clients dial), the API and the UI are served over HTTPS only, so the
# auth string, every run's parameters and logs never cross the network in clear; clients
# trust api-tls/ca.pem (PREFECT_API_SSL_CERT_FILE) and use https://HOST:PORT/api. Without
# it, HTTP on a loopback HOST only: another HOST is refused unless
# TRACKSET_CLUSTER__TRUSTED_NETWORK=true says that nobody else can read its traffic (the
# variable of the setting cluster.trusted_network, which makes the same call for Dask).
#
# Environment (defaults in brackets):
#   TRACKSET_SECRETS  the folder of prefect-auth and api-tls/ [~/.config/trackset]
#   TRACKSET_PG_DIR   a DATA_DIR of deployments/postgres.sh: the server's database [Prefect's SQLite]
#   TRACKSET_CLUSTER__TRUSTED_NETWORK  true: plain HTTP on a HOST other than loopback [false]
#   PREFECT           the prefect executable, for HTTP [.venv/bin/prefect, else prefect]
#   PYTHON            the Python of trackset's venv, for HTTPS [.venv/bin/python, else python3]
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
api_tls="$secrets/api-tls"
if [ -z "${PREFECT:-}" ]; then
  if [ -x .venv/bin/prefect ]; then PREFECT=.venv/bin/prefect; else PREFECT=prefect; fi
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
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
if [ -e "$api_tls" ]; then
  for file in cert.pem key.pem; do
    if [ ! -f "$api_tls/$file" ]; then
      echo "server.sh: $api_tls has no $file: delete the folder and make a new set with: .venv/bin/trackset secrets $secrets --api-host NAME" >&2
      exit 2
    fi
  done
  mode="$(stat -c %a "$api_tls/key.pem")"
  if [ "${mode: -2}" != "00" ]; then
    echo "server.sh: $api_tls/key.pem is readable by other accounts (mode $mode): chmod 600 it" >&2
    exit 2
  fi
else
  case "$host" in
    127.* | ::1 | localhost) ;;
    *)
      trusted="${TRACKSET_CLUSTER__TRUSTED_NETWORK:-false}"
      if [ "${trusted,,}" != "true" ] && [ "$trusted" != "1" ]; then
        echo "server.sh: no $api_tls/cert.pem: on $host the auth string would cross the network in clear; make it with .venv/bin/trackset secrets $secrets --api-host NAME, or set TRACKSET_CLUSTER__TRUSTED_NETWORK=true on a network only your hosts see" >&2
        exit 2
      fi
      ;;
  esac
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
if [ ! -e "$api_tls" ]; then
  exec "$PREFECT" server start --host "$host" --port "$port" --analytics-off
fi
# `prefect server start` has no TLS options; what it runs is uvicorn with Prefect's app
# factory (`prefect server start --background` runs this very command), and uvicorn serves
# TLS. The factory does what `prefect server start` does: the database migrations, then
# every enabled service (scheduler, triggers and actions of automations, late runs, ...).
# Left out: PREFECT__SERVER_FINAL, a private variable whose only effect (a memory saving)
# does not apply to the FastAPI trackset allows (>= 0.139). The UI's browser asks the API
# at /api of the address it loaded the UI from (https://HOST:PORT, or an SSH tunnel's).
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-/api}"
level="${PREFECT_SERVER_LOGGING_LEVEL:-WARNING}"
echo "server.sh: the Prefect API on https://$host:$port/api, with $api_tls/cert.pem; clients: PREFECT_API_SSL_CERT_FILE=$api_tls/ca.pem" >&2
exec "$PYTHON" -m uvicorn --factory prefect.server.api.server:create_app --host "$host" --port "$port" \
  --ssl-certfile "$api_tls/cert.pem" --ssl-keyfile "$api_tls/key.pem" --log-level "${level,,}"
