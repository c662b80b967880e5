#!/usr/bin/env bash
# Deploy build-dataset/manual and build-dataset/nightly-refresh from this checkout.
#
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   export PREFECT_API_AUTH_STRING="$(cat ~/.config/trackset/prefect-auth)"   # the server's (server.sh)
#   deployments/deploy.sh
#
# Environment (defaults in brackets):
#   TRACKSET_NIGHTLY_CRON      cron of the nightly refresh ["0 2 * * *"]
#   TRACKSET_NIGHTLY_TIMEZONE  its IANA timezone ["UTC"]
#   TRACKSET_HEARTBEAT_S       seconds between a run's heartbeats [60, at least 30]
#   TRACKSET_HEARTBEAT_WINDOW_S  seconds without one before the run is marked Crashed [300]
#   PREFECT                    the prefect executable [.venv/bin/prefect, else prefect]
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
# The automation that marks runs whose heartbeat stopped as Crashed, replaced on every deploy
# so that a new window applies (deleting a missing one fails harmlessly).
automation="$(mktemp --suffix=.yaml)"
trap 'rm -f "$automation"' EXIT
sed "s/__WINDOW_S__/$window/g" deployments/crashed-without-heartbeat.yaml >"$automation"
name="$(sed -n 's/^name: "\(.*\)"$/\1/p' deployments/crashed-without-heartbeat.yaml)"
"$PREFECT" automation delete "$name" >/dev/null 2>&1 || true
"$PREFECT" automation create --from-file "$automation"
