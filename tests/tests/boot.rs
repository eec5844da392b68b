//! Booting husk's own guest end to end: readiness over vsock, the debug console, supervised
//! services, vsock errors, pause and resume. Every test ends by checking nothing is left.

use std::time::Duration;

use husk_e2e::{
    agent_binary, console_binary, init_binary, manifest_of, tracer_binary, Harness,
    SHUTDOWN_TIMEOUT,
};
use husk_hypervisor::vsock::VsockError;
use husk_hypervisor::VmError;
use husk_image::{Flavour, ImageSpec};
use husk_protocols::init::PROTOCOL;
use husk_protocols::manifest::{ServiceSpec, ServiceStdio};

const CONSOLE_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn auto_boot_reports_ready_over_vsock_with_the_manifest_build_id() {
    let h = Harness::new();
    let image = h.image("default");
    let (mut vm, report) = h.boot_ready(&h.config(&image));

    assert_eq!(report.init.build_id, manifest_of(&image).build_id);
    assert_eq!(report.init.protocol, PROTOCOL);
    assert_eq!(report.init.flavour, "default");
    assert!(
        report.init.kernel_release.starts_with("6.1"),
        "{}",
        report.init.kernel_release
    );
    assert!(
        report.init.entropy_seeded,
        "virtio-rng seed was not credited"
    );
    assert!(report.guest_uptime > Duration::ZERO && report.guest_uptime < report.ready);
    assert!(report.first_serial.is_some_and(|f| f <= report.ready));

    let exit = vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    assert!(exit.status.contains("exit status: 0"), "{}", exit.status);
    let log = std::fs::read_to_string(vm.log_dir().join("serial.log")).unwrap();
    assert!(log.contains("syncing and leaving the VM"), "{log}");
    h.finish(vm);
}

/// Types `command` into the debug shell and returns the first output line starting with `tag`.
fn console_run(vm: &husk_hypervisor::Vm, command: &str, tag: &str) -> String {
    let mark = vm.serial().mark();
    vm.serial()
        .write(format!("{command}\n").as_bytes())
        .expect("console input");
    // The tty echoes the command itself; the answer is the line that starts with the tag.
    vm.serial()
        .wait_for_line(mark, CONSOLE_TIMEOUT, |l| l.trim_start().starts_with(tag))
        .unwrap_or_else(|e| panic!("{command}: {e}; console: {:?}", vm.serial().last_lines(20)))
}

#[test]
fn debug_image_runs_commands_on_the_serial_console() {
    let h = Harness::new();
    let mut config = h.config(&h.image("debug"));
    config.extra_cmdline.push("husk.hostname=e2e-host".into());
    let (mut vm, report) = h.boot_ready(&config);
    assert_eq!(report.init.flavour, "debug");
    assert_eq!(report.init.services, ["agent", "console", "console-shell"]);

    let answer = console_run(&vm, "echo \"R:$((6*7))\"", "R:");
    assert_eq!(answer.trim(), "R:42");
    let host = console_run(&vm, "echo \"H:$(hostname)\"", "H:");
    assert_eq!(host.trim(), "H:e2e-host");
    let mounts = console_run(
        &vm,
        "echo \"M:$(cut -d' ' -f2,3 /proc/mounts | tr '\\n' ,)\"",
        "M:",
    );
    for m in [
        "/proc proc",
        "/sys sysfs",
        "/dev devtmpfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/run tmpfs",
        "/sys/fs/cgroup cgroup2",
    ] {
        assert!(mounts.contains(m), "{m} not mounted: {mounts}");
    }
    let pid1 = console_run(&vm, "echo \"P:$(cat /proc/1/comm)\"", "P:");
    assert_eq!(
        pid1.trim(),
        "P:init",
        "PID 1 is husk-init, installed as /init"
    );

    vm.shutdown(SHUTDOWN_TIMEOUT)
        .expect("clean shutdown with a shell running");
    h.finish(vm);
}

#[test]
fn a_service_that_dies_is_restarted_with_back_off() {
    let h = Harness::new();
    let image = h.scratch().join("flaky.cpio");
    husk_image::build(&ImageSpec {
        flavour: Flavour::Debug,
        init: init_binary(),
        agent: agent_binary(),
        console: console_binary(),
        tracer: tracer_binary(),
        busybox: "/bin/busybox".into(),
        tools: vec![],
        services: vec![ServiceSpec {
            name: "flaky".into(),
            argv: vec!["/bin/false".into()],
            env: vec![],
            stdio: ServiceStdio::Log,
            enabled_by: None,
        }],
        output: image.clone(),
    })
    .expect("image build");
    let (mut vm, report) = h.boot_ready(&h.config(&image));
    assert!(report.init.services.contains(&"flaky".to_owned()));
    let exited = |delay: &'static str| {
        move |l: &str| {
            l.contains("service exited") && l.contains("service=flaky") && l.contains(delay)
        }
    };
    // Each quick death doubles the delay: 100 ms, 200 ms, 400 ms.
    for delay in [
        "restart_in_ms=100",
        "restart_in_ms=200",
        "restart_in_ms=400",
    ] {
        vm.serial()
            .wait_for_line(0, CONSOLE_TIMEOUT, exited(delay))
            .unwrap_or_else(|e| panic!("{delay}: {e}; console: {:?}", vm.serial().last_lines(20)));
    }
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

#[test]
fn vsock_to_a_port_nobody_listens_on_is_a_clear_error() {
    let h = Harness::new();
    let (mut vm, _) = h.boot_ready(&h.config(&h.image("default")));

    let err = vm.connect(4242, Duration::from_secs(30)).unwrap_err();
    assert!(
        matches!(err, VmError::Vsock(VsockError::NoListener { port: 4242 })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("nobody listens on guest vsock port 4242"),
        "{err}"
    );
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

/// Pause stops the vCPUs and resume restarts them, seen through the serial console (a device
/// QEMU emulates itself); the init channel's open vsock connection survives QEMU's vhost
/// stop/start across the pause (husk's vsock device keeps it; vhost-device-vsock, the interim
/// back end, did not always), so the VM ends the clean way.
#[test]
fn pause_and_resume_stop_and_restart_the_guest() {
    let h = Harness::new();
    let (mut vm, _) = h.boot_ready(&h.config(&h.image("debug")));
    assert_eq!(console_run(&vm, "echo \"A:$((1+1))\"", "A:").trim(), "A:2");

    vm.pause().expect("pause");
    let mark = vm.serial().mark();
    vm.serial()
        .write(b"echo \"P:$((2+2))\"\n")
        .expect("console input");
    // While paused the guest runs nothing, so the answer cannot come (its absence is the point).
    let paused = vm
        .serial()
        .wait_for_line(mark, Duration::from_secs(2), |l| {
            l.trim_start().starts_with("P:")
        });
    assert!(paused.is_err(), "the guest ran while paused: {paused:?}");

    vm.resume().expect("resume");
    let answer = vm
        .serial()
        .wait_for_line(mark, CONSOLE_TIMEOUT, |l| l.trim_start().starts_with("P:"))
        .expect("the guest runs again after resume");
    assert_eq!(answer.trim(), "P:4");
    let exit = vm
        .shutdown(SHUTDOWN_TIMEOUT)
        .expect("a clean shutdown through the init channel after a resume");
    assert!(exit.status.contains("exit status: 0"), "{}", exit.status);
    h.finish(vm);
}

#[test]
fn a_host_directory_is_shared_into_the_guest_with_virtio_fs() {
    let h = Harness::new();
    let shared = h.scratch().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "from-the-host\n").unwrap();
    let mut config = h.config(&h.image("debug"));
    config.shares.push(husk_hypervisor::config::Share {
        tag: "hostshare".into(),
        host_dir: shared.clone(),
        read_only: false,
    });
    let (mut vm, _) = h.boot_ready(&config);
    assert_eq!(vm.pids().len(), 3, "qemu, vsock back end and one virtiofsd");

    let read = console_run(
        &vm,
        "mkdir -p /mnt/s && mount -t virtiofs hostshare /mnt/s && echo \"F:$(cat /mnt/s/hello.txt)\"",
        "F:",
    );
    assert_eq!(read.trim(), "F:from-the-host");
    let wrote = console_run(
        &vm,
        "echo guest-wrote > /mnt/s/back.txt && sync && echo W:done",
        "W:",
    );
    assert_eq!(wrote.trim(), "W:done");
    assert_eq!(
        std::fs::read_to_string(shared.join("back.txt")).unwrap(),
        "guest-wrote\n"
    );

    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

#[test]
fn the_vsock_device_back_end_serves_confined_by_seccomp() {
    let h = Harness::new();
    let (mut vm, _) = h.boot_ready(&h.config(&h.image("default")));
    // QEMU, then husk's vhost-user vsock back end.
    let pids = vm.pids();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[1])).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        std::fs::read_to_string(format!("/proc/{}/cmdline", pids[1]))
            .unwrap()
            .contains("husk-vhost-user"),
        "pid {} is not husk-vhost-user",
        pids[1]
    );
    // 2 = SECCOMP_MODE_FILTER; the guest still works through it.
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

/// Disks are served by husk's own virtio-blk model: through `husk-vhost-user block` under QEMU,
/// so a real Linux guest reads, writes, flushes and reads the serial id through it.
#[test]
fn disks_are_served_by_husks_block_device() {
    use husk_hypervisor::config::Disk;
    let h = Harness::new();
    let rw = h.scratch().join("rw.img");
    let mut image = vec![0u8; 1 << 20];
    image[..11].copy_from_slice(b"hello-block");
    std::fs::write(&rw, &image).unwrap();
    let ro = h.scratch().join("ro.img");
    let mut image = vec![0u8; 64 << 10];
    image[..14].copy_from_slice(b"read-only-disk");
    std::fs::write(&ro, &image).unwrap();
    let mut config = h.config(&h.image("debug"));
    config.disks = vec![
        Disk {
            path: rw.clone(),
            read_only: false,
            serial: Some("husk-rw".into()),
        },
        Disk {
            path: ro.clone(),
            read_only: true,
            serial: None,
        },
    ];
    let (mut vm, _) = h.boot_ready(&config);
    // QEMU, vsock, then one husk-vhost-user block per disk.
    assert_eq!(vm.pids().len(), 4);

    let read = console_run(&vm, "echo \"D1:$(head -c 11 /dev/vda)\"", "D1:");
    assert_eq!(read.trim(), "D1:hello-block");
    let facts = console_run(
        &vm,
        "echo \"D2:$(cat /sys/block/vda/serial) $(cat /sys/block/vda/size) $(cat /sys/block/vdb/ro) $(head -c 14 /dev/vdb)\"",
        "D2:",
    );
    // 1 MiB = 2048 sectors; vdb is read-only (VIRTIO_BLK_F_RO).
    assert_eq!(facts.trim(), "D2:husk-rw 2048 1 read-only-disk");
    let wrote = console_run(
        &vm,
        "printf written | dd of=/dev/vda bs=512 seek=8 conv=notrunc 2>/dev/null; sync; echo \"D3:$?\"",
        "D3:",
    );
    assert_eq!(wrote.trim(), "D3:0");
    let refused = console_run(
        &vm,
        "printf x | dd of=/dev/vdb conv=notrunc 2>/dev/null; echo \"D4:$?\"",
        "D4:",
    );
    assert_ne!(
        refused.trim(),
        "D4:0",
        "a write to a read-only disk succeeded"
    );

    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
    let rw_now = std::fs::read(&rw).unwrap();
    assert_eq!(
        &rw_now[4096..4103],
        b"written",
        "the guest's write reached the image"
    );
    assert_eq!(&rw_now[..11], b"hello-block");
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        image,
        "the read-only image is unchanged"
    );
}

/// The label of husk's own processes: the kernel's domain, with every category.
const KERNEL_LABEL: &str = "system_u:system_r:kernel_t:s0-s0:c0.c1023";

#[test]
fn the_default_image_boots_enforcing_selinux() {
    let h = Harness::new();
    let image = h.image("default");
    let policy = manifest_of(&image)
        .selinux
        .expect("the image carries an SELinux policy");
    assert_eq!(policy.version, 33);
    let (mut vm, report) = h.boot_ready(&h.config(&image));
    assert_eq!(report.init.selinux, "enforcing");
    assert_eq!(
        report.init.services,
        ["agent"],
        "the agent starts under the policy"
    );
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    let log = std::fs::read_to_string(vm.log_dir().join("serial.log")).unwrap();
    assert!(log.contains("SELinux enforcing"), "{log}");
    assert!(
        log.contains(&policy.sha256),
        "the log names the policy: {log}"
    );
    h.finish(vm);
}

/// The debug image enforces the policy too: selinuxfs says so, husk's own processes run
/// unconfined in `kernel_t` without a single denial, and a process that enters `container_t`
/// (as the agent's exec label will make a container's) in a root labelled `container_file_t`
/// may read but not write files labelled `container_ro_file_t` by a `context=` mount, and is
/// audited for trying. busybox has no `runcon`, so the shell writes the exec label to
/// /proc/self/attr/exec itself.
#[test]
fn the_debug_image_enforces_selinux_and_confines_container_t() {
    let h = Harness::new();
    let (mut vm, report) = h.boot_ready(&h.config(&h.image("debug")));
    assert_eq!(report.init.selinux, "enforcing");

    let state = console_run(
        &vm,
        "echo \"S:$(cat /sys/fs/selinux/enforce) $(cat /sys/fs/selinux/mls) $(cat /sys/fs/selinux/policyvers) $(tr -d '\\0' < /proc/1/attr/current) $(tr -d '\\0' < /proc/self/attr/current)\"",
        "S:",
    );
    assert_eq!(
        state.trim(),
        format!("S:1 1 33 {KERNEL_LABEL} {KERNEL_LABEL}"),
        "enforcing, MLS (MCS), and init and its shell in kernel_t"
    );
    let denials = console_run(&vm, "echo \"N:$(dmesg | grep -c 'avc:  denied')\"", "N:");
    assert_eq!(
        denials.trim(),
        "N:0",
        "husk's own processes were denied something"
    );

    // A container's root (a tmpfs with the default mount label, busybox in it, /proc, the
    // guest's /dev/null bound in) and a read-only tmpfs under it; and the container's script.
    let mounted = console_run(
        &vm,
        "mkdir -p /mnt/c && mount -t tmpfs -o 'context=\"system_u:object_r:container_file_t:s0\"' c /mnt/c && mkdir /mnt/c/ro /mnt/c/proc /mnt/c/dev && mount -t tmpfs -o 'context=\"system_u:object_r:container_ro_file_t:s0\"' ro /mnt/c/ro && mount -t proc proc /mnt/c/proc && touch /mnt/c/dev/null && mount --bind /dev/null /mnt/c/dev/null && cp /bin/busybox /mnt/c/busybox && echo data > /mnt/c/ro/f && echo M:ok",
        "M:",
    );
    assert_eq!(mounted.trim(), "M:ok");
    let script = console_run(
        &vm,
        "cat > /mnt/c/t.sh <<'EOF'\n\
         B=/busybox; t() { if \"$@\" >/dev/null 2>&1; then echo ok; else echo denied; fi; }\n\
         echo \"C:$($B cat /proc/self/attr/current | $B tr -d '\\0') read=$(t $B cat /ro/f) write=$(t $B sh -c 'echo x >> /ro/f') create=$(t $B touch /ro/g) own=$(t $B sh -c 'echo x > /w')\"\n\
         EOF\n\
         echo W:ok",
        "W:",
    );
    assert_eq!(script.trim(), "W:ok");
    let confined = console_run(
        &vm,
        "chroot /mnt/c /busybox sh -c 'echo -n system_u:system_r:container_t:s0 > /proc/self/attr/exec && exec /busybox sh /t.sh'",
        "C:",
    );
    assert_eq!(
        confined.trim(),
        "C:system_u:system_r:container_t:s0 read=ok write=denied create=denied own=ok"
    );
    let logged = console_run(
        &vm,
        "echo \"L:$(dmesg | grep 'avc:  denied' | grep -c 'tcontext=system_u:object_r:container_ro_file_t:s0')\"",
        "L:",
    );
    assert_ne!(logged.trim(), "L:0", "the denial is audited");

    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

/// rustjail's SELinux module in a real guest, through `selinux-probe` (built statically beside
/// the agent, so libselinux is linked as the agent links it): it reads its own label, refuses
/// a type the policy lacks, mounts tmpfs with `context=` options it builds (categories with
/// commas included), and runs busybox as a container would, with no_new_privs and the exec
/// label `container_t:s0:c1,c2`: its own files are writable, read-only ones only readable,
/// another container's categories unreadable. The probe itself comes from a virtio-fs share,
/// which the policy labels `container_file_t` (an entrypoint for container_t).
#[test]
fn rustjail_labels_confine_a_process_in_the_guest() {
    let h = Harness::new();
    let probe = agent_binary()
        .parent()
        .map(|d| d.join("examples/selinux-probe"))
        .unwrap();
    assert!(
        probe.exists(),
        "{} missing: scripts/lib.sh build_husk builds it with the guest binaries",
        probe.display()
    );
    let shared = h.scratch().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::copy(&probe, shared.join("selinux-probe")).unwrap();
    std::fs::copy("/bin/busybox", shared.join("busybox")).unwrap();
    let mut config = h.config(&h.image("debug"));
    config.shares.push(husk_hypervisor::config::Share {
        tag: "hostshare".into(),
        host_dir: shared,
        read_only: true,
    });
    let (mut vm, _) = h.boot_ready(&config);

    let mark = vm.serial().mark();
    vm.serial()
        .write(b"mkdir -p /mnt/s && mount -t virtiofs hostshare /mnt/s && /mnt/s/selinux-probe /mnt/s/busybox\n")
        .expect("console input");
    let line = |tag: &str| {
        vm.serial()
            .wait_for_line(mark, CONSOLE_TIMEOUT, |l| l.trim_start().starts_with(tag))
            .unwrap_or_else(|e| panic!("{tag}: {e}; console: {:?}", vm.serial().last_lines(20)))
            .trim()
            .to_owned()
    };
    let done = line("PROBE-DONE:");
    let console = vm.serial().last_lines(40);
    assert!(
        !console.iter().any(|l| l.contains("PROBE-ERROR")),
        "{console:?}"
    );
    assert_eq!(
        line("PROBE-SELF:"),
        format!("PROBE-SELF: enabled=true enforcing=true label={KERNEL_LABEL}")
    );
    let bad = line("PROBE-BAD:");
    assert!(bad.starts_with("PROBE-BAD: refused"), "{bad}");
    assert_eq!(
        line("PROBE-CT:"),
        "PROBE-CT: label=system_u:system_r:container_t:s0:c1,c2 own_write=ok ro_read=ok \
         ro_write=denied ro_create=denied other_read=denied dev_null=ok"
    );
    assert!(done.contains("Exited") && done.ends_with(", 0)"), "{done}");

    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    h.finish(vm);
}

#[test]
fn selinux_off_on_the_command_line_boots_without_a_policy() {
    let h = Harness::new();
    let mut config = h.config(&h.image("debug"));
    config.extra_cmdline.push(format!(
        "{}={}",
        husk_protocols::cmdline::SELINUX,
        husk_protocols::cmdline::SELINUX_OFF
    ));
    let (mut vm, report) = h.boot_ready(&config);
    assert_eq!(report.init.selinux, "off");
    assert_eq!(report.init.services, ["agent", "console", "console-shell"]);
    // No selinuxfs, and the kernel still names init by its initial SID: no policy is loaded.
    let state = console_run(
        &vm,
        "echo \"O:$(test -e /sys/fs/selinux/enforce && echo mounted || echo absent) $(tr -d '\\0' < /proc/1/attr/current)\"",
        "O:",
    );
    assert_eq!(state.trim(), "O:absent kernel");
    vm.shutdown(SHUTDOWN_TIMEOUT).expect("clean shutdown");
    let log = std::fs::read_to_string(vm.log_dir().join("serial.log")).unwrap();
    assert!(log.contains("SELinux off (husk.selinux=0"), "{log}");
    h.finish(vm);
}
