//! The agent's own seccomp filter, installed once start-up is done: an allow-list of the
//! system calls the agent makes (its RPCs, vsock streams, mounts, cgroups, netlink, ptys,
//! waiting for children); anything else fails with EPERM instead of running.
//!
//! Owns that list and its installation on the agent's main thread, from which the async
//! runtime and every later thread inherit it. Must never reach a container or a hook: they
//! are forked on the launcher thread (`rustjail::launcher`), started before the filter and
//! outside it. `husk.agent.seccomp=log` on the kernel command line logs instead of refusing
//! (to find a missing call), `off` leaves the agent unfiltered.

use oci_spec::runtime::LinuxSeccomp;

/// The kernel command-line key choosing the filter's mode: `enforce` (default), `log`, `off`.
pub const MODE_KEY: &str = husk_protocols::cmdline::AGENT_SECCOMP;

/// The system calls the agent makes.
pub const ALLOWED: &[&str] = &[
    // Files and directories.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "open",
    "openat",
    "openat2",
    "close",
    "close_range",
    "lseek",
    "stat",
    "fstat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "access",
    "faccessat",
    "faccessat2",
    "readlink",
    "readlinkat",
    "getdents64",
    "mkdir",
    "mkdirat",
    "rmdir",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "symlink",
    "symlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "fchown",
    "fchownat",
    "ftruncate",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "fallocate",
    "fadvise64",
    "copy_file_range",
    "sendfile",
    "splice",
    "umask",
    "chdir",
    "fchdir",
    "getcwd",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "ioctl",
    "pipe",
    "pipe2",
    "flock",
    "utimensat",
    // libseccomp hands a compiled profile back through a memfd (validating containers' ones).
    "memfd_create",
    // Mounts: the pod's shares, containers' roots.
    "mount",
    "umount2",
    // Memory.
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "brk",
    "membarrier",
    // Threads (the runtime's blocking pool).
    "clone",
    "clone3",
    "futex",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "set_tid_address",
    "sched_yield",
    "sched_getaffinity",
    "gettid",
    "exit",
    "exit_group",
    // Signals and children (jail processes and hooks are forked elsewhere, waited for here).
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    "sigaltstack",
    "kill",
    "tgkill",
    "tkill",
    "wait4",
    "waitid",
    "pidfd_open",
    "pidfd_send_signal",
    // Identity and limits.
    "getpid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
    "prctl",
    "prlimit64",
    "getrlimit",
    "getrusage",
    "uname",
    "sysinfo",
    "getrandom",
    "capget",
    "sethostname",
    "setdomainname",
    // Time.
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "time",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // Event loops.
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd2",
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    "signalfd4",
    // Sockets: vsock, Unix (the jail's socket pairs), netlink (the pod's network).
    "socket",
    "socketpair",
    "bind",
    "listen",
    "accept",
    "accept4",
    "connect",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "shutdown",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
];

/// How the filter treats a call that is not on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Log,
    Off,
}

impl Mode {
    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Log => "log",
            Self::Off => "off",
        }
    }

    /// The mode the kernel command line asks for (`enforce` when it names none).
    pub fn from_cmdline(cmdline: &str) -> Result<Self, String> {
        match husk_protocols::cmdline::lookup(cmdline, MODE_KEY) {
            None | Some("enforce") => Ok(Self::Enforce),
            Some("log") => Ok(Self::Log),
            Some("off") => Ok(Self::Off),
            Some(other) => Err(format!("{MODE_KEY}={other}: expected enforce, log or off")),
        }
    }
}

/// The filter as an OCI profile (compiled by rustjail's seccomp module, like containers').
pub fn profile(mode: Mode) -> Result<LinuxSeccomp, String> {
    let default = match mode {
        Mode::Log => "SCMP_ACT_LOG",
        _ => "SCMP_ACT_ERRNO",
    };
    let v = serde_json::json!({
        "defaultAction": default,
        "defaultErrnoRet": libc::EPERM,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ALLOWED, "action": "SCMP_ACT_ALLOW"}],
    });
    serde_json::from_value(v).map_err(|e| format!("the agent's seccomp profile: {e}"))
}

/// Installs the filter on the calling thread (the agent's main thread, before its runtime
/// starts); threads it starts later inherit it.
pub fn apply(mode: Mode) -> Result<(), String> {
    if mode == Mode::Off {
        tracing::warn!("the agent runs without its seccomp filter ({MODE_KEY}=off)");
        return Ok(());
    }
    let filter = rustjail::seccomp::Filter::compile(Some(&profile(mode)?))
        .map_err(|e| format!("compiling the agent's seccomp filter: {e}"))?;
    filter
        .load()
        .map_err(|e| format!("installing the agent's seccomp filter: {e}"))?;
    tracing::info!(
        ?mode,
        allowed = ALLOWED.len(),
        "the agent confined itself with seccomp"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_comes_from_the_command_line() {
        assert_eq!(Mode::from_cmdline("quiet"), Ok(Mode::Enforce));
        assert_eq!(Mode::from_cmdline("husk.agent.seccomp=log"), Ok(Mode::Log));
        assert_eq!(Mode::from_cmdline("husk.agent.seccomp=off"), Ok(Mode::Off));
        assert!(Mode::from_cmdline("husk.agent.seccomp=maybe").is_err());
    }

    #[test]
    fn the_profile_compiles_and_every_name_is_known() {
        for mode in [Mode::Enforce, Mode::Log] {
            rustjail::seccomp::Filter::compile(Some(&profile(mode).unwrap())).unwrap();
        }
        let mut names = ALLOWED.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALLOWED.len(), "a name is listed twice");
    }

    #[test]
    fn a_confined_process_is_refused_what_is_not_listed() {
        // In a forked child: the filter is for good.
        // SAFETY: the child only makes system calls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl(2) with constants; the filter may then load unprivileged.
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let ok = apply(Mode::Enforce).is_ok();
                // SAFETY: plain syscalls on constant arguments.
                let (pid, reboot) = unsafe {
                    (
                        libc::getpid(),
                        libc::syscall(libc::SYS_personality, 0xffff_ffffu64),
                    )
                };
                let errno = std::io::Error::last_os_error().raw_os_error();
                let code = if ok && pid > 0 && reboot == -1 && errno == Some(libc::EPERM) {
                    0
                } else {
                    1
                };
                // SAFETY: _exit(2) ends the child without running the parent's handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
