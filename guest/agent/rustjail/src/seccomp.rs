//! Seccomp for containers: the spec's `linux.seccomp` profile, or husk's default profile
//! (equivalent to containerd's) when the spec has none, compiled with libseccomp into a BPF
//! program that the container's process installs just before `execve`.
//!
//! Owns the translation of an OCI profile into a filter: every field is checked, libseccomp
//! builds the program, and husk prepends a short prologue that answers syscalls newer than the
//! profile with `ENOSYS` (as runc does). Compiling happens in the agent, where allocating is
//! fine; [`Filter::load`] allocates nothing and makes one `seccomp(2)` call, so the jail can
//! run it after `fork` in a process that had threads.
//!
//! Must never install a filter in the agent itself: [`Filter::load`] runs only in the
//! container's own process. Must never set `no_new_privs`: that is the spec's decision
//! (`process.noNewPrivileges`), taken by the jail, which loads the filter either while it still
//! holds `CAP_SYS_ADMIN` or after setting `no_new_privs` itself. libseccomp's own loader (which
//! sets `no_new_privs` by default) is therefore never used, and its `SCMP_FLTATR_CTL_NNP`
//! attribute is turned off on every context for good measure.

use std::fs::File;
use std::io::{Read, Seek};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::errno::Errno;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

/// The capabilities a container gets when its spec does not say (the OCI and containerd
/// default set); [`Filter::compile`] builds the default profile for them when given no profile.
pub use husk_protocols::capabilities::CONTAINER_DEFAULTS as DEFAULT_CAPABILITIES;

/// The kernel's limit on a seccomp program's length (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;
/// The largest errno `SECCOMP_RET_ERRNO` can return (the kernel's `MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;
/// On x86_64, x32 syscall numbers carry this bit (`__X32_SYSCALL_BIT`).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Why a profile could not be compiled or loaded. Each message names the field or syscall.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A field of `linux.seccomp` has a value husk refuses; `field` is its path in the spec.
    #[error("{field} {problem}")]
    Invalid { field: String, problem: String },
    /// libseccomp refused something; `what` says what was being done.
    #[error("{what}: libseccomp: {source}")]
    Libseccomp {
        what: String,
        source: libseccomp::error::SeccompError,
    },
    /// The compiled program could not be read back from libseccomp.
    #[error("reading the compiled filter back from libseccomp: {source}")]
    Export { source: std::io::Error },
    /// The program is longer than the kernel accepts.
    #[error(
        "the profile compiles to {0} BPF instructions, more than the kernel's limit of \
         {MAX_INSTRUCTIONS}"
    )]
    TooLarge(usize),
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {}", load_hint(*.0))]
    Load(Errno),
    /// With `SECCOMP_FILTER_FLAG_TSYNC`, this thread could not take the filter.
    #[error(
        "installing the seccomp filter: thread {0} could not be synchronised \
         (SECCOMP_FILTER_FLAG_TSYNC)"
    )]
    Tsync(libc::c_long),
}

fn load_hint(errno: Errno) -> String {
    match errno {
        Errno::EACCES => {
            "EACCES: the process has neither no_new_privs set nor CAP_SYS_ADMIN".into()
        }
        Errno::EINVAL => "EINVAL: the kernel refused the program or one of its flags".into(),
        other => format!("{other}: {}", other.desc()),
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> SeccompError {
    SeccompError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

fn libseccomp_err(
    what: impl Into<String>,
) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Libseccomp { what, source }
}

/// One BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

// Classic BPF opcodes the prologue uses (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGT_K: u16 = 0x25;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// A compiled filter, ready to install in the container's process. Plain data: it can be
/// cloned, sent between threads and kept across `fork`.
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<Insn>,
    /// `SECCOMP_FILTER_FLAG_*` for `seccomp(SECCOMP_SET_MODE_FILTER, ...)`.
    flags: libc::c_ulong,
}

impl Filter {
    /// Compiles `profile` (the spec's `linux.seccomp`), or the default profile for
    /// [`DEFAULT_CAPABILITIES`] when `None`. A jail that knows the process's bounding set
    /// should pass `Some(&default_profile(&bounding))` instead, so that the syscalls the
    /// default profile gates on capabilities follow the container's real capabilities.
    ///
    /// Every field is checked and a bad one is an error naming it, so a bad profile is refused
    /// at create time. A syscall name libseccomp does not know is skipped (profiles list the
    /// syscalls of newer kernels); an architecture libseccomp does not know is skipped too.
    pub fn compile(profile: Option<&LinuxSeccomp>) -> Result<Self, SeccompError> {
        match profile {
            Some(profile) => compile_profile(profile),
            None => {
                let caps: Vec<String> = DEFAULT_CAPABILITIES
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect();
                compile_profile(&default_profile(&caps))
            }
        }
    }

    /// Installs the filter in the calling thread (all threads with
    /// `SECCOMP_FILTER_FLAG_TSYNC`): the single-threaded jail process, just before `execve`.
    /// Allocates nothing. The caller must have set `no_new_privs` or hold `CAP_SYS_ADMIN`;
    /// this never sets `no_new_privs`.
    pub fn load(&self) -> Result<(), SeccompError> {
        let prog = libc::sock_fprog {
            // compile() keeps the program at or under MAX_INSTRUCTIONS, which fits in a u16.
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` describes `self.program`, a live array of `len` instructions whose
        // layout (`Insn`, repr(C): u16, u8, u8, u32) is the kernel's `struct sock_filter`; the
        // kernel only reads it, copying the program before the call returns.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        match rc {
            0 => Ok(()),
            tid if tid > 0 => Err(SeccompError::Tsync(tid)),
            _ => Err(SeccompError::Load(Errno::last())),
        }
    }

    /// How many BPF instructions the filter has.
    pub fn instructions(&self) -> usize {
        self.program.len()
    }
}

/// A short report for the agent's guest details and `husk check`: the libseccomp in use and
/// whether the default profile compiles.
pub fn describe() -> String {
    let library = match libseccomp::ScmpVersion::current() {
        Ok(v) => format!("libseccomp {}.{}.{}", v.major, v.minor, v.micro),
        Err(e) => format!("libseccomp (version unknown: {e})"),
    };
    let api = libseccomp::get_api();
    let default = match Filter::compile(None) {
        Ok(f) => format!(
            "default profile (containerd's, errno EPERM) active for containers whose spec has \
             none ({} BPF instructions with the default capabilities)",
            f.instructions()
        ),
        Err(e) => format!("default profile does not compile: {e}"),
    };
    format!("seccomp: {library}, API level {api}; {default}")
}

fn compile_profile(profile: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    if let Some(path) = profile.listener_path() {
        return Err(invalid(
            "linux.seccomp.listenerPath",
            format!(
                "{} is not supported: husk runs no seccomp agent inside the guest",
                path.display()
            ),
        ));
    }
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(libseccomp_err("creating the filter"))?;
    ctx.set_ctl_nnp(false)
        .map_err(libseccomp_err("turning off libseccomp's no_new_privs"))?;

    // Architectures first: libseccomp applies a rule to the architectures present when the
    // rule is added. The native one is always there.
    let mut arches = vec![ScmpArch::native()];
    for (i, arch) in profile.architectures().iter().flatten().enumerate() {
        let scmp = scmp_arch(*arch);
        if scmp == ScmpArch::Native || arches.contains(&scmp) {
            continue;
        }
        match ctx.add_arch(scmp) {
            Ok(_) => arches.push(scmp),
            Err(e) => tracing::debug!(
                "seccomp: skipping linux.seccomp.architectures[{i}] {arch}: libseccomp does not \
                 know it ({e})"
            ),
        }
    }

    let mut flags: libc::c_ulong = 0;
    for flag in profile.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                flags |= libc::SECCOMP_FILTER_FLAG_TSYNC
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => flags |= libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                flags |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // Only meaningful with a notification listener, which is refused anyway.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => tracing::debug!(
                "seccomp: ignoring SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (no SCMP_ACT_NOTIFY)"
            ),
        }
    }

    // Every name libseccomp knows, whatever its action: the ENOSYS prologue's reference.
    let mut known: Vec<&str> = Vec::new();
    for (i, call) in profile.syscalls().iter().flatten().enumerate() {
        add_syscall_rules(&mut ctx, default, i, call, &mut known)?;
    }

    let mut program = enosys_prologue(default, &arches, &known);
    program.extend(export(&ctx)?);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge(program.len()));
    }
    Ok(Filter { program, flags })
}

/// Adds the rules of `linux.seccomp.syscalls[i]`.
fn add_syscall_rules<'a>(
    ctx: &mut ScmpFilterContext,
    default: ScmpAction,
    i: usize,
    call: &'a LinuxSyscall,
    known: &mut Vec<&'a str>,
) -> Result<(), SeccompError> {
    let field = format!("linux.seccomp.syscalls[{i}]");
    let act = action(
        call.action(),
        call.errno_ret(),
        &format!("{field}.action"),
        &format!("{field}.errnoRet"),
    )?;
    if call.names().is_empty() {
        return Err(invalid(format!("{field}.names"), "is empty"));
    }
    for (j, name) in call.names().iter().enumerate() {
        check_name(name, &format!("{field}.names[{j}]"))?;
    }
    let rules = conditions(call.args().as_deref().unwrap_or_default(), &field)?;
    for name in call.names() {
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            tracing::debug!("seccomp: skipping {field} {name:?}: libseccomp does not know it");
            continue;
        };
        known.push(name);
        if act == default {
            // libseccomp refuses a rule whose action is the default one; it changes nothing.
            tracing::debug!("seccomp: skipping {field} {name:?}: its action is the default action");
            continue;
        }
        for conds in &rules {
            ctx.add_rule_conditional(act, syscall, conds)
                .map_err(libseccomp_err(format!(
                    "adding the rule of {field} {name:?}"
                )))?;
        }
    }
    Ok(())
}

/// A syscall name: letters, digits and `_`, as libseccomp spells them.
fn check_name(name: &str, field: &str) -> Result<(), SeccompError> {
    if name.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(invalid(field, format!("{name:?} is not a syscall name")));
    }
    Ok(())
}

/// The rules for one syscall entry's `args`, each a list of conditions ANDed together. As in
/// runc, conditions on different arguments make one rule; if an argument index appears more
/// than once, each condition becomes a rule of its own (so they are ORed).
fn conditions(
    args: &[LinuxSeccompArg],
    field: &str,
) -> Result<Vec<Vec<ScmpArgCompare>>, SeccompError> {
    let mut conds = Vec::with_capacity(args.len());
    let mut per_index = [0usize; 6];
    for (k, arg) in args.iter().enumerate() {
        let index = arg.index();
        if index > 5 {
            return Err(invalid(
                format!("{field}.args[{k}].index"),
                format!("{index} is out of range 0-5"),
            ));
        }
        per_index[index] += 1;
        let (op, datum) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
            LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
            LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
            LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
            LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
            LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
            // OCI (as libseccomp): `value` is the mask, `valueTwo` what the masked argument
            // must equal.
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            ),
        };
        // index <= 5 was checked above.
        conds.push(ScmpArgCompare::new(index as u32, op, datum));
    }
    if per_index.iter().any(|&n| n > 1) {
        Ok(conds.into_iter().map(|c| vec![c]).collect())
    } else {
        Ok(vec![conds])
    }
}

/// The libseccomp action for an OCI action and its `errnoRet`.
fn action(
    act: LinuxSeccompAction,
    errno_ret: Option<u32>,
    action_field: &str,
    errno_field: &str,
) -> Result<ScmpAction, SeccompError> {
    let eperm = libc::EPERM as u32;
    let takes_value = matches!(
        act,
        LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
    );
    if let (Some(value), false) = (errno_ret, takes_value) {
        // As runc: only ERRNO and TRACE use it.
        tracing::debug!("seccomp: ignoring {errno_field} {value}: {act} takes no value");
    }
    Ok(match act {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActErrno => {
            let errno = errno_ret.unwrap_or(eperm);
            if errno > MAX_ERRNO {
                return Err(invalid(
                    errno_field,
                    format!("{errno} is out of range 0-{MAX_ERRNO}"),
                ));
            }
            // errno <= MAX_ERRNO fits in an i32.
            ScmpAction::Errno(errno as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            let value = errno_ret.unwrap_or(eperm);
            let value = u16::try_from(value)
                .map_err(|_| invalid(errno_field, format!("{value} is out of range 0-65535")))?;
            ScmpAction::Trace(value)
        }
        LinuxSeccompAction::ScmpActNotify => {
            return Err(invalid(
                action_field,
                "SCMP_ACT_NOTIFY is not supported: husk runs no seccomp agent inside the guest",
            ))
        }
    })
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

/// Which syscall numbers of an architecture the ENOSYS prologue looks at on x86_64, where
/// x86_64 and x32 share one audit architecture.
#[derive(Clone, Copy, PartialEq, Eq)]
enum X32Bit {
    /// Any number (the architecture has no x32 mode).
    Any,
    /// Numbers without the x32 bit (x86_64 proper).
    Clear,
    /// Numbers with the x32 bit.
    Set,
}

/// The kernel's `AUDIT_ARCH_*` for the architectures the prologue covers: those a process can
/// run on an x86_64 or arm64 guest, and riscv64. Others get no prologue.
fn audit_arch(arch: ScmpArch) -> Option<(u32, X32Bit)> {
    match arch {
        ScmpArch::X8664 => Some((0xc000_003e, X32Bit::Clear)),
        ScmpArch::X32 => Some((0xc000_003e, X32Bit::Set)),
        ScmpArch::X86 => Some((0x4000_0003, X32Bit::Any)),
        ScmpArch::Aarch64 => Some((0xc000_00b7, X32Bit::Any)),
        ScmpArch::Arm => Some((0x4000_0028, X32Bit::Any)),
        ScmpArch::Riscv64 => Some((0xc000_00f3, X32Bit::Any)),
        _ => None,
    }
}

/// Instructions that answer `ENOSYS` to every syscall numbered above the highest one the
/// profile names (per architecture), before libseccomp's program runs. Without them a syscall
/// newer than the profile (or than libseccomp) gets the default action, typically `EPERM`,
/// and programs that probe a new syscall and fall back on `ENOSYS` (glibc does) break. Like
/// runc, nothing is added when the default action lets syscalls through (allow, log, trace).
fn enosys_prologue(default: ScmpAction, arches: &[ScmpArch], known: &[&str]) -> Vec<Insn> {
    if matches!(
        default,
        ScmpAction::Allow | ScmpAction::Log | ScmpAction::Trace(_)
    ) {
        return Vec::new();
    }
    let ret_enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut out = Vec::new();
    for &arch in arches {
        let Some((audit, x32)) = audit_arch(resolve_native(arch)) else {
            continue;
        };
        let highest = known
            .iter()
            .filter_map(|name| ScmpSyscall::from_name_by_arch(name, arch).ok())
            .map(|s| s.as_raw_syscall())
            .filter(|&nr| nr >= 0)
            .max();
        let Some(highest) = highest else {
            continue;
        };
        // One self-contained block per architecture: not this architecture (or not this x32
        // mode), or a number the profile covers: fall through to the next block.
        let mut block = vec![Insn {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: DATA_ARCH,
        }];
        let jeq = block.len();
        block.push(Insn {
            code: BPF_JEQ_K,
            jt: 0,
            jf: 0,
            k: audit,
        });
        block.push(Insn {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: DATA_NR,
        });
        match x32 {
            X32Bit::Any => {}
            X32Bit::Clear => block.push(Insn {
                code: BPF_JSET_K,
                jt: 2,
                jf: 0,
                k: X32_SYSCALL_BIT,
            }),
            X32Bit::Set => block.push(Insn {
                code: BPF_JSET_K,
                jt: 0,
                jf: 2,
                k: X32_SYSCALL_BIT,
            }),
        }
        // highest >= 0 was checked above.
        block.push(Insn {
            code: BPF_JGT_K,
            jt: 0,
            jf: 1,
            k: highest as u32,
        });
        block.push(Insn {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: ret_enosys,
        });
        // The block has at most 6 instructions, so the jump fits in a u8.
        block[jeq].jf = (block.len() - jeq - 1) as u8;
        out.extend(block);
    }
    out
}

fn resolve_native(arch: ScmpArch) -> ScmpArch {
    if arch == ScmpArch::Native {
        ScmpArch::native()
    } else {
        arch
    }
}

/// libseccomp's program for `ctx`, read back through a memfd.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<Insn>, SeccompError> {
    let fd = nix::sys::memfd::memfd_create(
        c"husk-seccomp",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .map_err(|e| SeccompError::Export { source: e.into() })?;
    ctx.export_bpf(&fd)
        .map_err(libseccomp_err("exporting the filter"))?;
    let mut file = File::from(fd);
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|source| SeccompError::Export { source })?;
    if bytes.len() % 8 != 0 {
        return Err(SeccompError::Export {
            source: std::io::Error::other(format!(
                "{} bytes is not a whole number of instructions",
                bytes.len()
            )),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|b| Insn {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The default profile.
//
// husk's own arrangement of the syscalls containerd's default profile (1.6/1.7) allows, grouped
// by what they touch. A name libseccomp does not know is skipped when compiling, so listing the
// syscalls of newer kernels is harmless.

/// Processes, threads and their limits.
#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid", "waitpid",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "process_mrelease",
    "getpid", "getppid", "gettid", "getpgid", "getpgrp", "setpgid", "getsid", "setsid",
    "set_tid_address", "set_robust_list", "get_robust_list", "set_thread_area",
    "get_thread_area", "rseq", "restart_syscall", "prctl", "capget", "capset", "seccomp",
    "membarrier", "ptrace", "getrlimit", "setrlimit", "ugetrlimit", "prlimit64", "getrusage",
    "times", "getpriority", "setpriority", "ioprio_get", "ioprio_set", "landlock_create_ruleset",
    "landlock_add_rule", "landlock_restrict_self", "uname", "sysinfo", "getcpu", "getrandom",
];

/// The scheduler.
#[rustfmt::skip]
const SCHEDULING: &[&str] = &[
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
];

/// User and group ids (16- and 32-bit variants).
#[rustfmt::skip]
const IDENTITY: &[&str] = &[
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
    "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32", "setuid",
    "setuid32", "setgid", "setgid32", "setreuid", "setreuid32", "setregid", "setregid32",
    "setresuid", "setresuid32", "setresgid", "setresgid32", "setgroups", "setgroups32", "setfsuid",
    "setfsuid32", "setfsgid", "setfsgid32",
];

/// Memory and futexes.
#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock",
    "mlock2", "mlockall", "munlock", "munlockall", "remap_file_pages", "memfd_create",
    "memfd_secret", "map_shadow_stack", "futex", "futex_time64", "futex_waitv", "futex_wait",
    "futex_wake", "futex_requeue",
];

/// Paths: opening, creating, naming, metadata.
#[rustfmt::skip]
const PATHS: &[&str] = &[
    "open", "openat", "openat2", "creat", "close", "close_range", "access", "faccessat",
    "faccessat2", "chdir", "fchdir", "getcwd", "umask", "mkdir", "mkdirat", "mknod", "mknodat",
    "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link", "linkat", "symlink",
    "symlinkat", "readlink", "readlinkat", "getdents", "getdents64", "chmod", "fchmod", "fchmodat",
    "fchmodat2", "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat", "statx",
    "statfs", "statfs64", "fstatfs", "fstatfs64", "truncate", "truncate64", "ftruncate",
    "ftruncate64", "utime", "utimes", "utimensat", "utimensat_time64", "futimesat",
];

/// Extended attributes.
#[rustfmt::skip]
const XATTRS: &[&str] = &[
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
];

/// Reading, writing and controlling open files.
#[rustfmt::skip]
const FILE_IO: &[&str] = &[
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64", "pwritev",
    "pwritev2", "lseek", "_llseek", "sendfile", "sendfile64", "splice", "tee", "vmsplice",
    "copy_file_range", "fallocate", "fadvise64", "fadvise64_64", "readahead", "cachestat", "fsync",
    "fdatasync", "sync", "syncfs", "sync_file_range", "flock", "fcntl", "fcntl64", "ioctl", "dup",
    "dup2", "dup3", "pipe", "pipe2",
];

/// Waiting for events: polling, notification descriptors, asynchronous I/O.
#[rustfmt::skip]
const EVENTS: &[&str] = &[
    "poll", "ppoll", "ppoll_time64", "select", "_newselect", "pselect6", "pselect6_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait", "epoll_wait_old",
    "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime",
    "timerfd_gettime64", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "fanotify_mark", "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
];

/// Signals.
#[rustfmt::skip]
const SIGNALS: &[&str] = &[
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "sigaltstack", "sigprocmask", "sigreturn", "pause", "alarm",
];

/// Clocks, sleeping and timers (reading clocks; setting them is gated on CAP_SYS_TIME).
#[rustfmt::skip]
const TIME: &[&str] = &[
    "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64", "clock_nanosleep",
    "clock_nanosleep_time64", "clock_adjtime", "clock_adjtime64", "adjtimex", "nanosleep",
    "gettimeofday", "time", "getitimer", "setitimer", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
];

/// Sockets.
#[rustfmt::skip]
const NETWORK: &[&str] = &[
    "socket", "socketpair", "socketcall", "bind", "listen", "accept", "accept4", "connect",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown", "send", "sendto",
    "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
];

/// System V and POSIX IPC.
#[rustfmt::skip]
const IPC: &[&str] = &[
    "ipc", "msgget", "msgctl", "msgsnd", "msgrcv", "semget", "semctl", "semop", "semtimedop",
    "semtimedop_time64", "shmget", "shmat", "shmdt", "shmctl", "mq_open", "mq_unlink",
    "mq_getsetattr", "mq_notify", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64",
];

/// Syscalls only some architectures have.
#[cfg(target_arch = "x86_64")]
const ARCH_SPECIFIC: &[&str] = &["arch_prctl", "modify_ldt"];
#[cfg(target_arch = "aarch64")]
#[rustfmt::skip]
const ARCH_SPECIFIC: &[&str] = &[
    "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
    "set_tls",
];
#[cfg(target_arch = "riscv64")]
const ARCH_SPECIFIC: &[&str] = &["riscv_flush_icache"];
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const ARCH_SPECIFIC: &[&str] = &[];

/// The architectures of the default profile: the native one and those its processes may also
/// run (32-bit x86 and x32 on x86_64, 32-bit arm on arm64).
#[cfg(target_arch = "x86_64")]
const ARCHES: &[Arch] = &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32];
#[cfg(target_arch = "aarch64")]
const ARCHES: &[Arch] = &[Arch::ScmpArchArm, Arch::ScmpArchAarch64];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCHES: &[Arch] = &[Arch::ScmpArchNative];

/// `personality(2)` values allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and
/// 0xffffffff (query the current persona).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN: NEWNS, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET, NEWCGROUP.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// Extra syscalls per capability the process keeps (its bounding set).
#[rustfmt::skip]
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYS_ADMIN", &[
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree",
        "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns",
        "syslog", "umount", "umount2", "unshare",
    ]),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["init_module", "finit_module", "delete_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &[
        "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
        "ptrace",
    ]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

fn allow(names: &[&str]) -> LinuxSyscall {
    let mut call = LinuxSyscall::default();
    call.set_names(names.iter().map(|n| (*n).to_owned()).collect());
    call.set_action(LinuxSeccompAction::ScmpActAllow);
    call
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value)
        .value_two(value_two)
        .build()
        .expect("every field of LinuxSeccompArg has a default, so its builder cannot fail")
}

/// Whether `caps` holds `cap`; names are compared without case and with or without `CAP_`.
fn has_cap(caps: &[String], cap: &str) -> bool {
    let bare = cap.trim_start_matches("CAP_");
    caps.iter().any(|c| {
        let c = c.trim();
        let c = c
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("CAP_"))
            .map_or(c, |_| &c[4..]);
        c.eq_ignore_ascii_case(bare)
    })
}

/// husk's default profile, applied when a spec has none: equivalent to containerd's default
/// (`contrib/seccomp`, 1.6/1.7) for a process whose capability bounding set is `caps` (names
/// such as `"CAP_SYS_ADMIN"`; see [`DEFAULT_CAPABILITIES`]).
///
/// Unlisted syscalls fail with `EPERM`. Allowed: the ordinary syscalls, `personality` with the
/// usual personas only, `clone` without namespace flags and `clone3` answering `ENOSYS` (so
/// glibc falls back to `clone`) unless `CAP_SYS_ADMIN`, and per capability the syscalls it
/// governs (`CAP_SYS_ADMIN`: mount, unshare, setns, ...; `CAP_SYS_PTRACE`, `CAP_SYS_MODULE`,
/// `CAP_SYS_BOOT`, `CAP_SYS_TIME`, `CAP_SYS_NICE`, `CAP_SYS_PACCT`, `CAP_SYS_RAWIO`,
/// `CAP_SYS_CHROOT`, `CAP_SYSLOG`, `CAP_SYS_TTY_CONFIG`, `CAP_DAC_READ_SEARCH`, `CAP_BPF`,
/// `CAP_PERFMON`). `ptrace` itself is allowed to all, as containerd does on kernels from 4.8 on
/// (husk's guest kernel is newer); the kernel still refuses tracing without the right to.
pub fn default_profile(caps: &[String]) -> LinuxSeccomp {
    let mut base: Vec<&str> = Vec::new();
    for group in [
        PROCESSES,
        SCHEDULING,
        IDENTITY,
        MEMORY,
        PATHS,
        XATTRS,
        FILE_IO,
        EVENTS,
        SIGNALS,
        TIME,
        NETWORK,
        IPC,
        ARCH_SPECIFIC,
    ] {
        base.extend_from_slice(group);
    }
    let mut syscalls = vec![allow(&base)];
    for &persona in PERSONALITIES {
        let mut call = allow(&["personality"]);
        call.set_args(Some(vec![arg(
            0,
            LinuxSeccompOperator::ScmpCmpEq,
            persona,
            0,
        )]));
        syscalls.push(call);
    }
    for (cap, names) in BY_CAPABILITY {
        if has_cap(caps, cap) {
            syscalls.push(allow(names));
        }
    }
    if !has_cap(caps, "CAP_SYS_ADMIN") {
        // On s390 clone's flags are its second argument.
        let flags_index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        let mut clone = allow(&["clone"]);
        clone.set_args(Some(vec![arg(
            flags_index,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NAMESPACES,
            0,
        )]));
        syscalls.push(clone);
        // clone3's flags are behind a pointer, out of seccomp's reach: ENOSYS makes glibc fall
        // back to clone, whose flags the rule above checks.
        let mut clone3 = LinuxSyscall::default();
        clone3.set_names(vec!["clone3".to_owned()]);
        clone3.set_action(LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(clone3);
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_default_errno_ret(Some(libc::EPERM as u32));
    profile.set_architectures(Some(ARCHES.to_vec()));
    profile.set_syscalls(Some(syscalls));
    profile
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use std::ffi::{CStr, CString};
    use std::os::fd::AsRawFd;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn parse(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("a well-formed profile")
    }

    fn compile(json: &str) -> Filter {
        Filter::compile(Some(&parse(json))).expect("the profile compiles")
    }

    fn refusal(json: &str) -> String {
        Filter::compile(Some(&parse(json)))
            .expect_err("the profile is refused")
            .to_string()
    }

    /// Runs `child` in a forked child and returns how the child ended. The child must do only
    /// async-signal-safe things (raw syscalls on data prepared before the fork, no allocation)
    /// and returns its exit code.
    fn in_child(child: impl FnOnce() -> i32) -> WaitStatus {
        // SAFETY: the child only runs `child`, which keeps to raw syscalls on memory prepared
        // before the fork, then leaves with `_exit`; the parent only waits for it.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                let code = child();
                // SAFETY: `_exit` ends the child at once, running none of the parent's
                // destructors or atexit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
        }
    }

    fn exit_code(status: WaitStatus) -> i32 {
        match status {
            WaitStatus::Exited(_, code) => code,
            other => panic!("the child ended with {other:?}"),
        }
    }

    /// Sets no_new_privs, so that loading a filter needs no privilege.
    fn set_no_new_privs() -> bool {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 }
    }

    fn no_new_privs() -> libc::c_int {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) }
    }

    /// Whether a raw syscall's result is a failure with `errno`.
    fn failed_with(rc: libc::c_long, errno: i32) -> bool {
        rc == -1 && Errno::last_raw() == errno
    }

    /// Sets no_new_privs and loads `filter`; 0 if both worked.
    fn confine(filter: &Filter) -> i32 {
        if !set_no_new_privs() {
            return 2;
        }
        if filter.load().is_err() {
            return 3;
        }
        0
    }

    /// The names a profile allows unconditionally.
    fn allowed(profile: &LinuxSeccomp) -> Vec<String> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|c| c.action() == LinuxSeccompAction::ScmpActAllow && c.args().is_none())
            .flat_map(|c| c.names().clone())
            .collect()
    }

    #[test]
    fn default_profile_compiles_for_the_default_and_for_all_capabilities() {
        let f = Filter::compile(None).expect("default profile");
        assert!(f.instructions() > 100 && f.instructions() <= MAX_INSTRUCTIONS);
        let all: Vec<String> = BY_CAPABILITY.iter().map(|(c, _)| (*c).to_owned()).collect();
        Filter::compile(Some(&default_profile(&all))).expect("default profile, all capabilities");
        Filter::compile(Some(&default_profile(&[]))).expect("default profile, no capabilities");
    }

    #[test]
    fn default_profile_gates_syscalls_on_capabilities() {
        let plain = default_profile(&caps(DEFAULT_CAPABILITIES));
        assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(plain.default_errno_ret(), Some(libc::EPERM as u32));
        let names = allowed(&plain);
        for ordinary in [
            "read",
            "openat",
            "getrandom",
            "rseq",
            "arch_prctl",
            "chroot",
            "ptrace",
        ] {
            assert!(names.iter().any(|n| n == ordinary), "{ordinary} is allowed");
        }
        for privileged in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "kexec_load",
            "reboot",
            "init_module",
            "clone",
            "clone3",
            "settimeofday",
            "acct",
            "iopl",
        ] {
            assert!(
                !names.iter().any(|n| n == privileged),
                "{privileged} is not allowed"
            );
        }
        let calls = plain.syscalls().as_deref().unwrap_or_default();
        let clone = calls
            .iter()
            .find(|c| c.names() == &["clone"])
            .expect("a clone rule");
        let args = clone.args().as_deref().unwrap_or_default();
        assert_eq!(args.len(), 1);
        assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(args[0].value(), 0x7e02_0000);
        let clone3 = calls
            .iter()
            .find(|c| c.names() == &["clone3"])
            .expect("a clone3 rule");
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));
        let personas = calls
            .iter()
            .filter(|c| c.names() == &["personality"])
            .count();
        assert_eq!(personas, PERSONALITIES.len());

        // Capability names are matched without case and with or without the prefix.
        let admin = default_profile(&caps(&["sys_admin", "CAP_SYS_PTRACE", "BPF"]));
        let names = allowed(&admin);
        for granted in [
            "mount",
            "unshare",
            "setns",
            "clone",
            "clone3",
            "process_vm_readv",
            "bpf",
        ] {
            assert!(
                names.iter().any(|n| n == granted),
                "{granted} is allowed with the caps"
            );
        }
        let calls = admin.syscalls().as_deref().unwrap_or_default();
        assert!(!calls
            .iter()
            .any(|c| c.action() == LinuxSeccompAction::ScmpActErrno));
        assert!(!names.iter().any(|n| n == "reboot"));
    }

    #[test]
    fn bad_fields_are_refused_with_their_path_and_value() {
        let notify =
            "SCMP_ACT_NOTIFY is not supported: husk runs no seccomp agent inside the guest";
        let cases = [
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["read"],"action":"SCMP_ACT_ERRNO"},
                    {"names":["personality"],"action":"SCMP_ACT_ERRNO",
                     "args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
                "linux.seccomp.syscalls[1].args[0].index 7 is out of range 0-5".to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
                format!("linux.seccomp.defaultAction {notify}"),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
                format!("linux.seccomp.syscalls[0].action {notify}"),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock"}"#,
                "linux.seccomp.listenerPath /run/agent.sock is not supported: husk runs no \
                 seccomp agent inside the guest"
                    .to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["read",""],"action":"SCMP_ACT_ERRNO"}]}"#,
                "linux.seccomp.syscalls[0].names[1] is empty".to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["mk\u0000dir"],"action":"SCMP_ACT_ERRNO"}]}"#,
                r#"linux.seccomp.syscalls[0].names[0] "mk\0dir" is not a syscall name"#.to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["mkdir; rm"],"action":"SCMP_ACT_ERRNO"}]}"#,
                r#"linux.seccomp.syscalls[0].names[0] "mkdir; rm" is not a syscall name"#
                    .to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":[],"action":"SCMP_ACT_ERRNO"}]}"#,
                "linux.seccomp.syscalls[0].names is empty".to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":5000}]}"#,
                "linux.seccomp.syscalls[0].errnoRet 5000 is out of range 0-4095".to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":70000}"#,
                "linux.seccomp.defaultErrnoRet 70000 is out of range 0-4095".to_owned(),
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {"names":["mkdir"],"action":"SCMP_ACT_TRACE","errnoRet":70000}]}"#,
                "linux.seccomp.syscalls[0].errnoRet 70000 is out of range 0-65535".to_owned(),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(refusal(json), want, "for {json}");
        }
    }

    #[test]
    fn unknown_syscalls_and_architectures_are_skipped_and_default_actions_dropped() {
        compile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO",
                "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32",
                                 "SCMP_ARCH_AARCH64","SCMP_ARCH_LOONGARCH64","SCMP_ARCH_NATIVE"],
                "syscalls":[
                  {"names":["read","write","syscall_of_a_future_kernel"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["getpid"],"action":"SCMP_ACT_ERRNO"},
                  {"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        );
    }

    #[test]
    fn every_action_compiles() {
        for act in [
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_TRAP",
            "SCMP_ACT_ERRNO",
            "SCMP_ACT_TRACE",
            "SCMP_ACT_LOG",
        ] {
            compile(&format!(
                r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                    {{"names":["mkdir"],"action":"{act}"}}]}}"#
            ));
            compile(&format!(
                r#"{{"defaultAction":"{act}","syscalls":[
                    {{"names":["read","write","exit_group"],"action":"SCMP_ACT_ALLOW"}}]}}"#
            ));
        }
    }

    #[test]
    fn an_errno_rule_fails_the_syscall_with_exactly_that_errno() {
        let filter = compile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":18}]}"#,
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let path = CString::new(dir.path().join("d").into_os_string().into_encoded_bytes())
            .expect("no NUL");
        let status = in_child(|| {
            let code = confine(&filter);
            if code != 0 {
                return code;
            }
            // SAFETY: `path` is a NUL-terminated string that outlives the call.
            let rc = unsafe { libc::mkdir(path.as_ptr(), 0o755) };
            if !failed_with(rc.into(), libc::EXDEV) {
                return 10;
            }
            // SAFETY: getpid takes no arguments.
            if unsafe { libc::getpid() } <= 0 {
                return 11;
            }
            0
        });
        assert_eq!(exit_code(status), 0);
        assert!(!dir.path().join("d").exists());
    }

    #[test]
    fn the_default_profile_refuses_privileged_syscalls_and_allows_ordinary_ones() {
        let filter = Filter::compile(None).expect("default profile");
        let status = in_child(|| {
            let code = confine(&filter);
            if code != 0 {
                return code;
            }
            let none = std::ptr::null::<libc::c_void>();
            // SAFETY: for each raw syscall below, the arguments are integers, null pointers or
            // pointers to static NUL-terminated strings; the filter answers before the kernel
            // would look at them, and where it does not the kernel checks them.
            unsafe {
                if !failed_with(libc::unshare(libc::CLONE_NEWUSER).into(), libc::EPERM) {
                    return 20;
                }
                if !failed_with(libc::syscall(libc::SYS_keyctl, 0, -3, 0), libc::EPERM) {
                    return 21;
                }
                let user = c"user".as_ptr();
                let key = libc::syscall(libc::SYS_add_key, user, c"k".as_ptr(), none, 0, -3);
                if !failed_with(key, libc::EPERM) {
                    return 22;
                }
                let req = libc::syscall(libc::SYS_request_key, user, c"k".as_ptr(), none, 0);
                if !failed_with(req, libc::EPERM) {
                    return 23;
                }
                let mount = libc::syscall(libc::SYS_mount, none, c"/".as_ptr(), none, 0, none);
                if !failed_with(mount, libc::EPERM) {
                    return 24;
                }
                if !failed_with(libc::syscall(libc::SYS_bpf, 0, none, 0), libc::EPERM) {
                    return 25;
                }
                if !failed_with(
                    libc::syscall(libc::SYS_kexec_load, 0, 0, none, 0),
                    libc::EPERM,
                ) {
                    return 26;
                }
                if !failed_with(libc::syscall(libc::SYS_reboot, 0, 0, 0, none), libc::EPERM) {
                    return 27;
                }
                if !failed_with(libc::syscall(libc::SYS_clone3, none, 0), libc::ENOSYS) {
                    return 28;
                }
                // A syscall number beyond the profile's: the ENOSYS prologue answers.
                if !failed_with(libc::syscall(1000), libc::ENOSYS) {
                    return 29;
                }
                let flags = libc::CLONE_NEWUSER | libc::SIGCHLD;
                let pid = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
                if pid == 0 {
                    libc::_exit(99);
                }
                if !failed_with(pid, libc::EPERM) {
                    return 30;
                }
                if libc::personality(0xffff_ffff) < 0 {
                    return 31;
                }
                // ADDR_NO_RANDOMIZE is not one of the allowed personas.
                if !failed_with(libc::personality(0x0040000).into(), libc::EPERM) {
                    return 32;
                }
                if libc::getpid() <= 0 {
                    return 33;
                }
                let fd = libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY);
                let mut buf = [0u8; 64];
                if fd < 0 || libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) <= 0 {
                    return 34;
                }
                libc::close(fd);
                // A plain fork (clone without namespace flags) is allowed.
                let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                if pid == 0 {
                    libc::_exit(0);
                }
                if pid < 0 {
                    return 35;
                }
                let mut wstatus = 0;
                if libc::waitpid(pid as libc::pid_t, &mut wstatus, 0) != pid as libc::pid_t
                    || !libc::WIFEXITED(wstatus)
                {
                    return 36;
                }
            }
            0
        });
        assert_eq!(exit_code(status), 0);
    }

    /// Runs `argv[0]` with `argv` under `filter` in a child, its output thrown away (so that a
    /// test binary's own "test result" line does not count in the suite's), and returns how it
    /// ended.
    fn exec_confined(filter: &Filter, argv: &[CString]) -> WaitStatus {
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let dev_null = File::create("/dev/null").expect("/dev/null");
        let null = dev_null.as_raw_fd();
        in_child(|| {
            // SAFETY: dup2 on descriptors this process owns.
            if unsafe { libc::dup2(null, 1) < 0 || libc::dup2(null, 2) < 0 } {
                return 4;
            }
            let code = confine(filter);
            if code != 0 {
                return code;
            }
            // SAFETY: `ptrs` is a null-terminated array of NUL-terminated strings, all alive
            // until execv replaces the process.
            unsafe { libc::execv(ptrs[0], ptrs.as_ptr()) };
            127
        })
    }

    #[test]
    fn a_shell_and_its_commands_run_under_the_default_profile() {
        if !std::path::Path::new("/bin/sh").exists() {
            return;
        }
        let filter = Filter::compile(None).expect("default profile");
        // Seccomp mode 2 (filter) is inherited by every command; `unshare -r` (a new user
        // namespace) fails where util-linux's unshare is installed.
        let script = "ls / >/dev/null && grep -q '^Seccomp:[[:space:]]*2' /proc/self/status && \
                      (sleep 0; echo x) >/dev/null && [ \"$(id -u)\" = \"$(id -u)\" ] && \
                      if command -v unshare >/dev/null; then ! unshare -r true 2>/dev/null; fi";
        let argv: Vec<CString> = ["/bin/sh", "-c", script]
            .iter()
            .map(|a| CString::new(*a).expect("no NUL"))
            .collect();
        assert_eq!(exit_code(exec_confined(&filter, &argv)), 0);
    }

    #[test]
    fn a_threaded_program_starts_under_the_default_profile() {
        // This very test binary: glibc's and Rust's start-up (rseq, ...), then the test harness
        // and a thread of its own (clone3 answers ENOSYS, glibc falls back to clone).
        let exe = std::env::current_exe().expect("test binary");
        let filter = Filter::compile(None).expect("default profile");
        let argv: Vec<CString> = [
            exe.as_os_str().as_encoded_bytes(),
            b"seccomp::tests::helper_spawns_a_thread",
            b"--exact",
            b"--test-threads=2",
        ]
        .iter()
        .map(|a| CString::new(*a).expect("no NUL"))
        .collect();
        assert_eq!(exit_code(exec_confined(&filter, &argv)), 0);
    }

    #[test]
    fn helper_spawns_a_thread() {
        let t = std::thread::spawn(|| 7);
        assert_eq!(t.join().expect("the thread ends"), 7);
    }

    #[test]
    fn argument_conditions_behave_as_written() {
        let filter = compile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":7,
                 "args":[{"index":0,"value":262144,"valueTwo":262144,"op":"SCMP_CMP_MASKED_EQ"}]},
                {"names":["fcntl"],"action":"SCMP_ACT_ERRNO","errnoRet":15,
                 "args":[{"index":0,"value":99,"op":"SCMP_CMP_EQ"},
                         {"index":1,"value":1,"op":"SCMP_CMP_EQ"}]},
                {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":25,
                 "args":[{"index":0,"value":97,"op":"SCMP_CMP_EQ"},
                         {"index":0,"value":98,"op":"SCMP_CMP_EQ"}]},
                {"names":["dup2"],"action":"SCMP_ACT_ERRNO","errnoRet":33,
                 "args":[{"index":0,"value":200,"op":"SCMP_CMP_GE"},
                         {"index":1,"value":10,"op":"SCMP_CMP_LT"}]},
                {"names":["lseek"],"action":"SCMP_ACT_ERRNO","errnoRet":34,
                 "args":[{"index":0,"value":300,"op":"SCMP_CMP_GT"},
                         {"index":2,"value":2,"op":"SCMP_CMP_LE"}]},
                {"names":["dup3"],"action":"SCMP_ACT_ERRNO","errnoRet":36,
                 "args":[{"index":2,"value":0,"op":"SCMP_CMP_NE"}]}]}"#,
        );
        let status = in_child(|| {
            let code = confine(&filter);
            if code != 0 {
                return code;
            }
            // SAFETY: only integer arguments; the descriptors used are closed first.
            unsafe {
                for fd in [96, 97, 98, 99, 150, 200, 301] {
                    libc::close(fd);
                }
                // MASKED_EQ: ADDR_NO_RANDOMIZE (0x0040000) set → refused; PER_LINUX → allowed.
                if !failed_with(libc::personality(0x0040000).into(), 7) {
                    return 10;
                }
                if libc::personality(0) < 0 {
                    return 11;
                }
                // Two indices: ANDed.
                if !failed_with(libc::fcntl(99, libc::F_GETFD).into(), 15) {
                    return 12;
                }
                if !failed_with(libc::fcntl(99, libc::F_GETFL).into(), libc::EBADF) {
                    return 13;
                }
                if !failed_with(libc::fcntl(98, libc::F_GETFD).into(), libc::EBADF) {
                    return 14;
                }
                // One index twice: ORed, as runc does.
                if !failed_with(libc::dup(97).into(), 25) || !failed_with(libc::dup(98).into(), 25)
                {
                    return 15;
                }
                if !failed_with(libc::dup(96).into(), libc::EBADF) {
                    return 16;
                }
                // GE and LT.
                if !failed_with(libc::dup2(200, 5).into(), 33) {
                    return 17;
                }
                if !failed_with(libc::dup2(200, 20).into(), libc::EBADF)
                    || !failed_with(libc::dup2(150, 5).into(), libc::EBADF)
                {
                    return 18;
                }
                // GT and LE.
                if !failed_with(libc::lseek(301, 0, 2), 34) {
                    return 19;
                }
                if !failed_with(libc::lseek(301, 0, 3), libc::EBADF)
                    || !failed_with(libc::lseek(300, 0, 0), libc::EBADF)
                {
                    return 20;
                }
                // NE.
                if !failed_with(libc::dup3(0, 50, libc::O_CLOEXEC).into(), 36) {
                    return 21;
                }
                if !failed_with(libc::dup3(96, 50, 0).into(), libc::EBADF) {
                    return 22;
                }
            }
            0
        });
        assert_eq!(exit_code(status), 0);
    }

    #[test]
    fn kill_process_kills_with_sigsys() {
        let filter = compile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["getppid"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        );
        let status = in_child(|| {
            let code = confine(&filter);
            if code != 0 {
                return code;
            }
            // SAFETY: getppid takes no arguments.
            unsafe { libc::getppid() };
            40
        });
        assert!(
            matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{status:?}"
        );
    }

    #[test]
    fn filter_flags_are_accepted_and_loaded() {
        let filter = compile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "flags":["SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_LOG",
                         "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(
            filter.flags,
            libc::SECCOMP_FILTER_FLAG_TSYNC
                | libc::SECCOMP_FILTER_FLAG_LOG
                | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
        );
        assert_eq!(exit_code(in_child(|| confine(&filter))), 0);
    }

    #[test]
    fn loading_never_sets_no_new_privs() {
        let filter = Filter::compile(None).expect("default profile");
        let status = in_child(|| {
            if no_new_privs() != 0 {
                return 2;
            }
            // With CAP_SYS_ADMIN (the tests may run as root) the load works without
            // no_new_privs; without it the kernel refuses with EACCES. Either way
            // no_new_privs stays off.
            let loaded = match filter.load() {
                Ok(()) => true,
                Err(SeccompError::Load(Errno::EACCES)) => false,
                Err(_) => return 3,
            };
            if no_new_privs() != 0 {
                return 4;
            }
            if loaded {
                0
            } else {
                5
            }
        });
        let code = exit_code(status);
        assert!(code == 0 || code == 5, "exit code {code}");
    }

    #[test]
    fn the_enosys_prologue_covers_each_architecture_and_mode() {
        let known = ["read", "clone3", "futex_waitv"];
        assert!(enosys_prologue(ScmpAction::Allow, &[ScmpArch::X8664], &known).is_empty());
        assert!(enosys_prologue(ScmpAction::Log, &[ScmpArch::X8664], &known).is_empty());
        let arches = [ScmpArch::X8664, ScmpArch::X86, ScmpArch::X32];
        let prologue = enosys_prologue(ScmpAction::Errno(1), &arches, &known);
        let returns: Vec<&Insn> = prologue.iter().filter(|i| i.code == BPF_RET_K).collect();
        assert_eq!(returns.len(), 3);
        assert!(returns
            .iter()
            .all(|i| i.k == libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
        let limits: Vec<u32> = prologue
            .iter()
            .filter(|i| i.code == BPF_JGT_K)
            .map(|i| i.k)
            .collect();
        let x32 = ScmpSyscall::from_name_by_arch("futex_waitv", ScmpArch::X32)
            .expect("x32 futex_waitv")
            .as_raw_syscall() as u32;
        assert!(x32 & X32_SYSCALL_BIT != 0);
        assert_eq!(limits[0], 449, "futex_waitv on x86_64");
        assert_eq!(limits[2], x32);
    }

    #[test]
    fn describe_names_the_library_and_the_default_profile() {
        let text = describe();
        assert!(text.starts_with("seccomp: libseccomp 2."), "{text}");
        assert!(
            text.contains("default profile (containerd's, errno EPERM) active"),
            "{text}"
        );
    }

    #[test]
    fn a_cstr_literal_is_nul_terminated() {
        // The child code above relies on c"..." literals needing no allocation.
        let s: &CStr = c"user";
        assert_eq!(s.to_bytes_with_nul(), b"user\0");
    }
}
