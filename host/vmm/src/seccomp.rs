//! The seccomp filters the VMM's threads confine themselves with once setup is done (as
//! Firecracker's and Cloud Hypervisor's per-thread filters). A device worker (and a
//! `husk-vhost-user` process) may only do the IO its device needs on descriptors it already
//! holds, plus Unix-socket connects (vsock, vhost-user); no open, exec, ptrace, inet sockets or
//! KVM. A vCPU thread may do that plus KVM ioctls: the driver activates a device with an MMIO
//! write, so the device's worker thread starts on a vCPU thread and inherits its filter (as in
//! Cloud Hypervisor), then narrows itself to the device filter.
//!
//! Owns the allow-lists and installing them. Must never be applied before setup is complete
//! (opening files, creating the VM and memory are not allowed afterwards), and must never be
//! applied to a thread that does anything else (the shim's own threads stay unfiltered: the
//! filter is installed per thread, inherited only by threads that thread creates).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Which kind of thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU's `KVM_RUN` exit loop.
    Vcpu,
    /// A virtio device worker or a vhost-user back end process.
    Device,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
        }
    }
}

/// What a call outside the allow-list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// The process is killed (SIGSYS): a confined thread that strays is compromised.
    #[default]
    Kill,
    /// The call is allowed and logged by the kernel (audit, `dmesg`): for finding what a new
    /// code path needs.
    Log,
    /// The call fails with EPERM (tests use this to observe the filter without dying).
    Deny,
    /// No filter.
    Off,
}

impl std::str::FromStr for Enforcement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" | "kill" => Ok(Self::Kill),
            "log" => Ok(Self::Log),
            "deny" => Ok(Self::Deny),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown seccomp mode {other:?}: use enforce, log, deny or off"
            )),
        }
    }
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {kind} seccomp filter")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("installing the {kind} seccomp filter (does this kernel have CONFIG_SECCOMP_FILTER?)")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// `ioctl` request numbers of the KVM API all have type byte 0xAE.
const KVMIO: u64 = 0xAE;
/// `ioctl(fd, FIONBIO)`: std's `set_nonblocking`.
const FIONBIO: u64 = 0x5421;
/// `ioctl(fd, FIOCLEX)`.
const FIOCLEX: u64 = 0x5451;

/// Calls every Rust thread makes: memory, locks, signals, time, exit, logging to stderr.
const COMMON: &[(&str, i64)] = &[
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("close", libc::SYS_close),
    ("futex", libc::SYS_futex),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    ("mprotect", libc::SYS_mprotect),
    ("brk", libc::SYS_brk),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("sched_yield", libc::SYS_sched_yield),
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("restart_syscall", libc::SYS_restart_syscall),
];

/// Extra calls of a vCPU thread beyond a device worker's (KVM ioctls are allowed by type byte).
/// `seccomp`: a device worker started on a vCPU thread narrows itself further (filters only
/// ever add restrictions).
const VCPU: &[(&str, i64)] = &[("tgkill", libc::SYS_tgkill), ("seccomp", libc::SYS_seccomp)];

/// Extra calls of a device worker: epoll, socket IO, block IO, entropy, thread start-up.
const DEVICE: &[(&str, i64)] = &[
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("eventfd2", libc::SYS_eventfd2),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("preadv2", libc::SYS_preadv2),
    ("pwritev2", libc::SYS_pwritev2),
    ("fdatasync", libc::SYS_fdatasync),
    ("fsync", libc::SYS_fsync),
    ("lseek", libc::SYS_lseek),
    ("fstat", libc::SYS_fstat),
    ("fcntl", libc::SYS_fcntl),
    ("dup", libc::SYS_dup),
    ("getrandom", libc::SYS_getrandom),
    ("recvfrom", libc::SYS_recvfrom),
    ("sendto", libc::SYS_sendto),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("accept4", libc::SYS_accept4),
    ("connect", libc::SYS_connect),
    ("shutdown", libc::SYS_shutdown),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("prctl", libc::SYS_prctl),
];

/// The names of the calls `kind` may make (for `husk check` and docs), sorted.
pub fn allowed_calls(kind: ThreadKind) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = calls(kind).map(|(n, _)| *n).collect();
    names.push(match kind {
        ThreadKind::Vcpu => "ioctl (KVM, FIONBIO, FIOCLEX)",
        ThreadKind::Device => "ioctl (FIONBIO, FIOCLEX)",
    });
    names.push("socket (AF_UNIX only)");
    names.sort_unstable();
    names
}

/// The unconditional calls of `kind`.
fn calls(kind: ThreadKind) -> impl Iterator<Item = &'static (&'static str, i64)> {
    let vcpu: &[(&str, i64)] = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Device => &[],
    };
    COMMON.iter().chain(DEVICE).chain(vcpu)
}

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// A compiled filter for one kind of thread: the allow-list, plus a second program that makes
/// `open`/`openat` fail with EACCES instead of killing (glibc's malloc opens
/// `/proc/sys/vm/overcommit_memory` the first time it shrinks a thread's heap, and copes when
/// it cannot; nothing of ours opens files after setup). Stacked filters take the strictest
/// answer, so the errno wins over the allow-list for those two calls only.
#[derive(Debug, Clone)]
pub struct Filter {
    kind: ThreadKind,
    programs: std::sync::Arc<[BpfProgram]>,
}

impl Filter {
    /// Confines the calling thread (and the threads it creates from now on).
    pub fn install(&self) -> Result<(), SeccompError> {
        self.install_with(seccompiler::apply_filter)
    }

    fn install_with(
        &self,
        install: fn(&[seccompiler::sock_filter]) -> seccompiler::Result<()>,
    ) -> Result<(), SeccompError> {
        for program in self.programs.iter() {
            install(program).map_err(|source| SeccompError::Install {
                kind: self.kind.name(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Compiles the filter for `kind`; `None` when `enforcement` is [`Enforcement::Off`].
pub fn filter(kind: ThreadKind, enforcement: Enforcement) -> Result<Option<Filter>, SeccompError> {
    let mismatch = match enforcement {
        Enforcement::Off => return Ok(None),
        Enforcement::Kill => SeccompAction::KillProcess,
        Enforcement::Log => SeccompAction::Log,
        Enforcement::Deny => SeccompAction::Errno(libc::EPERM as u32),
    };
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls(kind).map(|(_, nr)| (*nr, Vec::new())).collect();
    let mut ioctl: Vec<SeccompRule> = [FIONBIO, FIOCLEX]
        .into_iter()
        .map(|req| {
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, req).map_err(build)?]).map_err(build)
        })
        .collect::<Result<_, _>>()?;
    if kind == ThreadKind::Vcpu {
        ioctl.push(
            SeccompRule::new(vec![
                cond(1, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8).map_err(build)?
            ])
            .map_err(build)?,
        );
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![
            cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64).map_err(build)?
        ])
        .map_err(build)?],
    );
    // The errno program lists open and openat as "allowed" in the allow-list too, so that the
    // allow-list does not kill them: the stricter errno answer is what the thread gets.
    rules.insert(libc::SYS_open, Vec::new());
    rules.insert(libc::SYS_openat, Vec::new());
    let allow = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    let opens = [libc::SYS_open, libc::SYS_openat]
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let no_open = SeccompFilter::new(
        opens,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    // The errno program first: once the allow-list is in, `seccomp` itself may be refused.
    let programs: Vec<BpfProgram> = vec![
        no_open.try_into().map_err(build)?,
        allow.try_into().map_err(build)?,
    ];
    Ok(Some(Filter {
        kind,
        programs: programs.into(),
    }))
}

/// Confines every thread of the process (a `husk-vhost-user` process, after setup).
pub fn apply_to_process(kind: ThreadKind, enforcement: Enforcement) -> Result<(), SeccompError> {
    match filter(kind, enforcement)? {
        Some(f) => {
            f.install_with(seccompiler::apply_filter_all_threads)?;
            tracing::debug!(
                thread = kind.name(),
                ?enforcement,
                "seccomp filter installed"
            );
            Ok(())
        }
        None => Ok(()),
    }
}

/// Whether this kernel can install seccomp filters (`/proc/sys/kernel/seccomp/actions_avail`
/// lists `kill_process`), for `husk check`.
pub fn kernel_supports_filters() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
        .map(|a| a.split_whitespace().any(|x| x == "kill_process"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// Runs `f` on a fresh thread confined with `kind` in deny mode (so a stray call is seen as
    /// EPERM instead of killing the test process).
    fn confined<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            filter(kind, Enforcement::Deny)
                .unwrap()
                .unwrap()
                .install()
                .unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn filters_compile_for_every_kind_and_off_means_none() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Device] {
            for e in [Enforcement::Kill, Enforcement::Log, Enforcement::Deny] {
                assert!(filter(kind, e).unwrap().is_some());
            }
            assert!(filter(kind, Enforcement::Off).unwrap().is_none());
            assert!(allowed_calls(kind).contains(&"futex"));
        }
        assert_eq!("enforce".parse(), Ok(Enforcement::Kill));
        assert!("bogus".parse::<Enforcement>().is_err());
    }

    #[test]
    fn a_device_thread_does_socket_io_but_cannot_open_files_or_inet_sockets() {
        // Sockets are made during setup; the worker only uses them.
        let (a, b) = UnixStream::pair().unwrap();
        let (open, inet, pair) = confined(ThreadKind::Device, move || {
            let open = std::fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            // SAFETY: plain syscall; the fd (if any) is closed below.
            let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let inet_err = std::io::Error::last_os_error().raw_os_error();
            if inet >= 0 {
                // SAFETY: closing the fd just created.
                unsafe { libc::close(inet) };
            }
            let pair = (|| {
                use std::io::{Read, Write};
                a.set_nonblocking(true)?;
                (&a).write_all(b"x")?;
                let mut buf = [0u8; 1];
                (&b).read_exact(&mut buf)?;
                std::io::Result::Ok(buf[0])
            })();
            (open, (inet, inet_err), pair.map_err(|e| e.to_string()))
        });
        // Opens fail softly (EACCES, see `Filter`); everything else outside the list is denied.
        assert_eq!(open.unwrap_err(), Some(libc::EACCES));
        assert_eq!(inet, (-1, Some(libc::EPERM)));
        assert_eq!(pair, Ok(b'x'));
    }

    #[test]
    fn a_vcpu_thread_cannot_open_files_or_make_non_kvm_ioctls() {
        let (open, ioctl) = confined(ThreadKind::Vcpu, || {
            let open = std::fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            // SAFETY: TIOCGWINSZ on stdin with a valid out pointer; only the error matters.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let rc = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
            (
                open.map(|_| ()),
                (rc, std::io::Error::last_os_error().raw_os_error()),
            )
        });
        assert_eq!(open, Err(Some(libc::EACCES)));
        assert_eq!(ioctl, (-1, Some(libc::EPERM)));
    }
}
