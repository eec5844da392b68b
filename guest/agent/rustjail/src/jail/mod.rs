//! The jail process: what runs between the agent's fork and the container program's `execve`.
//! The agent starts its own binary again with [`ARG`] (a fresh, single-threaded process, as
//! runc and Kata's agent do), the agent's end of a socket pair on fd [`SYNC_FD`].
//!
//! Stage 1 joins the container's cgroup, makes or joins its user namespace (the agent writes
//! the id maps), joins the sandbox's namespaces, makes the new ones, then forks with
//! `CLONE_PARENT` so stage 2 is the agent's child and, with a new PID namespace, its init.
//! Stage 2 builds the root ([`rootfs`]), lets the agent run the createRuntime hooks, runs the
//! createContainer hooks, pivots, confines itself ([`credentials`]), reports `Created`, waits
//! for `Start`, runs the startContainer hooks and execs. An exec'd process joins the running
//! init's namespaces instead, and execs at once.
//!
//! Owns the order of the stages and the messages at each step. Must never run in the agent
//! itself (it changes namespaces, credentials and root for good), nor go on after a failed
//! step: the error goes to the agent, then the process exits.

pub mod credentials;
pub mod rootfs;
pub mod sys;

use std::convert::Infallible;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use self::sys::{LibcSys, Sys};
use crate::hooks;
use crate::spec::{Namespace, NamespaceMode};
use crate::sync::{self, FromJail, JailConfig, Mode, ToJail};

/// The first argument that makes the agent's binary a jail process.
pub const ARG: &str = "__husk-jail";
/// The jail's end of the socket pair.
pub const SYNC_FD: std::os::fd::RawFd = 3;

/// The jail process's `main`: never returns (it execs or exits).
pub fn main() -> ! {
    // SAFETY: fd 3 is the socket the agent passed (see `launch`); nothing else owns it.
    let mut sock = unsafe { UnixStream::from_raw_fd(SYNC_FD) };
    // The socket must not reach the container's program: a successful exec reads as EOF.
    // SAFETY: fcntl(2) on an fd we own.
    unsafe { libc::fcntl(SYNC_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let Err(message) = run(&mut sock);
    let _ = sync::send(&mut sock, &FromJail::Error { message });
    std::process::exit(1)
}

fn recv(sock: &mut UnixStream, what: &str) -> Result<ToJail, String> {
    sync::recv(sock)
        .map_err(|e| format!("reading {what} from the agent: {e}"))?
        .ok_or_else(|| format!("the agent went away before {what}"))
}

fn send(sock: &mut UnixStream, msg: &FromJail) -> Result<(), String> {
    sync::send(sock, msg).map_err(|e| format!("writing to the agent: {e}"))
}

/// The kernel's highest capability number.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn run(sock: &mut UnixStream) -> Result<Infallible, String> {
    let ToJail::Config(cfg) = recv(sock, "the configuration")? else {
        return Err("the agent's first message was not the configuration".into());
    };
    let mut sys = LibcSys;
    stage1(&mut sys, sock, &cfg)?;
    // SAFETY: this process is single-threaded (a fresh exec of the agent's binary, which
    // starts no thread on this path), so the child may go on using the allocator and std.
    // CLONE_PARENT makes the child the agent's, so the agent waits for it like any child.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!(
            "forking the container's process: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid > 0 {
        send(sock, &FromJail::Pid { pid: pid as u32 })?;
        std::process::exit(0);
    }
    stage2(&mut sys, sock, &cfg)
}

fn joins(cfg: &JailConfig) -> &[(Namespace, PathBuf)] {
    match &cfg.mode {
        Mode::Create { joins, .. } | Mode::Exec { joins, .. } => joins,
    }
}

/// Joins each namespace of `list`, in order.
fn join<'a>(
    sys: &mut impl Sys,
    list: impl Iterator<Item = &'a (Namespace, PathBuf)>,
) -> Result<(), String> {
    for (ns, path) in list {
        sys.setns(path, ns.flag()).map_err(|e| {
            format!(
                "joining the {} namespace {}: {e}",
                ns.proc_name(),
                path.display()
            )
        })?;
    }
    Ok(())
}

fn stage1(sys: &mut impl Sys, sock: &mut UnixStream, cfg: &JailConfig) -> Result<(), String> {
    if let Some(procs) = &cfg.cgroup_procs {
        sys.write_file(procs, "0")
            .map_err(|e| format!("joining the container's cgroup {}: {e}", procs.display()))?;
    }
    let list = joins(cfg);
    // The user namespace first: the others are owned by it.
    join(sys, list.iter().filter(|(n, _)| *n == Namespace::User))?;
    if let Mode::Create { plan, .. } = &cfg.mode {
        if plan.namespace(Namespace::User) == Some(NamespaceMode::New) {
            sys.unshare(libc::CLONE_NEWUSER)
                .map_err(|e| format!("making the user namespace: {e}"))?;
            send(
                sock,
                &FromJail::MapIds {
                    pid: std::process::id(),
                },
            )?;
            match recv(sock, "the id maps")? {
                ToJail::Mapped => {}
                _ => return Err("expected the id maps to be written".into()),
            }
            sys.setresgid(0)
                .and_then(|()| sys.setresuid(0))
                .map_err(|e| format!("becoming root of the user namespace (is 0 mapped?): {e}"))?;
        }
    }
    // The mount namespace last among the joined: it changes what /proc paths mean.
    join(
        sys,
        list.iter()
            .filter(|(n, _)| !matches!(n, Namespace::User | Namespace::Mount)),
    )?;
    join(sys, list.iter().filter(|(n, _)| *n == Namespace::Mount))?;
    if let Mode::Create { plan, .. } = &cfg.mode {
        let mut flags = libc::CLONE_NEWNS;
        for (ns, mode) in &plan.namespaces {
            if *mode == NamespaceMode::New && *ns != Namespace::User {
                flags |= ns.flag();
            }
        }
        sys.unshare(flags)
            .map_err(|e| format!("making the container's namespaces: {e}"))?;
        if plan.namespace(Namespace::Network) == Some(NamespaceMode::New) {
            // A new network namespace has only loopback, down: bring it up, as runc does.
            loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
        }
    }
    Ok(())
}

/// Brings the loopback interface up (SIOCSIFFLAGS on a socket of the new namespace).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket(2) with constants; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned here.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the `ifreq` that lives across the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCSIFFLAGS,
            &req,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn stage2(
    sys: &mut LibcSys,
    sock: &mut UnixStream,
    cfg: &JailConfig,
) -> Result<Infallible, String> {
    // Nothing may read this process's memory (or reach the agent's binary through
    // /proc/PID/exe) before it execs the container's program.
    // SAFETY: prctl(2) with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let (process, seccomp, exec_label) = match &cfg.mode {
        Mode::Create {
            plan,
            rootfs,
            targets,
            joins: _,
        } => {
            if targets.len() != plan.mounts.len() {
                return Err("the agent sent a mount target per mount, not as many".into());
            }
            let mount_label = cfg.selinux.then(|| {
                plan.mount_label
                    .clone()
                    .unwrap_or_else(|| crate::selinux::DEFAULT_MOUNT_LABEL.into())
            });
            let cgroup_dir = cfg
                .cgroup_procs
                .as_ref()
                .and_then(|p| p.parent())
                .map(Path::to_path_buf);
            let setup = rootfs::Setup {
                plan,
                rootfs,
                targets,
                cgroup_dir: cgroup_dir.as_deref(),
                mount_label: mount_label.as_deref(),
            };
            rootfs::prepare(sys, &setup)?;
            send(sock, &FromJail::Mounted)?;
            let state = match recv(sock, "the go-ahead after the createRuntime hooks")? {
                ToJail::Continue { state } => state,
                _ => return Err("expected the go-ahead after the createRuntime hooks".into()),
            };
            hooks::run_all("createContainer", &plan.hooks.create_container, &state)
                .map_err(|e| e.to_string())?;
            // A missing cwd is made, as runc does (a failure shows at the chdir).
            let cwd = &plan.process.cwd;
            let _ = sys.mkdir_all(&rootfs.join(cwd.strip_prefix("/").unwrap_or(cwd)));
            rootfs::finish(sys, &setup)?;
            (
                &plan.process,
                plan.seccomp.as_ref(),
                plan.process.selinux_label.clone(),
            )
        }
        Mode::Exec {
            process, seccomp, ..
        } => {
            // Joining the mount namespace put this process at that namespace's root: the
            // container's, since its init pivoted there.
            sys.chdir(Path::new("/"))
                .map_err(|e| format!("entering the container's root: {e}"))?;
            (&**process, seccomp.as_ref(), process.selinux_label.clone())
        }
    };
    // Without a profile in the spec, husk's default one, for the capabilities the process keeps.
    let default;
    let profile = match seccomp {
        Some(p) => p,
        None => {
            let caps: Vec<String> = crate::capabilities::names(process.capabilities.bounding)
                .into_iter()
                .map(str::to_owned)
                .collect();
            default = crate::seccomp::default_profile(&caps);
            &default
        }
    };
    let filter = crate::seccomp::Filter::compile(Some(profile))
        .map_err(|e| format!("compiling the seccomp profile: {e}"))?;
    let label = cfg
        .selinux
        .then(|| exec_label.unwrap_or_else(|| crate::selinux::DEFAULT_PROCESS_LABEL.to_owned()));
    let mut set_label = || match &label {
        Some(l) => crate::selinux::set_exec_label(l)
            .map_err(|e| format!("setting the SELinux label {l}: {e}")),
        None => Ok(()),
    };
    let mut load = || {
        filter
            .load()
            .map_err(|e| format!("installing the seccomp filter: {e}"))
    };
    credentials::apply(
        sys,
        process,
        last_cap(),
        credentials::Confine {
            exec_label: &mut set_label,
            seccomp: &mut load,
        },
    )?;
    if let Mode::Create { plan, .. } = &cfg.mode {
        send(sock, &FromJail::Created)?;
        let state = match recv(sock, "StartContainer")? {
            ToJail::Start { state } => state,
            _ => return Err("expected StartContainer".into()),
        };
        hooks::run_all("startContainer", &plan.hooks.start_container, &state)
            .map_err(|e| e.to_string())?;
    }
    let mut cmd = std::process::Command::new(&cfg.program);
    cmd.arg0(&process.args[0])
        .args(&process.args[1..])
        .env_clear();
    for kv in &process.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let e = cmd.exec();
    Err(format!(
        "executing {} in container {}: {e}",
        cfg.program.display(),
        cfg.container_id
    ))
}

/// Each mount's target under `rootfs`, resolved inside it (symlinks of the image followed
/// without leaving the root). The agent resolves them once, before the jail starts.
pub fn mount_targets(
    plan: &crate::spec::ContainerPlan,
    rootfs: &Path,
) -> Result<Vec<PathBuf>, String> {
    plan.mounts
        .iter()
        .map(|m| {
            crate::paths::resolve_in_root(rootfs, &m.destination)
                .map_err(|e| format!("mount destination: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sys::Recorder;
    use super::*;
    use crate::sync::FromJail;

    fn config(edit: impl FnOnce(&mut serde_json::Value)) -> JailConfig {
        let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        v["process"]["args"] = serde_json::json!(["/bin/sh"]);
        edit(&mut v);
        let plan = crate::spec::parse(&v.to_string()).unwrap();
        JailConfig {
            container_id: "c1".into(),
            mode: Mode::Create {
                plan: Box::new(plan),
                rootfs: "/r".into(),
                targets: Vec::new(),
                joins: vec![
                    (Namespace::Mount, "/proc/7/ns/mnt".into()),
                    (Namespace::Ipc, "/proc/7/ns/ipc".into()),
                    (Namespace::User, "/proc/7/ns/user".into()),
                ],
            },
            program: "/bin/sh".into(),
            cgroup_procs: Some("/sys/fs/cgroup/husk/c1/cgroup.procs".into()),
            selinux: false,
        }
    }

    #[test]
    fn stage1_joins_the_cgroup_then_user_then_the_rest_then_unshares() {
        let cfg = config(|_| {});
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let mut sys = Recorder::default();
        stage1(&mut sys, &mut ours, &cfg).unwrap();
        let flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        assert_eq!(
            sys.calls,
            [
                "write /sys/fs/cgroup/husk/c1/cgroup.procs 0".to_string(),
                format!("setns /proc/7/ns/user {:#x}", libc::CLONE_NEWUSER),
                format!("setns /proc/7/ns/ipc {:#x}", libc::CLONE_NEWIPC),
                format!("setns /proc/7/ns/mnt {:#x}", libc::CLONE_NEWNS),
                format!("unshare {flags:#x}"),
            ]
        );
    }

    #[test]
    fn a_new_user_namespace_is_mapped_by_the_agent_before_the_others_are_made() {
        let cfg = config(|v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "user"}));
            v["linux"]["uidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 10}]);
            v["linux"]["gidMappings"] =
                serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 10}]);
        });
        let (mut ours, mut agent) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let asked: FromJail = sync::recv(&mut agent).unwrap().unwrap();
            sync::send(&mut agent, &ToJail::Mapped).unwrap();
            asked
        });
        let mut sys = Recorder::default();
        // The sandbox's user namespace is not joined when the spec makes a new one.
        let mut cfg = cfg;
        if let Mode::Create { joins, .. } = &mut cfg.mode {
            joins.retain(|(n, _)| *n != Namespace::User);
        }
        stage1(&mut sys, &mut ours, &cfg).unwrap();
        assert!(matches!(agent.join().unwrap(), FromJail::MapIds { .. }));
        let pos = |p: &str| sys.calls.iter().position(|c| c.starts_with(p)).unwrap();
        assert!(pos("write /sys/fs/cgroup") < pos(&format!("unshare {:#x}", libc::CLONE_NEWUSER)));
        assert!(pos(&format!("unshare {:#x}", libc::CLONE_NEWUSER)) < pos("setresgid 0"));
        assert!(pos("setresuid 0") < pos("setns /proc/7/ns/ipc"));
        let last = sys.calls.last().unwrap();
        assert!(
            last.starts_with("unshare") && !last.contains(&format!("{:#x}", libc::CLONE_NEWUSER)),
            "{last}"
        );
    }
}
