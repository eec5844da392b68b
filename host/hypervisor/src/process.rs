//! A child process the host started for a VM (QEMU, a vhost-user back end), with a pidfd so
//! its exit can be waited on together with sockets in one `poll`.
//!
//! Owns the child's lifetime: dropping a [`ChildProcess`] kills and reaps it, so no process
//! outlives the VM that started it. Must never leave a zombie or signal a recycled pid (the
//! pidfd names exactly our child).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A started child and its pidfd.
#[derive(Debug)]
pub struct ChildProcess {
    name: &'static str,
    child: Child,
    pidfd: OwnedFd,
    status: Option<ExitStatus>,
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the child die with SIGKILL if the thread that spawned it dies (e.g. husk is killed by
/// a signal and its destructors never run), so a VM's processes cannot outlive husk.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (prctl, getppid); it allocates nothing on the success path.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then we were reparented.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent died before exec"));
            }
            Ok(())
        });
    }
}

/// Hands `fds` to the child at fixed numbers: `fds[i]` becomes fd `first + i` in the child
/// (inherited across exec; every other fd of ours stays close-on-exec).
pub fn pass_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>, first: std::os::fd::RawFd) {
    if fds.is_empty() {
        return;
    }
    // Parked copies, allocated here so the child allocates nothing between fork and exec.
    let mut parked = vec![-1; fds.len()];
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (fcntl, dup2) on fds the parent holds open; it writes only into `parked`, allocated
    // above. Copies are parked above every target first, so a source that is also a target
    // number is never overwritten before it is copied.
    unsafe {
        cmd.pre_exec(move || {
            let top = first + fds.len() as std::os::fd::RawFd;
            for (slot, fd) in parked.iter_mut().zip(&fds) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, top);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, fd) in parked.iter().enumerate() {
                // dup2's copy is not close-on-exec.
                if libc::dup2(*fd, first + i as std::os::fd::RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

impl ChildProcess {
    /// Wraps a freshly spawned child.
    pub fn new(name: &'static str, mut child: Child) -> io::Result<Self> {
        match pidfd_open(child.id()) {
            Ok(pidfd) => Ok(Self {
                name,
                child,
                pidfd,
                status: None,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Readable once the process has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The exit status, if the process has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            );
        }
    }

    /// Sends SIGKILL and reaps. The pid cannot be recycled before this reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
