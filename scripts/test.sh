#!/usr/bin/env bash
# The project's test command: formatting, lints and every test of the workspace, including
# the integration tests, which run real Mosquitto brokers of their own (never port 1883).
# Installs Mosquitto when it is missing and the machine allows it; never skips tests.
#
# Ends with a short chaos run (edge-chaos, two minutes of faults; scripts/chaos.sh runs longer ones) whose ledger it prints.
#
# Usage: scripts/test.sh [extra arguments for `cargo test`, e.g. -- --nocapture]
# CHAOS_SEED and CHAOS_DURATION change the chaos run (defaults 1 and 2m).
set -euo pipefail

cd "$(dirname "$0")/.."

step() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto
}

# Installs the mosquitto package with the given command prefix (empty, or `sudo -n`). The
# package's own service may fail to start (port 1883 taken, no init system): that leaves the
# package half-configured but the binary in place, and the tests start their own brokers.
install_mosquitto() {
    "$@" apt-get update -qq
    if ! "$@" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; then
        printf 'warning: apt-get reported an error installing mosquitto (often its service failing to start); continuing if the binary is there\n' >&2
    fi
}

step "mosquitto (needed by the integration tests)"
if ! have_mosquitto; then
    if ! command -v apt-get >/dev/null 2>&1; then
        die "mosquitto is not installed and apt-get is not available: install the Mosquitto MQTT broker so that \`mosquitto\` is on PATH or at /usr/sbin/mosquitto, then run scripts/test.sh again"
    elif [ "$(id -u)" -eq 0 ]; then
        install_mosquitto
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        install_mosquitto sudo -n
    else
        die "mosquitto is not installed and this user cannot install packages: run \`sudo apt-get install mosquitto\`, then run scripts/test.sh again"
    fi
    have_mosquitto || die "installing the mosquitto package did not provide a mosquitto binary: run \`apt-get install mosquitto\` and check its output"
fi
if command -v mosquitto >/dev/null 2>&1; then
    echo "using $(command -v mosquitto)"
else
    echo "using /usr/sbin/mosquitto"
fi

cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing: run \`rustup component add rustfmt\`"
cargo clippy --version >/dev/null 2>&1 || die "clippy is missing: run \`rustup component add clippy\`"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace --locked $*"
cargo test --workspace --locked "$@"

step "chaos run (debug build): ${CHAOS_DURATION:-2m} of faults, seed ${CHAOS_SEED:-1}"
cargo build --locked -p edge-agent -p edge-chaos
target/debug/edge-chaos --duration "${CHAOS_DURATION:-2m}" --seed "${CHAOS_SEED:-1}" \
    --agent target/debug/edge-agent

step "all checks passed"
