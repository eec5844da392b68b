#!/usr/bin/env bash
# Checks husk's builtin VMM booting Linux, on a host with hardware virtualisation (kvm_intel or
# kvm_amd). One command: installs and builds what is needed (as scripts/setup.sh), boots husk's
# kernel and image on the builtin VMM, reaches the guest agent with a container, prints the boot
# timer's figure (measured from inside the guest), then runs the builtin end-to-end test.
#
# On a host without hardware virtualisation (this project's build fleet: /dev/kvm is kvm_pvm) it
# says "not run" and why, and exits 2: it never reports a pass it did not see.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

kvm=none
for m in kvm_intel kvm_amd; do [[ -d /sys/module/$m ]] && kvm=$m; done
if [[ $kvm == none ]]; then
    why="/dev/kvm is $( [[ -d /sys/module/kvm_pvm ]] && echo kvm_pvm || echo absent or unknown)"
    echo "not run: no hardware virtualisation ($why); run this on a host with kvm_intel or kvm_amd"
    exit 2
fi

prepare_all
cd "$HUSK_ROOT"
step "husk check"
"$HUSK" check

step "boot on the builtin VMM (husk vm boot --backend builtin)"
"$HUSK" vm boot --backend builtin --json | tee /tmp/husk-real-kvm-boot.json
boot_timer=$(sed -n 's/.*"boot_timer_ms": *\([0-9.]*\).*/\1/p' /tmp/husk-real-kvm-boot.json)
[[ -n $boot_timer ]] || die "the boot report has no boot-timer figure: the guest never wrote the boot timer"

step "a container through the guest agent on the builtin VMM (husk run --backend builtin)"
containers="${HUSK_HOME:-/var/lib/husk}/containers"
"$HUSK" image busybox --oci "$containers/busybox-oci"
out=$("$HUSK" run --backend builtin "$containers/busybox-oci" -- sh -c 'echo agent-ok; uname -r')
echo "$out"
grep -q agent-ok <<<"$out" || die "the container's output did not come back"

step "end-to-end test on the builtin VMM (cargo test -p husk-e2e --test builtin)"
cargo test -j"$JOBS" -p husk-e2e --test builtin -- --nocapture

printf '\nreal-kvm: passed on %s; guest boot (boot timer, from VM build to husk-init ready): %s ms\n' \
    "$kvm" "$boot_timer"
