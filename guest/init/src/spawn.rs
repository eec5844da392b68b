//! Starts service processes for the supervisor: a clean environment, default signal mask,
//! its own session, and stdio on the console.
//!
//! Owns the fork/exec details. Must never wait for or reap the child.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use husk_protocols::manifest::{ServiceSpec, ServiceStdio};
use nix::sys::signal::{SigSet, SigmaskHow};

use crate::supervisor::Spawner;

/// Spawns real processes.
#[derive(Debug, Default)]
pub struct ProcessSpawner;

/// The device behind `/dev/console` (e.g. `/dev/ttyS0`), usable as a controlling terminal.
fn console_device() -> String {
    std::fs::read_to_string("/sys/class/tty/console/active")
        .ok()
        .and_then(|s| s.split_whitespace().last().map(|t| format!("/dev/{t}")))
        .unwrap_or_else(|| "/dev/console".to_owned())
}

impl Spawner for ProcessSpawner {
    fn spawn(&mut self, spec: &ServiceSpec) -> io::Result<i32> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().current_dir("/");
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let interactive = spec.stdio == ServiceStdio::Console;
        if interactive {
            let tty = File::options()
                .read(true)
                .write(true)
                .open(console_device())?;
            cmd.stdin(tty.try_clone()?)
                .stdout(tty.try_clone()?)
                .stderr(tty);
        } else {
            cmd.stdin(Stdio::null());
        }
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (sigprocmask, setsid, ioctl); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::signal::sigprocmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                )?;
                nix::unistd::setsid()?;
                if interactive && libc::ioctl(0, libc::TIOCSCTTY, 1) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // The event loop reaps by pid; dropping the handle neither waits nor kills.
        Ok(child.id() as i32)
    }
}
