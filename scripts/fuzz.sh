#!/usr/bin/env bash
# Fuzzes every parser that reads input from the other side of a boundary (fuzz/fuzz_targets/),
# each for $HUSK_FUZZ_SECONDS (default 60) seconds. Needs a nightly toolchain and cargo-fuzz
# (installed here if missing). Not part of scripts/test.sh: fuzzing is open-ended.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

seconds=${HUSK_FUZZ_SECONDS:-60}
rustup toolchain list | grep -q '^nightly' || die "cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)"
command -v cargo-fuzz >/dev/null || { step "installing cargo-fuzz"; cargo install --locked -j"$JOBS" cargo-fuzz; }
cd "$HUSK_ROOT/fuzz"
for target in $(cargo +nightly fuzz list); do
    step "fuzzing $target for ${seconds}s"
    # Hand-made seeds (valid requests the fuzzer mutates from), where a target has them.
    seeds=(); [[ -d seeds/$target ]] && seeds=("corpus/$target" "seeds/$target")
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run "$target" "${seeds[@]}" -- -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048
done
