//! The agent's side of a jail process: starts the agent's own binary as [`jail::ARG`] with the
//! process's stdio and one end of a socket pair, sends the configuration, writes the id maps
//! of a new user namespace, runs the createRuntime hooks when the jail's mounts are ready, and
//! for a container's init keeps the created process waiting until [`Created::start`].
//!
//! Owns the agent's half of the conversation in [`crate::sync`] and the wait for the container
//! process (a child of the agent, thanks to `CLONE_PARENT`). Must never trust the jail
//! process: every message is checked against the step the conversation is at, and a jail that
//! stops answering is given up after a timeout.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::jail;
use crate::spec::IdMap;
use crate::sync::{self, FromJail, JailConfig, Mode, ToJail};

/// How long the agent waits for one step of a jail process (hooks excluded: their timeouts
/// are added).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a jail process failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting the jail process: {0}")]
    Spawn(std::io::Error),
    #[error("{0}")]
    Jail(String),
    #[error("talking to the jail process: {0}")]
    Protocol(String),
    #[error("writing the id maps of the user namespace: {0}")]
    IdMaps(std::io::Error),
    #[error("{0}")]
    Hook(String),
}

/// A container's init, created and waiting for StartContainer.
#[derive(Debug)]
pub struct Created {
    sock: UnixStream,
    pid: u32,
}

/// The stdio of the process: three fds (pipes or a terminal's slave).
pub type ProcessStdio = [OwnedFd; 3];

fn map_text(maps: &[IdMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
        .collect()
}

fn write_maps(pid: u32, uid: &[IdMap], gid: &[IdMap]) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), map_text(uid))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), map_text(gid))
}

fn recv(sock: &mut UnixStream) -> Result<Option<FromJail>, LaunchError> {
    sync::recv(sock).map_err(|e| LaunchError::Protocol(e.to_string()))
}

fn send(sock: &mut UnixStream, m: &ToJail) -> Result<(), LaunchError> {
    sync::send(sock, m).map_err(|e| LaunchError::Protocol(e.to_string()))
}

fn timeout(sock: &UnixStream, extra_secs: u64) {
    let _ = sock.set_read_timeout(Some(STEP_TIMEOUT + Duration::from_secs(extra_secs)));
}

/// Starts a jail process. For [`Mode::Create`] it returns once the init is created (waiting
/// for [`Created::start`]); `on_mounted(pid)` runs the createRuntime hooks and returns the
/// state document for the createContainer ones. For [`Mode::Exec`] it returns once the
/// program was exec'd. Either way with the pid of the process that runs the program.
pub fn spawn(
    cfg: JailConfig,
    stdio: ProcessStdio,
    on_mounted: &mut dyn FnMut(u32) -> Result<String, String>,
) -> Result<(u32, Option<Created>), LaunchError> {
    let _span = husk_telemetry::child_span!(
        "jail.spawn",
        otel.name = "jail spawn",
        jail.mode = match cfg.mode {
            Mode::Create { .. } => "create",
            _ => "exec",
        },
    )
    .entered();
    let (mut ours, theirs) = UnixStream::pair().map_err(LaunchError::Spawn)?;
    let [i, o, e] = stdio;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("husk-jail")
        .arg(jail::ARG)
        .env_clear()
        .stdin(Stdio::from(i))
        .stdout(Stdio::from(o))
        .stderr(Stdio::from(e));
    let fd = theirs.as_raw_fd();
    // SAFETY: only dup2/fcntl, which are async-signal-safe, run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == jail::SYNC_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, jail::SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Forked on the unconfined thread: the agent's own seccomp filter must not reach the jail.
    let mut stage1 = crate::launcher::run(move || cmd.spawn()).map_err(LaunchError::Spawn)?;
    drop(theirs);
    let mut forked = None;
    let result = converse(&mut ours, cfg, on_mounted, &mut forked);
    // Stage 1 exits once it has forked (or failed): reap it.
    if result.is_err() {
        let _ = stage1.kill();
    }
    let _ = stage1.wait();
    if result.is_err() {
        // Stage 2 is the agent's child: kill and reap it, or it would stay a zombie.
        if let Some(pid) = forked {
            // SAFETY: kill(2) on our own child, which is not reaped until `wait` below.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            wait(pid);
        }
    }
    result.map(|(pid, created)| (pid, created.then_some(Created { sock: ours, pid })))
}

fn converse(
    sock: &mut UnixStream,
    cfg: JailConfig,
    on_mounted: &mut dyn FnMut(u32) -> Result<String, String>,
    forked: &mut Option<u32>,
) -> Result<(u32, bool), LaunchError> {
    let (create, maps, hook_secs) = match &cfg.mode {
        Mode::Create { plan, .. } => (
            true,
            Some((plan.uid_mappings.clone(), plan.gid_mappings.clone())),
            plan.hooks
                .create_container
                .iter()
                .map(|h| h.timeout_secs)
                .sum::<u64>(),
        ),
        Mode::Exec { .. } => (false, None, 0),
    };
    timeout(sock, hook_secs);
    send(sock, &ToJail::Config(Box::new(cfg)))?;
    let mut pid = None;
    loop {
        match (recv(sock)?, pid) {
            (Some(FromJail::MapIds { pid: p }), None) => {
                let (uid, gid) = maps.as_ref().ok_or_else(|| {
                    LaunchError::Protocol("id maps asked for by an exec'd process".into())
                })?;
                write_maps(p, uid, gid).map_err(LaunchError::IdMaps)?;
                send(sock, &ToJail::Mapped)?;
            }
            (Some(FromJail::Pid { pid: p }), None) if p > 1 => {
                pid = Some(p);
                *forked = Some(p);
            }
            (Some(FromJail::Mounted), Some(p)) if create => {
                let state = on_mounted(p).map_err(LaunchError::Hook)?;
                send(sock, &ToJail::Continue { state })?;
            }
            (Some(FromJail::Created), Some(p)) if create => return Ok((p, true)),
            (None, Some(p)) if !create => return Ok((p, false)),
            (Some(FromJail::Error { message }), _) => return Err(LaunchError::Jail(message)),
            (None, _) => {
                return Err(LaunchError::Jail(
                    "the jail process ended without a word (killed?)".into(),
                ))
            }
            (Some(m), _) => {
                return Err(LaunchError::Protocol(format!(
                    "unexpected message {m:?} at this step"
                )))
            }
        }
    }
}

impl Created {
    /// The pid of the process that will exec the container's program.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the process run its startContainer hooks (with `state`) and exec; returns once
    /// it has exec'd. `hook_secs`: the sum of those hooks' timeouts.
    pub fn start(mut self, state: String, hook_secs: u64) -> Result<(), LaunchError> {
        let _span = husk_telemetry::child_span!("jail.start", otel.name = "jail start").entered();
        timeout(&self.sock, hook_secs);
        send(&mut self.sock, &ToJail::Start { state })?;
        match recv(&mut self.sock)? {
            None => Ok(()),
            Some(FromJail::Error { message }) => Err(LaunchError::Jail(message)),
            Some(m) => Err(LaunchError::Protocol(format!(
                "unexpected message {m:?} after start"
            ))),
        }
    }
}

/// Waits for a process started through [`spawn`] (a child of the agent) to exit: its exit
/// code, or 128 + the signal that killed it. Blocks.
pub fn wait(pid: u32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}
