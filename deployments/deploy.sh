#!/usr/bin/env bash
# Deploy build-dataset/manual and build-dataset/nightly-refresh from this checkout.
#
#   export PREFECT_API_URL=https://127.0.0.1:4200/api                       # server.sh's, over HTTPS
#   export PREFECT_API_SSL_CERT_FILE=~/.config/trackset/api-tls/ca.pem      # what the CLI trusts
#   export PREFECT_API_AUTH_STRING="$(cat ~/.config/trackset/prefect-auth)"   # the server's (server.sh)
#   deployments/deploy.sh
#
# Everything below talks to the server through Prefect's clients (the CLI, trackset's
# automations module), which read these three variables.
#
# Environment (defaults in brackets):
#   TRACKSET_NIGHTLY_CRON      cron of the nightly refresh ["0 2 * * *"]
#   TRACKSET_NIGHTLY_TIMEZONE  its IANA timezone ["UTC"]
#   TRACKSET_HEARTBEAT_S       seconds between a run's heartbeats [60, at least 30]
#   TRACKSET_HEARTBEAT_WINDOW_S  seconds without one before the run is marked Crashed [300]
#   TRACKSET_NOTIFY_BLOCK      notification block for failed, crashed and partly failed runs,
#                              <block type>/<name> [custom-webhook/trackset-alerts]
#   TRACKSET_NOTIFY_URL_FILE   a file only you can read holding a webhook URL: makes that block []
#   PREFECT                    the prefect executable [.venv/bin/prefect, else prefect]
#   PYTHON                     the Python of trackset's venv [.venv/bin/python, else python3]
set -euo pipefail
cd "$(dirname "$0")/.."
export TRACKSET_REPO="$PWD"
export TRACKSET_NIGHTLY_CRON="${TRACKSET_NIGHTLY_CRON:-0 2 * * *}"
export TRACKSET_NIGHTLY_TIMEZONE="${TRACKSET_NIGHTLY_TIMEZONE:-UTC}"
export TRACKSET_HEARTBEAT_S="${TRACKSET_HEARTBEAT_S:-60}"
window="${TRACKSET_HEARTBEAT_WINDOW_S:-300}"
if [ -z "${PREFECT:-}" ]; then
  if [ -x .venv/bin/prefect ]; then PREFECT=.venv/bin/prefect; else PREFECT=prefect; fi
fi
"$PREFECT" work-pool inspect trackset >/dev/null 2>&1 || "$PREFECT" work-pool create trackset --type process
"$PREFECT" --no-prompt deploy --prefect-file deployments/prefect.yaml --all
# The automations (trackset/flows/automations.py), replaced on every deploy so that a new
# window, block or deployment applies: runs whose heartbeat stopped are marked Crashed, failed,
# crashed and partly failed runs are notified, a crashed nightly refresh is rerun once.
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
notify=(--notify-block "${TRACKSET_NOTIFY_BLOCK:-custom-webhook/trackset-alerts}")
if [ -n "${TRACKSET_NOTIFY_URL_FILE:-}" ]; then notify+=(--notify-url-file "$TRACKSET_NOTIFY_URL_FILE"); fi
"$PYTHON" -m trackset.flows.automations --heartbeat-window-s "$window" "${notify[@]}"
