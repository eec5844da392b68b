#!/usr/bin/env bash
# Benchmarks what tracing costs: `husk run BUSYBOX true` with `[tracing] enabled = false` (the
# reference: the default) against the same run with tracing on (spans kept in the local store),
# median of N runs each, interleaved, same binaries, kernel and image. Also the spans one run
# makes, and the guest memory (PSS) of husk-tracer, the one process tracing adds to the guest
# (with tracing off it does not run: tests/tests/tracing.rs checks that). Prints ratios.
#
# Usage: scripts/bench-tracing.sh [N]    (after scripts/setup.sh; N defaults to 10)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-10}
[[ -x $HUSK ]] || die "build husk first: scripts/setup.sh"
work=$(mktemp -d /tmp/husk-bench-tracing.XXXXXX)
bg=
cleanup() {
    [[ -n $bg ]] && { kill "$bg" 2>/dev/null; wait "$bg" 2>/dev/null; }
    rm -rf "$work"
}
trap cleanup EXIT

printf '[tracing]\nenabled = false\n' >"$work/off.toml"
printf '[tracing]\nenabled = true\nstore = true\n' >"$work/on.toml"
export HUSK_STATE_DIR=$work/state
"$HUSK" image busybox --output "$work/rootfs" >/dev/null

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A times
step "husk run true: $N runs each, tracing off and on, interleaved"
for i in $(seq "$N"); do
    for mode in off on; do
        t0=$(date +%s%N)
        HUSK_CONFIG=$work/$mode.toml "$HUSK" run "$work/rootfs" -- true ||
            die "husk run failed (tracing $mode)"
        times[$mode]+="$(ms "$t0") "
    done
done
off=$(tr ' ' '\n' <<<"${times[off]}" | grep . | median)
on=$(tr ' ' '\n' <<<"${times[on]}" | grep . | median)
# The store keeps one file per trace and one line per span.
runs=$(find "$work/state/traces" -name '*.jsonl' | wc -l)
spans=$(( $(cat "$work/state/traces"/*.jsonl | wc -l) / runs ))

step "husk-tracer's memory in a running guest (debug image, tracing on)"
# The container says when it runs (the sandbox is reachable by then) on a fifo read here.
mkfifo "$work/ready"
HUSK_CONFIG=$work/on.toml "$HUSK" run --debug --name traced "$work/rootfs" -- \
    sh -c 'echo ready; exec sleep 600' >"$work/ready" 2>/dev/null &
bg=$!
read -r _ <"$work/ready"
# PSS from smaps_rollup (status's VmRSS lags: its counters are synced lazily). The binary's
# pages count too: the guest's root is a tmpfs.
pss() {
    HUSK_CONFIG=$work/on.toml "$HUSK" exec traced -- \
        sh -c "awk '/^Pss:/ {print \$2}' /proc/\$(pidof $1)/smaps_rollup"
}
tracer_kib=$(pss husk-tracer)
agent_kib=$(pss husk-agent)

printf '\n%-44s %10s\n' "" "median"
printf '%-44s %8s ms\n' "husk run true, tracing off (reference)" "$off"
printf '%-44s %8s ms\n' "husk run true, tracing on" "$on"
awk -v a="$on" -v b="$off" 'BEGIN { printf "%-44s %10.2f\n", "ratio on/off", a / b }'
printf '%-44s %10s\n' "traces stored (one per run)" "$runs"
printf '%-44s %10s\n' "spans per run" "$spans"
printf '%-44s %7s KiB\n' "husk-tracer PSS in the guest (tracing on)" "$tracer_kib"
printf '%-44s %7s KiB\n' "husk-agent PSS in the guest, for scale" "$agent_kib"
printf '%-44s %10s\n' "husk-tracer with tracing off" "not run"
