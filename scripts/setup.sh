#!/usr/bin/env bash
# Sets husk up on a Debian 12 machine and runs its main job: installs what it needs, builds the
# guest kernel, husk and the guest images, checks the host, then boots a VM and prints its boot
# report. Safe to run again: finished steps are skipped or cached.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

prepare_all
step "husk check"
"$HUSK" check
step "husk vm boot"
"$HUSK" vm boot "$@"
printf '\nhusk is at %s (try: %s vm boot --debug, %s bench boot)\n' "$HUSK" "$HUSK" "$HUSK"
