#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ one after another: scripts/fuzz.sh [SECONDS] [TARGET...]
# (default 600 s each, every target). Prints per target the executions and whether a crash
# was found; exits non-zero if any target crashed (the input is kept in fuzz/artifacts/).
# Needs the nightly toolchain and cargo-fuzz. Set FUZZ_NICE (default 10) to change priority
# and FUZZ_JOBS (default 2) for the build.
set -uo pipefail

cd "$(dirname "$0")/.."

ALL_TARGETS=(config modbus_response mqtt_command store_record)

seconds=600
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=("${ALL_TARGETS[@]}")
fi
for t in "${targets[@]}"; do
    if [[ ! -f fuzz/fuzz_targets/$t.rs ]]; then
        echo "fuzz.sh: unknown target '$t'; targets: ${ALL_TARGETS[*]}" >&2
        exit 2
    fi
done

missing=0
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is not installed; install it with:" >&2
    echo "    rustup toolchain install nightly" >&2
    missing=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed; install it with:" >&2
    echo "    cargo install cargo-fuzz --locked" >&2
    missing=1
fi
if [[ $missing -ne 0 ]]; then
    exit 2
fi

export CARGO_BUILD_JOBS=${FUZZ_JOBS:-2}
nice_level=${FUZZ_NICE:-10}

echo "building the fuzz targets..."
if ! nice -n "$nice_level" cargo +nightly fuzz build; then
    echo "fuzz.sh: the fuzz targets do not build" >&2
    exit 2
fi

# libFuzzer's output of the last run of each target (gitignored).
logs=fuzz/logs
mkdir -p "$logs"
summary=()
failed=0
for t in "${targets[@]}"; do
    log="$logs/$t.log"
    echo "== $t: ${seconds} s"
    start=$(date +%s)
    # -print_final_stats=1 prints stat::number_of_executed_units; the corpus directory gets
    # the new inputs (gitignored, seeds are committed as seed-*).
    nice -n "$nice_level" cargo +nightly fuzz run "$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    elapsed=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    if [[ -z $execs ]]; then
        # A crash stops libFuzzer before its final stats: take the last status line.
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
    fi
    execs=${execs:-0}
    # libFuzzer's own rate (its run time, without the build and start of cargo).
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
    rate=${rate:-$(( elapsed > 0 ? execs / elapsed : execs ))}
    if [[ $rc -eq 0 ]]; then
        result="no crash"
    else
        failed=1
        artifact=$(grep -oE 'fuzz/artifacts/[^ ]+' "$log" | tail -n 1)
        result="CRASH (exit $rc)${artifact:+, input: $artifact}"
        grep -E -m 20 "panicked at|ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY" "$log" | sed 's/^/    /'
        echo "    full output: $log"
    fi
    line=$(printf '%-16s %6s s  %12s execs  %9s execs/s  %s' "$t" "$elapsed" "$execs" "$rate" "$result")
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $failed
