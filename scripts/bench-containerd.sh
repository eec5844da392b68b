#!/usr/bin/env bash
# Benchmarks husk under a real containerd against runc under the same containerd, on the same
# busybox image: `ctr run --rm IMAGE ID true` latency (median of N runs each, interleaved),
# the host memory (PSS) of one idle pod: the shim plus everything it started (for husk:
# QEMU, virtiofsd, vhost-device-vsock; for runc: the container's process), and the latency of
# running `true` in a running container: `ctr task exec` (husk's shim and agent; runc) and
# `husk exec` through the guest console (into the guest, and into the container). Prints ratios.
#
# Usage: scripts/bench-containerd.sh [N]    (after scripts/setup.sh; N defaults to 10)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-10}
for tool in containerd ctr runc containerd-shim-runc-v2; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/setup.sh (apt-get install containerd runc)"
done
SHIM_DIR="$HUSK_ROOT/target/debug"
[[ -x $SHIM_DIR/containerd-shim-husk-v2 && -x $HUSK ]] || die "build husk first: scripts/setup.sh"

work=$(mktemp -d /tmp/husk-bench.XXXXXX)
S=$work/c.sock
cd_pid=
cleanup() {
    [[ -n $cd_pid ]] && { ctr -a "$S" task kill -s KILL idle-husk >/dev/null 2>&1;
        ctr -a "$S" task kill -s KILL idle-runc >/dev/null 2>&1;
        ctr -a "$S" task kill -s KILL exec-husk >/dev/null 2>&1;
        for t in idle-husk idle-runc exec-husk; do ctr -a "$S" task rm -f "$t" >/dev/null 2>&1; ctr -a "$S" c rm "$t" >/dev/null 2>&1; done
        kill "$cd_pid" 2>/dev/null; wait "$cd_pid" 2>/dev/null; }
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$S"
[ttrpc]
  address = "$S.ttrpc"
EOF
step "starting a private containerd ($(containerd --version | awk '{print $3}'))"
(cd "$work" && PATH="$SHIM_DIR:$PATH" exec containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1) &
cd_pid=$!
timeout 30 bash -c "until grep -q 'successfully booted' '$work/containerd.log'; do sleep 0.1; done" ||
    die "containerd did not start: $(tail -5 "$work/containerd.log")"

step "importing a busybox image made by husk"
"$HUSK" image busybox --oci "$work/oci" >/dev/null
tar -C "$work/oci" -cf "$work/oci.tar" .
ctr -a "$S" images import --base-name localhost/busybox "$work/oci.tar" >/dev/null
IMG=localhost/busybox:latest

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
declare -A times
step "ctr run --rm true: $N runs each, interleaved"
for i in $(seq "$N"); do
    for rt in husk runc; do
        t0=$(date +%s%N)
        ctr -a "$S" run --rm --runtime "io.containerd.$rt.v2" "$IMG" "b-$rt-$i" true ||
            die "$rt run $i failed: $(tail -5 "$work/containerd.log")"
        times[$rt]+="$(ms "$t0") "
    done
    printf '[bench] run %d/%d\n' "$i" "$N" >&2
done
stats() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%d %d %d", a[1], m, a[NR]}'; }
read -r hmin hmed hmax <<<"$(stats "${times[husk]}")"
read -r rmin rmed rmax <<<"$(stats "${times[runc]}")"

# PSS (KiB) of a process and all its descendants.
tree_pss() {
    local pids=($1) all=() p
    while ((${#pids[@]})); do
        all+=("${pids[@]}")
        local next=()
        for p in "${pids[@]}"; do next+=($(pgrep -P "$p" || true)); done
        pids=("${next[@]}")
    done
    for p in "${all[@]}"; do awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null; done |
        awk '{s+=$1} END {print s+0}'
}
step "idle pod memory (PSS of the shim and everything it started)"
declare -A pss
for rt in husk runc; do
    ctr -a "$S" run -d --runtime "io.containerd.$rt.v2" "$IMG" "idle-$rt" sleep 100000 >/dev/null
    shim=$(pgrep -f "containerd-shim-$rt-v2 .*-id idle-$rt( |$)" | head -1)
    [[ -n $shim ]] || die "no shim process for idle-$rt"
    pss[$rt]=$(tree_pss "$shim")
done

step "true in a running container: $N runs each, interleaved (ctr task exec; husk exec through the console)"
# A pod of its own with the guest console (the debug image), so the idle pod above stays as is.
ctr -a "$S" run -d --runtime io.containerd.husk.v2 --annotation io.husk.image=debug \
    "$IMG" exec-husk sleep 100000 >/dev/null
declare -A exec_times
for i in $(seq "$N"); do
    for kind in runc husk console console-ctr; do
        t0=$(date +%s%N)
        case $kind in
            runc) ctr -a "$S" task exec --exec-id "e$i" idle-runc true ;;
            husk) ctr -a "$S" task exec --exec-id "e$i" exec-husk true ;;
            console) "$HUSK" exec exec-husk -- true ;;
            console-ctr) "$HUSK" exec --container exec-husk exec-husk -- true ;;
        esac || die "$kind exec $i failed: $(tail -5 "$work/containerd.log")"
        exec_times[$kind]+="$(ms "$t0") "
    done
done

printf "\ncontainerd benchmark: %d runs each; /dev/kvm: %s\n" "$N" "$("$HUSK" check --json 2>/dev/null | sed -n 's/.*"kvm": "\(.*\)",/\1/p')"
printf '  ctr run --rm true                    min      median         max\n'
printf '  husk (io.containerd.husk.v2)   %7d ms  %7d ms  %7d ms\n' "$hmin" "$hmed" "$hmax"
printf '  runc (io.containerd.runc.v2)   %7d ms  %7d ms  %7d ms\n' "$rmin" "$rmed" "$rmax"
awk -v h="$hmed" -v r="$rmed" 'BEGIN {printf "  ratio husk / runc (median)     %7.1f×\n", h / r}'
printf '\n  idle pod, host PSS (shim + what it started)\n'
awk -v h="${pss[husk]}" -v r="${pss[runc]}" 'BEGIN {
    printf "  husk   %8.1f MiB\n  runc   %8.1f MiB\n  ratio husk / runc  %.1f×\n", h/1024, r/1024, h/r }'
printf '\n  true in a running container          min      median         max\n'
for kind in runc husk console console-ctr; do
    read -r min med max <<<"$(stats "${exec_times[$kind]}")"
    case $kind in
        runc) label="ctr task exec, runc" ;;
        husk) label="ctr task exec, husk" ;;
        console) label="husk exec (guest)" ;;
        console-ctr) label="husk exec --container" ;;
    esac
    printf '  %-28s %7d ms  %7d ms  %7d ms\n' "$label" "$min" "$med" "$max"
    eval "med_${kind//-/_}=$med"
done
awk -v h="$med_husk" -v c="$med_console" -v cc="$med_console_ctr" -v r="$med_runc" 'BEGIN {
    printf "  ratio husk / runc (median): ctr task exec %.1f×, husk exec %.1f×, husk exec --container %.1f×\n", h/r, c/r, cc/r }'
