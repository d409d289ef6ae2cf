#!/usr/bin/env bash
# The project's test command: formatting, lints and every test of the workspace, including
# the integration tests, which run real Mosquitto brokers of their own (never port 1883).
# Installs what the tests need when it is missing and the machine allows it (Mosquitto for the
# broker tests; RabbitMQ for the broker cluster test; Chromium and chromedriver for the
# console's browser tests); never skips tests.
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

# Installs Debian packages with the given command prefix (empty, or `sudo -n`). A package's own
# service may fail to start (Mosquitto's port 1883 taken, no init system): that leaves the
# package half-configured but the binary in place, and the tests start their own brokers.
apt_install() {
    local prefix=()
    while [ "$1" != "--" ]; do prefix+=("$1"); shift; done
    shift
    "${prefix[@]}" apt-get update -qq
    if ! "${prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; then
        printf 'warning: apt-get reported an error installing %s (often a service failing to start); continuing if the binaries are there\n' "$*" >&2
    fi
}

# Installs `packages` unless `check` succeeds; fails saying what to install when it cannot.
need() {
    local what="$1" check="$2"; shift 2
    if eval "$check"; then
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        die "$what is not installed and apt-get is not available: install it ($*), then run scripts/test.sh again"
    elif [ "$(id -u)" -eq 0 ]; then
        apt_install -- "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        apt_install sudo -n -- "$@"
    else
        die "$what is not installed and this user cannot install packages: run \`sudo apt-get install $*\`, then run scripts/test.sh again"
    fi
    eval "$check" || die "installing $* did not provide $what: run \`apt-get install $*\` and check its output"
}

step "mosquitto (needed by the integration tests)"
need "the Mosquitto broker" have_mosquitto mosquitto
if command -v mosquitto >/dev/null 2>&1; then
    echo "using $(command -v mosquitto)"
else
    echo "using /usr/sbin/mosquitto"
fi

step "rabbitmq-server (needed by the broker cluster test)"
have_rabbitmq() {
    test -x /usr/sbin/rabbitmq-server && test -x /usr/sbin/rabbitmqctl
}
need "RabbitMQ" have_rabbitmq rabbitmq-server
echo "using /usr/sbin/rabbitmq-server (the test starts a cluster of its own on free ports)"

step "chromium and chromedriver (needed by the console's browser tests)"
have_browser() {
    test -x "${CHROMIUM:-/usr/bin/chromium}" && test -x "${CHROMEDRIVER:-/usr/bin/chromedriver}"
}
need "headless Chromium with chromedriver" have_browser chromium chromium-driver
echo "using ${CHROMIUM:-/usr/bin/chromium} and ${CHROMEDRIVER:-/usr/bin/chromedriver}"

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
