#!/usr/bin/env bash
# Deploy build-dataset/manual and build-dataset/nightly-refresh from this checkout.
#
#   PREFECT_API_URL=http://127.0.0.1:4200/api deployments/deploy.sh
#
# Environment (defaults in brackets):
#   TRACKSET_NIGHTLY_CRON      cron of the nightly refresh ["0 2 * * *"]
#   TRACKSET_NIGHTLY_TIMEZONE  its IANA timezone ["UTC"]
#   PREFECT                    the prefect executable [.venv/bin/prefect, else prefect]
set -euo pipefail
cd "$(dirname "$0")/.."
export TRACKSET_REPO="$PWD"
export TRACKSET_NIGHTLY_CRON="${TRACKSET_NIGHTLY_CRON:-0 2 * * *}"
export TRACKSET_NIGHTLY_TIMEZONE="${TRACKSET_NIGHTLY_TIMEZONE:-UTC}"
if [ -z "${PREFECT:-}" ]; then
  if [ -x .venv/bin/prefect ]; then PREFECT=.venv/bin/prefect; else PREFECT=prefect; fi
fi
"$PREFECT" work-pool inspect trackset >/dev/null 2>&1 || "$PREFECT" work-pool create trackset --type process
"$PREFECT" --no-prompt deploy --prefect-file deployments/prefect.yaml --all
