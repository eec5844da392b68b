//! selinux-probe: exercises rustjail's SELinux labels inside a husk guest, for the end-to-end
//! test `tests/tests/boot.rs` (built statically beside the agent, so it also proves that
//! libselinux links into a static guest binary).
//!
//! Run as root in a guest with SELinux enforcing: `selinux-probe BUSYBOX`. It reports its own
//! label and refuses an unknown type, then builds what the agent builds for a container: a
//! root on a tmpfs with the container's mount label (`context=`, categories `c1,c2`), busybox
//! in it, a read-only tmpfs (`container_ro_file_t`) and another container's files (`c3,c4`)
//! under it, `/proc`, and the guest's `/dev/null` bound in; then runs busybox there as the
//! jail runs a container's process (chroot, no_new_privs, exec label
//! `container_t:s0:c1,c2`, execve) to try each, and prints one `PROBE-` line per step. It must
//! never be part of an image: the test shares it in.

use std::ffi::CString;
use std::path::Path;

use nix::mount::{mount, umount, MsFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{execve, fork, ForkResult};
use rustjail::selinux;

/// The container's root.
const ROOT: &str = "/run/selinux-probe";
/// A container's process label, with Kubernetes-style categories.
const CONTAINER: &str = "system_u:system_r:container_t:s0:c1,c2";
/// The root's mount label, then tmpfs under it: read-only files, another container's files.
const ROOT_LABEL: &str = "system_u:object_r:container_file_t:s0:c1,c2";
const MOUNTS: [(&str, &str); 2] = [
    ("ro", "system_u:object_r:container_ro_file_t:s0"),
    ("other", "system_u:object_r:container_file_t:s0:c3,c4"),
];

/// What the container runs: each try prints `ok` or `denied`.
const SCRIPT: &str = r#"B=/bin/busybox
t() { if "$@" >/dev/null 2>&1; then echo ok; else echo denied; fi; }
echo "PROBE-CT: label=$($B cat /proc/self/attr/current | $B tr -d '\0') \
own_write=$(t $B sh -c 'echo x > /f') \
ro_read=$(t $B cat /ro/data) \
ro_write=$(t $B sh -c 'echo x >> /ro/data') \
ro_create=$(t $B touch /ro/new) \
other_read=$(t $B cat /other/data) \
dev_null=$(t $B sh -c 'echo x > /dev/null')"
"#;

fn main() {
    let Some(busybox) = std::env::args().nth(1) else {
        eprintln!("usage: selinux-probe BUSYBOX");
        std::process::exit(2);
    };
    if let Err(e) = run(&busybox) {
        println!("PROBE-ERROR: {e}");
        std::process::exit(1);
    }
}

fn tmpfs(at: &Path, label: &str) -> Result<(), String> {
    selinux::validate_label(label).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
    let data = selinux::add_mount_label("mode=0755", label);
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| format!("mounting tmpfs on {} with {data}: {e}", at.display()))
}

fn run(busybox: &str) -> Result<(), String> {
    println!(
        "PROBE-SELF: enabled={} enforcing={} label={}",
        selinux::is_enabled(),
        selinux::enforcing(),
        selinux::current_label()
            .map_err(|e| e.to_string())?
            .unwrap_or_default()
    );
    if !selinux::enforcing() {
        // Nothing to probe, and nothing is mounted where it is not meant to run.
        return Err("SELinux is not enforcing here".into());
    }
    // A type the policy does not have is refused when applied, with a clear error.
    match selinux::set_exec_label("system_u:system_r:no_such_t:s0") {
        Err(e @ selinux::SelinuxError::SetExec { .. }) => println!("PROBE-BAD: refused ({e})"),
        other => println!("PROBE-BAD: unexpected {other:?}"),
    }

    let root = Path::new(ROOT);
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    tmpfs(root, ROOT_LABEL)?;
    for (name, label) in MOUNTS {
        tmpfs(&root.join(name), label)?;
        std::fs::write(root.join(name).join("data"), "secret\n").map_err(io(name))?;
    }
    std::fs::create_dir_all(root.join("bin")).map_err(io("bin"))?;
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(io("copying busybox"))?;
    std::fs::create_dir_all(root.join("proc")).map_err(io("proc"))?;
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting proc: {e}"))?;
    std::fs::create_dir_all(root.join("dev")).map_err(io("dev"))?;
    std::fs::write(root.join("dev/null"), "").map_err(io("dev/null"))?;
    mount(
        Some("/dev/null"),
        &root.join("dev/null"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("binding /dev/null: {e}"))?;

    let cstr = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let argv = [cstr("sh")?, cstr("-c")?, cstr(SCRIPT)?];
    let env = [cstr("PATH=/bin")?];
    let prog = cstr("/bin/busybox")?;
    // SAFETY: the probe is single-threaded; the child only makes system calls before execve.
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => {
            // As the jail runs a container's process: its root, no_new_privs, the exec label,
            // then execve.
            if let Err(e) = nix::unistd::chroot(root).and_then(|()| nix::unistd::chdir("/")) {
                println!("PROBE-ERROR: chroot: {e}");
                std::process::exit(1);
            }
            // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers.
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            if nnp != 0 {
                println!("PROBE-ERROR: no_new_privs failed");
                std::process::exit(1);
            }
            if let Err(e) = selinux::set_exec_label(CONTAINER) {
                println!("PROBE-ERROR: {e}");
                std::process::exit(1);
            }
            let e = execve(&prog, &argv, &env);
            println!("PROBE-ERROR: execve /bin/busybox: {e:?}");
            std::process::exit(1);
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).map_err(|e| e.to_string())?;
            println!("PROBE-DONE: {status:?}");
        }
    }
    for at in ["dev/null", "proc", "other", "ro", ""] {
        let _ = umount(&root.join(at));
    }
    Ok(())
}
