#!/usr/bin/env bash
# Builds husk's guest kernel from Debian's linux-source-6.1 and our config fragment.
#
#   kernel/build.sh [--force]
#
# Output (cached outside the tree, keyed by the fragment, the source version and the recipe):
#   ${HUSK_CACHE:-/var/cache/husk}/kernel/<key>/{vmlinux,bzImage,config,key}
# and installed for husk at
#   ${HUSK_HOME:-/var/lib/husk}/kernel/{vmlinux,bzImage,config}
# A second run with the same inputs is a cache hit and takes seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/husk.config"
cache_root="${HUSK_CACHE:-/var/cache/husk}/kernel"
home="${HUSK_HOME:-/var/lib/husk}"
jobs="${HUSK_KERNEL_JOBS:-$(nproc)}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

say() { printf '[kernel] %s\n' "$*" >&2; }
die() { printf '[kernel] error: %s\n' "$*" >&2; exit 1; }

# 1. Packages. Installed only when missing, so a warm machine needs no network.
packages=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev cpio lz4 xz-utils)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "need root to install ${missing[*]} (or install them yourself)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

tarball=/usr/src/linux-source-6.1.tar.xz
[[ -f $tarball ]] || die "$tarball is missing: install the linux-source-6.1 package"
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)

# 2. Cache key: the fragment, the source package version, and the recipe version below (bump it
#    when the steps that produce the kernel change; messages and progress output do not count).
recipe=1
key=$( { cat "$fragment"; echo "source $src_version recipe $recipe"; } | sha256sum | cut -c1-16)
out="$cache_root/$key"

install_outputs() {
    mkdir -p "$home/kernel"
    for f in vmlinux bzImage config; do
        # Copy via a temporary name so a running VM never sees a half-written file.
        cp "$out/$f" "$home/kernel/.$f.tmp" && mv -f "$home/kernel/.$f.tmp" "$home/kernel/$f"
    done
    echo "$key" > "$home/kernel/key"
    say "installed: $home/kernel/vmlinux ($(du -h --apparent-size "$out/vmlinux" | cut -f1)), bzImage ($(du -h --apparent-size "$out/bzImage" | cut -f1)), key $key"
}

if ((force == 0)) && [[ -f "$out/vmlinux" && -f "$out/bzImage" && -f "$out/config" ]]; then
    say "cache hit: $out (linux-source $src_version)"
    install_outputs
    exit 0
fi

# 3. Unpack the source once per source version.
work="$cache_root/src-$src_version"
tree="$work/linux-source-6.1"
if [[ ! -f "$tree/Makefile" ]]; then
    say "unpacking $tarball (linux-source $src_version)"
    rm -rf "$work" && mkdir -p "$work"
    tar -C "$work" -xf "$tarball"
fi

# One build tree for all keys: a changed fragment rebuilds incrementally, not from scratch.
build="$work/out"
mkdir -p "$build"
start=$(date +%s)

# 4. Configure: tinyconfig, merge our fragment, olddefconfig.
say "configuring (tinyconfig + $(grep -c '^CONFIG_' "$fragment") options from kernel/husk.config)"
make -s -C "$tree" O="$build" ARCH=x86_64 tinyconfig >/dev/null
"$tree/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
make -s -C "$tree" O="$build" ARCH=x86_64 olddefconfig >/dev/null

# 5. Every requested option must have survived olddefconfig (a dependency can silently drop it).
lost=()
while IFS= read -r line; do
    [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]] || continue
    name=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
    if [[ $want == n ]]; then
        grep -q "^$name=" "$build/.config" && lost+=("$name=n (got $(grep "^$name=" "$build/.config"))")
    else
        grep -qxF "$name=$want" "$build/.config" || lost+=("$name=$want (got: $(grep -E "^$name=|^# $name is not set" "$build/.config" || echo absent))")
    fi
done < "$fragment"
if ((${#lost[@]})); then
    for l in "${lost[@]}"; do say "option did not survive olddefconfig: $l"; done
    die "${#lost[@]} requested option(s) were dropped; fix their dependencies in kernel/husk.config"
fi
say "all requested options present"

# 6. Build, printing progress every 15 s (full log in $build/build.log).
say "building bzImage + vmlinux with $jobs jobs (a clean build takes ~7 min on 2 cores)"
set +e
make -C "$tree" O="$build" ARCH=x86_64 -j"$jobs" bzImage 2>&1 | tee "$build/build.log" | awk -v start="$start" '
    / (CC|AS|LD|AR)  / { n++ }
    { now = systime(); if (now - last >= 15) { printf "[kernel] ... %d objects built, %ds elapsed\n", n, now - start > "/dev/stderr"; last = now } }
'
rc=${PIPESTATUS[0]}
set -e
if ((rc != 0)); then
    tail -n 30 "$build/build.log" >&2
    die "kernel build failed (exit $rc); full log: $build/build.log"
fi

mkdir -p "$out"
cp "$build/vmlinux" "$out/vmlinux"
cp "$build/arch/x86/boot/bzImage" "$out/bzImage"
cp "$build/.config" "$out/config"
echo "$key" > "$out/key"
say "built in $(( $(date +%s) - start ))s"
install_outputs
