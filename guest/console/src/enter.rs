//! Entering a container: finding it from the agent's record, and the `__enter` helper (this
//! binary started again) that joins the container's cgroup, namespaces and root as nsenter
//! does, then runs the session's program as its child and mirrors its end.
//!
//! Owns the record check (a stale record or a reused pid is "no container"), the namespace
//! comparison and order, the cgroup move and the helper's status line back to the session.
//! The helper must stay single-threaded (joining a user namespace requires it) and must never
//! touch the session's connection: it only reports through its status pipe and exit status.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use husk_protocols::container_record::{self, start_time_from_stat, ContainerRecord};
use nix::fcntl::{open, openat, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::Mode;

use crate::error::SessionError;

/// The first argument that makes husk-console the enter helper.
pub const ARG: &str = "__enter";

/// The namespaces joined, in nsenter's order (the mount namespace last: after it, the
/// container's /proc and /sys are all that can be seen).
pub const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Signals the helper passes on to the program.
const FORWARDED: [libc::c_int; 10] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
    libc::SIGALRM,
    libc::SIGTSTP,
];

fn no_container(id: &str) -> SessionError {
    SessionError::NoContainer(format!("no container {id} runs in this sandbox"))
}

/// The record of container `id` in `dir`, checked against the running process.
pub fn find(dir: &Path, id: &str) -> Result<ContainerRecord, SessionError> {
    if !container_record::valid_id(id) {
        return Err(no_container(id));
    }
    let path = dir.join(id).join(container_record::RECORD_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(no_container(id)),
        Err(e) => {
            return Err(SessionError::NoContainer(format!(
                "no container {id} runs in this sandbox (its record {}: {e})",
                path.display()
            )))
        }
    };
    let record: ContainerRecord = serde_json::from_str(&text).map_err(|e| {
        SessionError::NoContainer(format!(
            "no container {id} runs in this sandbox (its record {} is unreadable: {e})",
            path.display()
        ))
    })?;
    if record.id != id || record.pid <= 0 {
        return Err(SessionError::NoContainer(format!(
            "no container {id} runs in this sandbox (its record {} is inconsistent)",
            path.display()
        )));
    }
    if start_time(record.pid) != Some(record.start_time) {
        return Err(SessionError::NoContainer(format!(
            "no container {id} runs in this sandbox (its process {} has exited)",
            record.pid
        )));
    }
    Ok(record)
}

/// The start time of `pid`, if it runs.
fn start_time(pid: i32) -> Option<u64> {
    start_time_from_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The container's root as the console sees it (to look for a shell before spawning).
pub fn root_of(record: &ContainerRecord) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root", record.pid))
}

/// The helper's arguments (after the executable): enter `record`'s container, report on
/// `status_fd`, run `argv` in `cwd`.
pub fn helper_args(
    status_fd: RawFd,
    record: &ContainerRecord,
    cwd: &str,
    argv: &[String],
) -> Vec<String> {
    let mut args = vec![
        ARG.to_owned(),
        status_fd.to_string(),
        record.id.clone(),
        record.pid.to_string(),
        record.start_time.to_string(),
        cwd.to_owned(),
        "--".to_owned(),
    ];
    args.extend(argv.iter().cloned());
    args
}

/// The helper's parsed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HelperArgs {
    status_fd: RawFd,
    id: String,
    pid: i32,
    start_time: u64,
    cwd: String,
    argv: Vec<OsString>,
}

fn parse_helper_args(args: &[OsString]) -> Option<HelperArgs> {
    let text = |i: usize| args.get(i)?.to_str().map(str::to_owned);
    if text(0)? != ARG || text(6)? != "--" || args.len() < 8 {
        return None;
    }
    Some(HelperArgs {
        status_fd: text(1)?.parse().ok().filter(|fd| *fd > 2)?,
        id: text(2)?,
        pid: text(3)?.parse().ok().filter(|p| *p > 0)?,
        start_time: text(4)?.parse().ok()?,
        cwd: text(5)?,
        argv: args[7..].to_vec(),
    })
}

/// The session's side of the status pipe: the program's pid in the container's PID namespace
/// once it runs, or why it could not start.
pub fn read_status(status: OwnedFd) -> Result<u32, SessionError> {
    let mut text = String::new();
    let read = File::from(status).take(64 * 1024).read_to_string(&mut text);
    if let Err(e) = read {
        return Err(SessionError::Other(format!(
            "reading the enter helper's status: {e}"
        )));
    }
    parse_status(&text)
}

fn parse_status(text: &str) -> Result<u32, SessionError> {
    let line = text.lines().next().unwrap_or_default();
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    let message = rest.to_owned();
    match kind {
        "ok" => rest
            .trim()
            .parse()
            .map_err(|_| SessionError::Other(format!("the enter helper said {line:?}"))),
        "no_container" => Err(SessionError::NoContainer(message)),
        "not_found" => Err(SessionError::NotFound(message)),
        "bad_request" => Err(SessionError::BadRequest(message)),
        "other" => Err(SessionError::Other(message)),
        _ => Err(SessionError::Other(
            "entering the container failed: the enter helper stopped without a word".into(),
        )),
    }
}

/// The cgroup v2 path (`0::<path>`) in the text of a `/proc/<pid>/cgroup`, if it is absolute
/// and stays inside the hierarchy.
pub fn cgroup_v2_path(text: &str) -> Option<&str> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    (path.starts_with('/') && !path.split('/').any(|c| c == "..")).then_some(path)
}

/// The namespaces of `pid` that differ from the calling process's, opened, in join order.
/// Kinds the kernel lacks are skipped.
pub fn differing_namespaces(pid: i32) -> io::Result<Vec<(&'static str, CloneFlags, OwnedFd)>> {
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        let target = format!("/proc/{pid}/ns/{name}");
        let fd = match open(
            target.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(io::Error::other(format!("opening {target}: {e}"))),
        };
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let theirs = File::from(fd.try_clone()?).metadata()?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))?;
        if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
            out.push((name, flag, fd));
        }
    }
    Ok(out)
}

/// The helper: `husk-console __enter STATUS_FD ID PID START_TIME CWD -- PROGRAM ARGS...`, with
/// the session's stdio and environment. Never returns.
pub fn helper_main(args: &[OsString]) -> ! {
    let Some(a) = parse_helper_args(args) else {
        eprintln!("husk-console: {ARG} is internal to husk-console");
        std::process::exit(125);
    };
    // SAFETY: the session passed this descriptor to us open and for us alone.
    let status = unsafe { OwnedFd::from_raw_fd(a.status_fd) };
    let _ = nix::fcntl::fcntl(
        status.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut status = File::from(status);
    match enter_and_run(&a) {
        Ok((child, shown)) => {
            // The session learns that the program runs, and its number, when the pipe closes.
            let _ = writeln!(status, "ok {shown}");
            drop(status);
            supervise(child).exit()
        }
        Err((kind, message)) => {
            let _ = writeln!(status, "{kind} {}", message.replace('\n', " "));
            drop(status);
            eprintln!("husk-console: {message}");
            std::process::exit(if kind == "not_found" { 127 } else { 125 });
        }
    }
}

type Failure = (&'static str, String);

/// How the helper ends: as its program did.
#[derive(Debug)]
enum Ending {
    Code(i32),
    Signal(i32),
}

impl Ending {
    fn exit(self) -> ! {
        match self {
            Ending::Code(c) => std::process::exit(c),
            Ending::Signal(sig) => {
                // No core file of the helper in the container's working directory.
                // SAFETY: setting a resource limit, resetting a disposition to the default,
                // unblocking and raising the signal: system calls on our own process that only
                // read locals living across each call.
                unsafe {
                    let none = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::setrlimit(libc::RLIMIT_CORE, &none);
                    libc::signal(sig, libc::SIG_DFL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig);
                    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    libc::raise(sig);
                }
                std::process::exit(128 + sig)
            }
        }
    }
}

fn enter_and_run(a: &HelperArgs) -> Result<(libc::pid_t, u32), Failure> {
    let other = |what: &str, e: &dyn std::fmt::Display| ("other", format!("{what}: {e}"));
    let gone = || {
        (
            "no_container",
            format!(
                "no container {} runs in this sandbox (its process exited)",
                a.id
            ),
        )
    };
    // Everything is opened first, then the process is checked again: the descriptors surely
    // belong to the container, not to a process that reused its pid.
    let namespaces = differing_namespaces(a.pid).map_err(|e| {
        if start_time(a.pid) == Some(a.start_time) {
            other("opening the container's namespaces", &e)
        } else {
            gone()
        }
    })?;
    let root = open(
        format!("/proc/{}/root", a.pid).as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| gone())?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let proc_dir = open(
        "/proc",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| other("opening /proc", &e))?;
    // SAFETY: as above.
    let proc_dir = unsafe { OwnedFd::from_raw_fd(proc_dir) };
    if start_time(a.pid) != Some(a.start_time) {
        return Err(gone());
    }
    join_cgroup(a.pid).map_err(|e| other("joining the container's cgroup", &e))?;
    for (name, flag, fd) in &namespaces {
        setns(fd.as_fd(), *flag)
            .map_err(|e| other(&format!("joining the container's {name} namespace"), &e))?;
    }
    nix::unistd::fchdir(root.as_raw_fd())
        .and_then(|_| nix::unistd::chroot("."))
        .map_err(|e| other("entering the container's root", &e))?;
    std::env::set_current_dir(&a.cwd).map_err(|e| {
        (
            "bad_request",
            format!(
                "working directory {} does not exist in container {}: {e}",
                a.cwd, a.id
            ),
        )
    })?;
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGCHLD);
    for s in FORWARDED {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(s) {
            mask.add(sig);
        }
    }
    mask.thread_block()
        .map_err(|e| other("blocking signals", &e))?;
    let mut cmd = std::process::Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
    // SAFETY: prctl is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // The program dies with the helper (the session kills the helper when its client
            // goes away).
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let program = a.argv[0].to_string_lossy();
        if e.kind() == io::ErrorKind::NotFound {
            let path = std::env::var("PATH").unwrap_or_default();
            (
                "not_found",
                format!(
                    "program {program} not found in container {} (PATH {path})",
                    a.id
                ),
            )
        } else {
            other(&format!("cannot run {program} in container {}", a.id), &e)
        }
    })?;
    let child_pid = child.id() as libc::pid_t;
    let shown = container_pid(&proc_dir, child_pid).unwrap_or(child_pid as u32);
    Ok((child_pid, shown))
}

/// Waits for the program, passing on the signals sent to the helper.
fn supervise(child: libc::pid_t) -> Ending {
    loop {
        // SAFETY: an all-zero sigset_t/siginfo_t are valid; sigwaitinfo writes into our local
        // and reads the mask we filled.
        let (sig, code) = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for s in FORWARDED {
                libc::sigaddset(&mut set, s);
            }
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(&set, &mut info);
            (sig, info.si_code)
        };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            let mut st = 0;
            // SAFETY: waitpid writes the status into our local.
            let rc = unsafe { libc::waitpid(child, &mut st, libc::WNOHANG) };
            if rc == child {
                if libc::WIFEXITED(st) {
                    return Ending::Code(libc::WEXITSTATUS(st));
                }
                if libc::WIFSIGNALED(st) {
                    return Ending::Signal(libc::WTERMSIG(st));
                }
            }
            continue;
        }
        // Signals the terminal sent to its foreground group reached the program already;
        // pass on those sent by a process (the session's `signal` frames) and hang-ups.
        if code == libc::SI_USER
            || code == libc::SI_QUEUE
            || code == libc::SI_TKILL
            || sig == libc::SIGHUP
        {
            // SAFETY: kill has no memory arguments; the child is ours and not yet reaped.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// `pid`'s number in its own (innermost) PID namespace, from `<proc>/<pid>/status`.
fn container_pid(proc_dir: &OwnedFd, pid: libc::pid_t) -> Option<u32> {
    let fd = openat(
        Some(proc_dir.as_raw_fd()),
        format!("{pid}/status").as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // SAFETY: `openat` returned a new descriptor that nothing else owns.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    nspid_of(&text)
}

fn nspid_of(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_ascii_whitespace().last()?.parse().ok()
}

/// Moves the calling process into `pid`'s cgroup (v2) if it is another one than its own.
fn join_cgroup(pid: i32) -> io::Result<()> {
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let ours = std::fs::read_to_string("/proc/self/cgroup")?;
    let Some(path) = cgroup_v2_path(&theirs) else {
        return Ok(()); // No unified hierarchy: nothing to join.
    };
    if cgroup_v2_path(&ours) == Some(path) {
        return Ok(());
    }
    let procs = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", procs.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ContainerRecord {
        ContainerRecord {
            id: "c1".into(),
            pid: 42,
            start_time: 777,
            cwd: "/work".into(),
            env: vec![],
        }
    }

    #[test]
    fn helper_arguments_round_trip() {
        let args = helper_args(
            5,
            &record(),
            "/w d",
            &["sh".into(), "-c".into(), "x".into()],
        );
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        let parsed = parse_helper_args(&os).unwrap();
        assert_eq!(
            parsed,
            HelperArgs {
                status_fd: 5,
                id: "c1".into(),
                pid: 42,
                start_time: 777,
                cwd: "/w d".into(),
                argv: vec!["sh".into(), "-c".into(), "x".into()],
            }
        );
        // No program, a standard stream as the status descriptor, or garbage: refused.
        assert_eq!(parse_helper_args(&os[..7]), None);
        let mut bad = os.clone();
        bad[1] = "1".into();
        assert_eq!(parse_helper_args(&bad), None);
        assert_eq!(parse_helper_args(&["x".into()]), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("ok 7\n"), Ok(7));
        assert_eq!(
            parse_status("not_found program x not found\n"),
            Err(SessionError::NotFound("program x not found".into()))
        );
        assert!(matches!(
            parse_status("no_container gone"),
            Err(SessionError::NoContainer(_))
        ));
        assert!(matches!(parse_status(""), Err(SessionError::Other(_))));
    }

    #[test]
    fn cgroup_paths() {
        let text = "12:pids:/x\n0::/kubepods/pod1/c1\n";
        assert_eq!(cgroup_v2_path(text), Some("/kubepods/pod1/c1"));
        assert_eq!(cgroup_v2_path("0::/a/../b\n"), None);
        assert_eq!(cgroup_v2_path("0::relative\n"), None);
        assert_eq!(cgroup_v2_path("1:cpu:/\n"), None);
    }

    #[test]
    fn nspid_takes_the_innermost() {
        assert_eq!(nspid_of("Name:\tsh\nNSpid:\t1234\t7\n"), Some(7));
        assert_eq!(nspid_of("NSpid:\t99\n"), Some(99));
        assert_eq!(nspid_of("Name:\tsh\n"), None);
    }

    #[test]
    fn own_namespaces_do_not_differ() {
        assert!(differing_namespaces(std::process::id() as i32)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn records_are_checked_against_the_process() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            find(dir.path(), "c1"),
            Err(SessionError::NoContainer(_))
        ));
        let me = std::process::id() as i32;
        let mut r = record();
        std::fs::create_dir(dir.path().join("c1")).unwrap();
        r.pid = me;
        r.start_time = start_time(me).unwrap();
        std::fs::write(
            dir.path().join("c1/record.json"),
            serde_json::to_string(&r).unwrap(),
        )
        .unwrap();
        assert_eq!(find(dir.path(), "c1").unwrap(), r);
        r.start_time += 1;
        std::fs::write(
            dir.path().join("c1/record.json"),
            serde_json::to_string(&r).unwrap(),
        )
        .unwrap();
        let e = find(dir.path(), "c1").unwrap_err();
        assert!(e.to_string().contains("exited"), "{e}");
        std::fs::write(dir.path().join("c1/record.json"), "{not json").unwrap();
        assert!(matches!(
            find(dir.path(), "c1"),
            Err(SessionError::NoContainer(_))
        ));
    }
}
