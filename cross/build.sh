#!/usr/bin/env bash
# Builds edge-agent for arm64 and armhf gateways on a Debian/Ubuntu machine: installs the cross
# linkers and qemu-user (apt) and the Rust targets (rustup), builds both targets with the
# `packaging` profile (the production binary only, size-optimised and stripped; no demo),
# runs the unit tests of every crate under qemu, builds the .deb packages (cargo-deb) and
# reports the stripped binary sizes. The integration tests need Mosquitto and real sockets
# and run natively (scripts/test.sh).
#
# Usage: cross/build.sh [--no-install]
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
CONFIG=(--config cross/config.toml)
# Library crates plus the agent's own unit tests; `tests/integration` stays native.
TEST_ARGS=(--workspace --lib)

step() { printf '\n==> %s\n' "$*"; }

if [ "${1:-}" != "--no-install" ]; then
    step "cross linkers and qemu-user (apt)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
        gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
        qemu-user binutils-aarch64-linux-gnu binutils-arm-linux-gnueabihf
    step "rust targets"
    rustup target add "${TARGETS[@]}"
    if ! cargo deb --version >/dev/null 2>&1; then
        step "cargo-deb"
        cargo install cargo-deb --version '^3.8' --locked
    fi
fi

for t in "${TARGETS[@]}"; do
    step "build $t (packaging profile)"
    cargo "${CONFIG[@]}" build --profile packaging --locked --target "$t" -p edge-agent
    step "unit tests of every crate under qemu ($t)"
    cargo "${CONFIG[@]}" test --locked --target "$t" "${TEST_ARGS[@]}" 2>&1 | tee "target/cross-test-$t.log"
    step "package $t"
    cargo "${CONFIG[@]}" deb --no-build --profile packaging --target "$t" -p edge-agent
done

step "stripped binary sizes and test counts"
for t in "${TARGETS[@]}"; do
    bin="target/$t/packaging/edge-agent"
    passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "target/cross-test-$t.log" | awk '{s += $4} END {print s + 0}')
    printf '%-34s %8s bytes  %s unit tests passed under qemu\n' "$t" "$(stat -c %s "$bin")" "$passed"
done
ls -l target/*/debian/*.deb
