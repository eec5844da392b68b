//! The `husk` CLI as people and scripts use it: `check`, `vm boot`, `image build`, exit codes.

use husk_e2e::{agent_binary, console_binary, init_binary, tracer_binary, Harness};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn husk_check_explains_what_auto_uses() {
    let h = Harness::new();
    let out = h.husk().arg("check").output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("auto uses") && stdout.contains("qemu ("),
        "{stdout}"
    );
    assert!(stdout.contains("husk can run VMs on this host"), "{stdout}");
    // Why the builtin VMM is not used on this fleet, and that its threads are confined.
    assert!(
        stdout.contains("builtin VMM") && stdout.contains("needs hardware virtualisation"),
        "{stdout}"
    );
    assert!(
        stdout.contains("VMM seccomp") && stdout.contains("enforced"),
        "{stdout}"
    );
    // How the guest confines containers, from the image's manifest.
    assert!(
        stdout.contains("container security")
            && stdout.contains("SELinux enforcing")
            && stdout.contains("default profile"),
        "{stdout}"
    );

    let json = h.husk().args(["check", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("check --json");
    assert_eq!(v["can_run"], true);
}

#[test]
fn husk_check_without_qemu_says_how_to_install_it() {
    let h = Harness::new();
    let out = h
        .husk()
        .arg("check")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("apt-get install qemu-system-x86"),
        "{stdout}"
    );
}

#[test]
fn husk_vm_boot_prints_a_boot_report_and_cleans_up() {
    let h = Harness::new();
    let build_id = husk_e2e::manifest_of(&h.image("default")).build_id;
    let out = h.husk().args(["vm", "boot"]).output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for want in [
        "launch → first serial byte",
        "launch → init ready",
        "guest uptime at ready",
        "shutdown",
        &build_id,
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let left: Vec<_> = std::fs::read_dir(h.run_root()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn husk_vm_boot_with_a_missing_kernel_exits_3_with_the_fix() {
    let h = Harness::new();
    let out = h
        .husk()
        .args(["vm", "boot", "--kernel", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("guest kernel not found at /nonexistent/vmlinux")
            && stderr.contains("kernel/build.sh"),
        "{stderr}"
    );
}

#[test]
fn husk_vm_boot_of_a_panicking_guest_exits_4() {
    let h = Harness::new();
    let out = h
        .husk()
        .args(["vm", "boot", "--append", "rdinit=/husk-no-such-init"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("the guest kernel panicked"), "{stderr}");
}

#[test]
fn image_builds_are_reproducible() {
    let h = Harness::new();
    let build = |name: &str, debug: bool| {
        let out_path = h.scratch().join(name);
        let mut cmd = h.husk();
        cmd.args(["image", "build", "--init"])
            .arg(init_binary())
            .arg("--agent")
            .arg(agent_binary())
            .arg("--console")
            .arg(console_binary())
            .arg("--tracer")
            .arg(tracer_binary())
            .arg("--output")
            .arg(&out_path);
        if debug {
            cmd.arg("--debug");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        (
            std::fs::read(&out_path).unwrap(),
            husk_e2e::manifest_of(&out_path),
        )
    };
    let (a, ma) = build("a.cpio", false);
    let (b, mb) = build("b.cpio", false);
    assert_eq!(ma.build_id, mb.build_id);
    assert!(a == b, "two builds of the same inputs differ");
    let (_, md) = build("d.cpio", true);
    assert_ne!(md.build_id, ma.build_id);
    assert!(md.components.contains_key("busybox") && md.components.contains_key("husk-init"));
    assert!(ma.components.contains_key("husk-agent"));

    let out = h
        .husk()
        .args(["image", "build", "--init", "/bin/sh", "--output"])
        .arg(h.scratch().join("x.cpio"))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("dynamically linked"),
        "{stderr}"
    );
}

/// Waits up to `timeout` for process `pid` (not our child) to exit, through a pidfd.
fn wait_gone(pid: i32, timeout: std::time::Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the fd is ours and closed right after.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    // SAFETY: closing the fd pidfd_open gave us.
    unsafe { libc::close(fd) };
    n == 1
}

#[test]
fn a_killed_husk_leaves_no_vm_processes_and_its_directory_is_swept() {
    use std::io::BufRead;
    let h = Harness::new();
    let mut child = h
        .husk()
        .args(["--log", "debug", "vm", "boot"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let launched = stderr
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("VM launched"))
        .expect("launch log line");
    let pid_of = |key: &str| -> i32 {
        launched
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {launched:?}"))
    };
    let (qemu, backend) = (pid_of("qemu="), pid_of("backend="));
    child.kill().unwrap(); // SIGKILL: no destructor runs in husk
    child.wait().unwrap();
    for pid in [qemu, backend] {
        assert!(
            wait_gone(pid, std::time::Duration::from_secs(30)),
            "VM process {pid} outlived husk"
        );
    }
    let stale: Vec<_> = std::fs::read_dir(h.run_root()).unwrap().flatten().collect();
    assert_eq!(
        stale.len(),
        1,
        "the killed VM's socket directory stays until the next start"
    );
    let out = h.husk().args(["vm", "boot"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(h.run_root()).unwrap().flatten().collect();
    assert!(left.is_empty(), "stale directory not swept: {left:?}");
}
