//! A session's process: its environment, its spawning (in a new session, on a pty or on three
//! pipes), exec failures reported back before anything is announced, signals, and its end.
//!
//! Owns the child's pid from spawn to reap. The process is reaped only by [`Process::reap`]
//! (or on drop), never implicitly: until then its pid, process group and session id cannot be
//! reused, so signalling them is always safe. Must never read or write the process's stdio.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::pty::{self, Pty};

/// The default search path of a session.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// argv: the program (looked up in the environment's PATH) and its arguments.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The working directory, which must exist.
    pub cwd: String,
    /// A descriptor the child keeps across exec (the enter helper's status pipe).
    pub keep_fd: Option<RawFd>,
}

/// The process's standard streams.
#[derive(Debug)]
pub enum Stdio3<'a> {
    /// The pty's slave for all three, and as the controlling terminal.
    Pty(&'a Pty),
    /// Three pipes.
    Pipes,
}

/// The session's ends of the three pipes (all close-on-exec).
#[derive(Debug)]
pub struct Pipes {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status, or 128 + signal.
    pub code: i32,
    /// The killing signal, 0 if it exited.
    pub signal: i32,
}

/// The session's environment: the defaults, then `base` (a container's `KEY=VALUE` entries;
/// malformed ones are skipped), then the client's `overrides`. Later entries replace earlier
/// ones with the same key in place.
pub fn environment(
    base: &[String],
    overrides: &[(String, String)],
    tty: bool,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
    ];
    if tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    let base = base.iter().filter_map(|e| {
        let (k, v) = e.split_once('=')?;
        (!k.is_empty() && !e.contains('\0')).then(|| (k.to_owned(), v.to_owned()))
    });
    for (k, v) in base.chain(overrides.iter().cloned()) {
        match env.iter_mut().find(|(key, _)| *key == k) {
            Some(entry) => entry.1 = v,
            None => env.push((k, v)),
        }
    }
    env
}

/// The value of `key` in `env`.
pub fn lookup<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Starts `spec` in a new session. Returns once the program runs: an exec failure (ENOENT for
/// a missing program) is the error, and then nothing ran.
pub fn spawn(spec: &Spec, stdio: Stdio3<'_>) -> io::Result<(Process, Option<Pipes>)> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::other("no program to run"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd);
    let tty = match stdio {
        Stdio3::Pty(pty) => {
            let [i, o, e] = pty.slave_stdio()?;
            cmd.stdin(i).stdout(o).stderr(e);
            true
        }
        Stdio3::Pipes => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            false
        }
    };
    let keep = spec.keep_fd;
    // SAFETY: the hook runs in the forked child before exec and only makes async-signal-safe
    // system calls (setsid, ioctl, fcntl) without allocating.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if tty {
                pty::make_controlling_stdin()?;
            }
            if let Some(fd) = keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let process = Process {
        pid: child.id() as libc::pid_t,
        reaped: false,
    };
    let pipes = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(i), Some(o), Some(e)) => Some(Pipes {
            stdin: i.into(),
            stdout: o.into(),
            stderr: e.into(),
        }),
        _ => None,
    };
    Ok((process, pipes))
}

/// A spawned process, leader of its own session and process group.
#[derive(Debug)]
pub struct Process {
    pid: libc::pid_t,
    reaped: bool,
}

impl Process {
    /// Its pid, in the console's PID namespace.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Sends signal `number` (1-64) to the process.
    pub fn signal(&self, number: i32) -> io::Result<()> {
        if !(1..=64).contains(&number) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: kill has no memory arguments; the pid is ours and not yet reaped.
        if unsafe { libc::kill(self.pid, number) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILLs the process, its process group and every process of its session (the
    /// client is gone). Processes that left the session (setsid) are out of reach.
    pub fn kill_session(&self) {
        // SAFETY: kill has no memory arguments; the pid (hence its group and session ids)
        // stays ours until the reap.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::kill(-self.pid, libc::SIGKILL);
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if session_of(&stat) == Some(self.pid) {
                // SAFETY: as above; a member of our session cannot be another's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Waits until the process ends, leaving it a zombie (so its ids stay reserved).
    pub fn wait_exit(&self) -> io::Result<Exit> {
        loop {
            // SAFETY: an all-zero siginfo_t is valid; waitid writes into our local.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid writes one siginfo_t into `info`, which lives across the call.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    self.pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: waitid succeeded for a child that exited, so the status field is set.
            let status = unsafe { info.si_status() };
            return Ok(match info.si_code {
                libc::CLD_EXITED => Exit {
                    code: status,
                    signal: 0,
                },
                _ => Exit {
                    code: 128 + status,
                    signal: status,
                },
            });
        }
    }

    /// Reaps the process, killing its session first if it still runs.
    pub fn reap(&mut self) {
        if self.reaped {
            return;
        }
        let mut status = 0;
        // SAFETY: a WNOHANG probe writing into our local.
        let done = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if done == 0 {
            self.kill_session();
            // SAFETY: as above, blocking this time (SIGKILL ends it promptly).
            while unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
        self.reaped = true;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.reap();
    }
}

/// The session id (field 6) from the text of a `/proc/<pid>/stat`.
fn session_of(stat: &str) -> Option<i32> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_ascii_whitespace().nth(3)?.parse().ok()
}

/// Sets `O_NONBLOCK` on `fd`'s open file description.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn spec(argv: &[&str]) -> Spec {
        Spec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: environment(&[], &[], false),
            cwd: "/".into(),
            keep_fd: None,
        }
    }

    #[test]
    fn environment_layers() {
        let env = environment(
            &["PATH=/c".into(), "X=1".into(), "junk".into()],
            &[("X".into(), "2".into()), ("Y".into(), "3".into())],
            true,
        );
        assert_eq!(lookup(&env, "PATH"), Some("/c"));
        assert_eq!(lookup(&env, "HOME"), Some("/root"));
        assert_eq!(lookup(&env, "TERM"), Some("xterm"));
        assert_eq!(lookup(&env, "X"), Some("2"));
        assert_eq!(lookup(&env, "Y"), Some("3"));
        assert_eq!(lookup(&env, "junk"), None);
        assert_eq!(lookup(&environment(&[], &[], false), "TERM"), None);
    }

    #[test]
    fn session_ids_parse() {
        let stat = "42 (a) b (c)) S 1 40 41 0 -1";
        assert_eq!(session_of(stat), Some(41));
        assert_eq!(session_of("garbage"), None);
    }

    #[test]
    fn a_missing_program_fails_at_spawn() {
        let e = spawn(&spec(&["no-such-program-husk"]), Stdio3::Pipes).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn spawned_processes_lead_a_new_session_and_report_exits() {
        let (p, pipes) = spawn(
            &spec(&["sh", "-c", "ps -o sid= -p $$; exit 3"]),
            Stdio3::Pipes,
        )
        .unwrap();
        let pipes = pipes.unwrap();
        let mut out = String::new();
        std::fs::File::from(pipes.stdout)
            .read_to_string(&mut out)
            .unwrap();
        if !out.trim().is_empty() {
            assert_eq!(out.trim(), p.pid().to_string());
        }
        assert_eq!(p.wait_exit().unwrap(), Exit { code: 3, signal: 0 });
        let (p, _pipes) = spawn(&spec(&["sleep", "100"]), Stdio3::Pipes).unwrap();
        p.signal(15).unwrap();
        assert_eq!(
            p.wait_exit().unwrap(),
            Exit {
                code: 143,
                signal: 15
            }
        );
        assert!(p.signal(0).is_err());
        assert!(p.signal(65).is_err());
    }
}
