# Shared steps of scripts/setup.sh and scripts/test.sh: install what husk needs on a Debian 12
# machine and build it. Every step says what it does and is a no-op when already done.
# Sourced, not run.

set -euo pipefail

HUSK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
GUEST_TARGET=x86_64-unknown-linux-gnu
# Where Debian keeps the guest target's static libraries (libseccomp.a).
GUEST_LIBDIR=/usr/lib/x86_64-linux-gnu
HUSK="$HUSK_ROOT/target/debug/husk"
HUSK_INIT="$HUSK_ROOT/target/$GUEST_TARGET/release/husk-init"
HUSK_AGENT="$HUSK_ROOT/target/$GUEST_TARGET/release/husk-agent"
HUSK_CONSOLE="$HUSK_ROOT/target/$GUEST_TARGET/release/husk-console"
HUSK_TRACER="$HUSK_ROOT/target/$GUEST_TARGET/release/husk-tracer"
JOBS=${HUSK_JOBS:-$(nproc)}

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages for running VMs and building images (the kernel build installs its own).
install_packages() {
    # libcap-ng-dev and libseccomp-dev: to build virtiofsd (cargo install, below); libseccomp-dev
    # also gives husk-agent its libseccomp (libseccomp.a for the static guest build); runc: the
    # reference of `husk bench run`; containerd (with ctr): what the shim serves, and its tests;
    # bsdutils: `script`, which gives `ctr run -t` a terminal in the tests; iproute2: pod
    # network namespaces (the tests make them as CNI would); iputils-ping: the host end pings
    # a pod. SELinux: secilc compiles the guest's policy at image build; clang and libclang-dev
    # (bindgen), libselinux1-dev and libpcre2-dev (the static libselinux.a and what it calls)
    # build the selinux crate the agent links statically. tmux: a real terminal for the
    # `husk exec -t` tests. strace and lsof: the debug image's tools (packed with their
    # libraries).
    local want=(qemu-system-x86 busybox-static gcc libc6-dev libcap-ng-dev libseccomp-dev runc
        containerd bsdutils iproute2 iputils-ping secilc clang libclang-dev libselinux1-dev
        libpcre2-dev tmux strace lsof) missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        step "installing Debian packages: ${missing[*]}"
        [[ $(id -u) == 0 ]] || die "need root for apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        step "Debian packages present (${want[*]})"
    fi
}

install_tools() {
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) first"
    if ! command -v virtiofsd >/dev/null; then
        step "installing virtiofsd (shares host directories into the guest; ~2 min)"
        cargo install --locked -j"$JOBS" virtiofsd
    else
        step "virtiofsd present: $(command -v virtiofsd)"
    fi
}

build_kernel() {
    step "guest kernel (kernel/build.sh; a clean build takes ~10 min on 2 cores, then it is cached)"
    "$HUSK_ROOT/kernel/build.sh"
}

build_husk() {
    step "building husk (host), husk-init, husk-agent, husk-console and husk-tracer (static, for the guest)"
    (cd "$HUSK_ROOT" && cargo build -j"$JOBS" --workspace --bins)
    # Guest binaries: statically linked, so the image needs no libc. RUSTFLAGS only reaches the
    # guest target because --target is explicit (build scripts and proc macros stay dynamic).
    # The agent's seccomp (rustjail) links libseccomp: statically here, from libseccomp-dev's
    # libseccomp.a (libseccomp-sys reads LIBSECCOMP_LINK_TYPE and LIBSECCOMP_LIB_PATH); host
    # builds and tests link libseccomp.so as usual. SELINUX_STATIC=1: selinux-sys links
    # libselinux.a (rustjail's build script adds PCRE2).
    # selinux-probe: rustjail's SELinux labels in a real guest, for tests/tests/boot.rs.
    (cd "$HUSK_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" SELINUX_STATIC=1 \
        LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH="$GUEST_LIBDIR" \
        cargo build -j"$JOBS" --release -p husk-init -p husk-agent -p husk-console -p husk-tracer \
        -p husk-rustjail --bins --example selinux-probe --target "$GUEST_TARGET")
}

# containerd finds a shim on its PATH by name: put husk's in /usr/local/bin, an optimised build
# (one runs per pod; the tests use the debug build next to husk instead), with the vhost-user
# device back end the shim starts beside it for QEMU.
install_shim() {
    step "building containerd-shim-husk-v2 and husk-vhost-user (release)"
    (cd "$HUSK_ROOT" && cargo build -j"$JOBS" --release -p husk-shim -p husk-vmm --bin husk-vhost-user)
    step "installing containerd-shim-husk-v2 (runtime io.containerd.husk.v2) and husk-vhost-user in /usr/local/bin"
    install -m 0755 "$HUSK_ROOT/target/release/containerd-shim-husk-v2" \
        "$HUSK_ROOT/target/release/husk-vhost-user" /usr/local/bin/
}

# The reference vsock back end for `scripts/bench-vsock.sh` only (husk itself uses its own).
install_reference_vsock() {
    if ! command -v vhost-device-vsock >/dev/null; then
        step "installing vhost-device-vsock (the reference for the vsock benchmark; ~2 min)"
        cargo install --locked -j"$JOBS" vhost-device-vsock
    fi
}

# husk's configuration (docs/config.md): an /etc/husk/config.toml that lists every key with its
# default, all commented out, so an operator sees what can be set; an existing file is kept.
install_config() {
    local file=/etc/husk/config.toml
    mkdir -p /etc/husk/config.d
    if [[ -e $file ]]; then
        step "keeping $file (husk env shows the effective configuration)"
        return
    fi
    step "writing $file (every key at its default, commented out; see docs/config.md)"
    { echo "# husk's configuration: uncomment and change a key to set it (docs/config.md)."
      echo "# Drop-ins in /etc/husk/config.d/*.toml override this file."
      "$HUSK" env --config /dev/null | sed -e '/^# /d' -e 's/^\([^#]\)/# \1/'
    } >"$file.tmp"
    mv "$file.tmp" "$file"
}

build_images() {
    step "building guest images (default and debug)"
    "$HUSK" image build --init "$HUSK_INIT" --agent "$HUSK_AGENT" --console "$HUSK_CONSOLE" \
        --tracer "$HUSK_TRACER"
    "$HUSK" image build --debug --init "$HUSK_INIT" --agent "$HUSK_AGENT" --console "$HUSK_CONSOLE" \
        --tracer "$HUSK_TRACER"
}

prepare_all() {
    install_packages
    install_tools
    build_kernel
    build_husk
    build_images
}
