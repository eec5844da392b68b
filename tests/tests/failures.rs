//! Bad input and broken guests: each is a clear error naming the problem and the fix, and
//! leaves nothing behind.

use std::path::Path;
use std::time::Duration;

use husk_e2e::{assert_no_leaks, Harness};
use husk_hypervisor::{BackendChoice, HostPaths, VmError};

fn run_root_is_empty(h: &Harness) {
    let left: Vec<_> = std::fs::read_dir(h.run_root())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_guest_kernel_panic_is_reported_with_the_last_serial_lines() {
    let h = Harness::new();
    let mut config = h.config(&h.image("default"));
    // No such init in the initramfs and no root device: the kernel panics for real.
    config
        .extra_cmdline
        .push("rdinit=/husk-no-such-init".into());
    let mut vm = h.hv.boot(&config).expect("launch");
    let err = vm.wait_ready(husk_e2e::READY_TIMEOUT).unwrap_err();
    let VmError::GuestPanicked {
        message,
        last_lines,
    } = &err
    else {
        panic!("expected a panic, got: {err}")
    };
    assert!(message.contains("Kernel panic - not syncing"), "{message}");
    assert!(!last_lines.is_empty());
    assert!(err.to_string().contains("last serial lines"), "{err}");
    h.finish(vm);
}

#[test]
fn a_guest_that_never_answers_times_out_with_its_console() {
    let h = Harness::new();
    let mut config = h.config(&h.image("debug"));
    // A shell as PID 1 never speaks husk.init: the host must give up, not hang.
    config.extra_cmdline.push("rdinit=/bin/sh".into());
    let mut vm = h.hv.boot(&config).expect("launch");
    let err = vm.wait_ready(Duration::from_secs(20)).unwrap_err();
    assert!(matches!(err, VmError::NotReady { .. }), "{err}");
    assert!(
        err.to_string().contains("did not report ready within 20s"),
        "{err}"
    );
    h.finish(vm);
}

#[test]
fn missing_and_corrupt_kernels_are_named_with_the_fix() {
    let h = Harness::new();
    let image = h.image("default");
    let missing = h.config(&image);
    let mut missing = missing;
    missing.kernel = h.scratch().join("no-vmlinux");
    let err = h.hv.boot(&missing).unwrap_err().to_string();
    assert!(
        err.contains("guest kernel not found") && err.contains("kernel/build.sh"),
        "{err}"
    );

    let corrupt = h.scratch().join("corrupt-vmlinux");
    std::fs::write(&corrupt, vec![0x5a; 4096]).unwrap();
    let mut c = h.config(&image);
    c.kernel = corrupt;
    let err = h.hv.boot(&c).unwrap_err().to_string();
    assert!(
        err.contains("not a bootable x86-64 kernel") && err.contains("--force"),
        "{err}"
    );

    // A truncated vmlinux: the ELF header survives, the PVH note does not.
    let truncated = h.scratch().join("truncated-vmlinux");
    let kernel = std::fs::read(h.kernel()).unwrap();
    std::fs::write(&truncated, &kernel[..4096]).unwrap();
    c.kernel = truncated;
    let err = h.hv.boot(&c).unwrap_err().to_string();
    assert!(err.contains("not a bootable x86-64 kernel"), "{err}");
    run_root_is_empty(&h);
}

#[test]
fn missing_and_corrupt_images_are_named_with_the_fix() {
    let h = Harness::new();
    let err =
        h.hv.boot(&h.config(&h.scratch().join("none.cpio")))
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("guest image not found") && err.contains("husk image build"),
        "{err}"
    );
    let bad = h.scratch().join("bad.cpio");
    std::fs::write(&bad, b"not an archive").unwrap();
    let err = h.hv.boot(&h.config(&bad)).unwrap_err().to_string();
    assert!(err.contains("is not an initramfs"), "{err}");
    run_root_is_empty(&h);
}

#[test]
fn no_kvm_and_no_qemu_is_a_clear_error() {
    let paths = HostPaths {
        dev_kvm: "/nonexistent/kvm".into(),
        qemu: "/nonexistent/qemu-system-x86_64".into(),
        ..HostPaths::system()
    };
    let err = husk_hypervisor::for_host(BackendChoice::Auto, &paths).unwrap_err();
    assert!(matches!(err, VmError::NoHypervisor { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/kvm") && msg.contains("apt-get install qemu-system-x86"),
        "{msg}"
    );

    let paths = HostPaths {
        vsock_backend: "/nonexistent/husk-vhost-user".into(),
        ..HostPaths::system()
    };
    let msg = husk_hypervisor::for_host(BackendChoice::Auto, &paths)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cargo build -p husk-vmm --bin husk-vhost-user"),
        "{msg}"
    );
}

#[test]
fn a_vm_dropped_mid_boot_leaves_nothing() {
    let h = Harness::new();
    let vm = h.hv.boot(&h.config(&h.image("default"))).expect("launch");
    let (run_dir, pids) = (vm.run_dir().to_owned(), vm.pids());
    assert!(Path::new(&format!("/proc/{}", pids[0])).exists());
    drop(vm);
    assert_no_leaks(&run_dir, &pids);
}

#[test]
fn a_bad_shared_directory_is_refused_before_the_vm_starts() {
    let h = Harness::new();
    let mut config = h.config(&h.image("default"));
    config.shares.push(husk_hypervisor::config::Share {
        tag: "rootfs".into(),
        host_dir: h.scratch().join("missing"),
        read_only: true,
    });
    let err = h.hv.boot(&config).unwrap_err();
    assert!(matches!(err, VmError::BadShare(_)), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    run_root_is_empty(&h);
}
