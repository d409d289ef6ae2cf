#!/usr/bin/env bash
# A chaos run against the optimised agent: simulated PLCs, a real Mosquitto, fault proxies,
# broker restarts, agent kills and store damage, then the ledger of every sample.
#
# Usage: scripts/chaos.sh [edge-chaos options], e.g.
#   scripts/chaos.sh --duration 30m --seed 7 --out /tmp/chaos-30m
# See `target/release/edge-chaos --help` for every option. Exit status 1 means the ledger
# found a violation; 2 means the run itself could not be completed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto \
    || { echo "error: mosquitto is not installed (apt-get install mosquitto)" >&2; exit 2; }
cargo build --release --locked -p edge-agent -p edge-chaos
exec target/release/edge-chaos --agent target/release/edge-agent "$@"
