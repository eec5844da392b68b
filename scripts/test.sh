#!/usr/bin/env bash
# Runs husk's tests: installs and builds everything they need (as scripts/setup.sh does), checks
# formatting and lints, then runs the unit tests and the end-to-end tests, which boot real VMs
# with husk's own kernel and images.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

prepare_all
cd "$HUSK_ROOT"
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy -j"$JOBS" --workspace --all-targets -- -D warnings
step "cargo test --workspace (unit tests, then end-to-end tests with real VMs)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test -j"$JOBS" --workspace --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the last often "0 passed").
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$rc"
