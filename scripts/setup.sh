#!/usr/bin/env bash
# Sets husk up on a Debian 12 machine and runs its main job: installs what it needs, builds the
# guest kernel, husk and the guest images, checks the host, makes a busybox container image and
# runs a container from it in its own VM. Safe to run again: finished steps are skipped or cached.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

prepare_all
install_shim
install_config
step "husk check"
"$HUSK" check
step "husk image busybox (a container image from Debian's busybox-static; no registry needed)"
containers="${HUSK_HOME:-/var/lib/husk}/containers"
"$HUSK" image busybox --oci "$containers/busybox-oci"
step "husk run busybox (the OCI image layout, unpacked on the host): a container in its own VM"
"$HUSK" run "$containers/busybox-oci" -- \
    sh -c 'echo "hello from a husk container: $(uname -sr), pid $$, hostname $(hostname)"'
printf '\ncontainerd runs containers in husk VMs with: ctr run --runtime io.containerd.husk.v2 IMAGE ID CMD\n'
printf '\nhusk is at %s (try: %s vm boot, %s run -i IMAGE -- sh, %s ps, %s bench boot)\n' \
    "$HUSK" "$HUSK" "$HUSK" "$HUSK" "$HUSK"
