//! The basic jail: what a container's process does between fork and exec. It joins the
//! container's cgroup and takes its terminal; an init process then makes new mount, UTS and IPC
//! namespaces (the PID namespace is entered by the spawning thread), the spec's mounts and device
//! nodes under the rootfs, `pivot_root` and the hostname; an exec'd process instead joins the
//! namespaces and root of the running init. Both then set user and groups, and cwd.
//!
//! Owns the order of those steps, behind [`JailSys`] so the order is unit-tested with a
//! recording fake. Runs after `fork` in a process that had threads, so [`enter`] and the real
//! [`LibcJail`] allocate nothing: every string is prepared in [`JailPlan::new`] beforehand.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::spec::{ContainerPlan, ProcessPlan};

/// Device nodes bind-mounted from the guest's /dev into the container's.
const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Standard /dev symlinks (link name, target).
const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// The system calls the jail makes.
pub trait JailSys {
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()>;
    fn mount(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: &CStr,
        flags: libc::c_ulong,
        data: &CStr,
    ) -> io::Result<()>;
    /// Creates a directory; an existing one is fine.
    fn mkdir(&mut self, path: &CStr) -> io::Result<()>;
    /// Creates an empty file (a bind-mount target); an existing one is fine.
    fn touch(&mut self, path: &CStr) -> io::Result<()>;
    /// Creates a symlink; an existing one is fine.
    fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()>;
    fn chdir(&mut self, path: &CStr) -> io::Result<()>;
    /// `pivot_root(".", ".")` then detaches the old root stacked on top.
    fn pivot_root_here(&mut self) -> io::Result<()>;
    fn sethostname(&mut self, name: &CStr) -> io::Result<()>;
    fn set_ids(&mut self, uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()>;
    /// Moves the calling process into the cgroup whose `cgroup.procs` is open as `procs`.
    fn join_cgroup(&mut self, procs: RawFd) -> io::Result<()>;
    /// `setsid()`, then makes the terminal on stdin the controlling terminal.
    fn take_terminal(&mut self) -> io::Result<()>;
    fn setns(&mut self, fd: RawFd, nstype: libc::c_int) -> io::Result<()>;
    /// `fchdir(dir)` then `chroot(".")`.
    fn chroot_to(&mut self, dir: RawFd) -> io::Result<()>;
}

#[derive(Debug)]
struct PreparedMount {
    source: CString,
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: CString,
    bind: bool,
}

/// How the process gets its namespaces and root.
#[derive(Debug)]
enum Entry {
    /// A container's init: new namespaces, mounts, root and hostname.
    New {
        rootfs: CString,
        mounts: Vec<PreparedMount>,
        dev_nodes: Vec<(CString, CString)>,
        dev_links: Vec<(CString, CString)>,
        hostname: Option<CString>,
        /// IPC and UTS namespaces joined (the pod's sandbox's) rather than made.
        joined: Vec<(OwnedFd, libc::c_int)>,
    },
    /// An exec'd process: the init's namespaces (fd, type) and root directory.
    Join {
        namespaces: Vec<(OwnedFd, libc::c_int)>,
        root: OwnedFd,
    },
}

/// Everything the child needs, as C strings and open files, prepared before `fork`.
#[derive(Debug)]
pub struct JailPlan {
    entry: Entry,
    cgroup_procs: Option<OwnedFd>,
    terminal: bool,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    empty: CString,
}

/// Namespaces an exec'd process joins, by their name under /proc/PID/ns.
const JOINED_NAMESPACES: &[(&str, libc::c_int)] = &[
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    // Last: after it, /proc/PID of the agent's view is gone.
    ("mnt", libc::CLONE_NEWNS),
];

fn cstr(s: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(s.as_ref())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a jail path"))
}

fn under(rootfs: &Path, dest: &Path) -> io::Result<CString> {
    cstr(
        rootfs
            .join(dest.strip_prefix("/").unwrap_or(dest))
            .as_os_str()
            .as_encoded_bytes(),
    )
}

impl JailPlan {
    /// Prepares the jail of a container's init process, with its root at `rootfs` (a guest
    /// path), joining the cgroup whose `cgroup.procs` is open as `cgroup_procs`.
    pub fn new(
        rootfs: &Path,
        plan: &ContainerPlan,
        cgroup_procs: Option<OwnedFd>,
        joined: Vec<(OwnedFd, libc::c_int)>,
    ) -> io::Result<Self> {
        let dev_is_tmpfs = plan
            .mounts
            .iter()
            .any(|m| m.destination == Path::new("/dev") && !m.bind);
        let mut mounts = Vec::new();
        for m in &plan.mounts {
            mounts.push(PreparedMount {
                source: cstr(if m.source.is_empty() {
                    m.fstype.as_str()
                } else {
                    m.source.as_str()
                })?,
                target: under(rootfs, &m.destination)?,
                fstype: cstr(&m.fstype)?,
                flags: m.flags,
                data: cstr(&m.data)?,
                bind: m.bind,
            });
        }
        let (mut dev_nodes, mut dev_links) = (Vec::new(), Vec::new());
        if dev_is_tmpfs {
            for n in DEV_NODES {
                dev_nodes.push((
                    cstr(format!("/dev/{n}"))?,
                    under(rootfs, &Path::new("/dev").join(n))?,
                ));
            }
            for (link, target) in DEV_LINKS {
                dev_links.push((cstr(target)?, under(rootfs, &Path::new("/dev").join(link))?));
            }
        }
        let entry = Entry::New {
            rootfs: cstr(rootfs.as_os_str().as_encoded_bytes())?,
            mounts,
            dev_nodes,
            dev_links,
            // A shared UTS namespace keeps the sandbox's hostname.
            hostname: match joined.iter().any(|(_, t)| *t == libc::CLONE_NEWUTS) {
                true => None,
                false => plan.hostname.as_deref().map(cstr).transpose()?,
            },
            joined,
        };
        Self::with_entry(entry, &plan.process, cgroup_procs)
    }

    /// Prepares the jail of a process exec'd into the container whose init is `init_pid`, as
    /// seen under `proc` (`/proc` in the guest).
    pub fn join(
        proc: &Path,
        init_pid: u32,
        plan: &ProcessPlan,
        cgroup_procs: Option<OwnedFd>,
    ) -> io::Result<Self> {
        let open = |p: &Path, flags: libc::c_int| -> io::Result<OwnedFd> {
            let c = cstr(p.as_os_str().as_encoded_bytes())?;
            // SAFETY: `c` is NUL-terminated; a non-negative result is a new fd we own.
            let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        };
        let base = proc.join(init_pid.to_string());
        let mut namespaces = Vec::new();
        for (name, nstype) in JOINED_NAMESPACES {
            namespaces.push((open(&base.join("ns").join(name), libc::O_RDONLY)?, *nstype));
        }
        let root = open(&base.join("root"), libc::O_RDONLY | libc::O_DIRECTORY)?;
        Self::with_entry(Entry::Join { namespaces, root }, plan, cgroup_procs)
    }

    fn with_entry(
        entry: Entry,
        plan: &ProcessPlan,
        cgroup_procs: Option<OwnedFd>,
    ) -> io::Result<Self> {
        Ok(Self {
            entry,
            cgroup_procs,
            terminal: plan.terminal,
            cwd: cstr(plan.cwd.as_os_str().as_encoded_bytes())?,
            uid: plan.uid,
            gid: plan.gid,
            groups: plan.additional_gids.clone(),
            empty: CString::default(),
        })
    }
}

/// Runs the jail set-up in the forked child. Allocates nothing.
pub fn enter(sys: &mut impl JailSys, p: &JailPlan) -> io::Result<()> {
    // The cgroup first: everything the process does from here on is accounted and limited.
    if let Some(procs) = &p.cgroup_procs {
        sys.join_cgroup(procs.as_raw_fd())?;
    }
    if p.terminal {
        sys.take_terminal()?;
    }
    match &p.entry {
        Entry::New {
            rootfs,
            mounts,
            dev_nodes,
            dev_links,
            hostname,
            joined,
        } => {
            let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
            for (fd, nstype) in joined {
                sys.setns(fd.as_raw_fd(), *nstype)?;
                flags &= !nstype;
            }
            sys.unshare(flags)?;
            enter_new(sys, p, rootfs, mounts, dev_nodes, dev_links)?;
            if let Some(h) = hostname {
                sys.sethostname(h)?;
            }
        }
        Entry::Join { namespaces, root } => {
            for (fd, nstype) in namespaces {
                sys.setns(fd.as_raw_fd(), *nstype)?;
            }
            sys.chroot_to(root.as_raw_fd())?;
        }
    }
    sys.set_ids(p.uid, p.gid, &p.groups)?;
    sys.chdir(&p.cwd)
}

/// New namespaces, mounts and root for a container's init.
fn enter_new(
    sys: &mut impl JailSys,
    p: &JailPlan,
    rootfs: &CStr,
    mounts: &[PreparedMount],
    dev_nodes: &[(CString, CString)],
    dev_links: &[(CString, CString)],
) -> io::Result<()> {
    // Nothing done below may propagate back to the agent's mount namespace.
    sys.mount(
        &p.empty,
        c"/",
        &p.empty,
        libc::MS_REC | libc::MS_PRIVATE,
        &p.empty,
    )?;
    // pivot_root needs the new root to be a mount point.
    sys.mount(
        rootfs,
        rootfs,
        &p.empty,
        libc::MS_BIND | libc::MS_REC,
        &p.empty,
    )?;
    for m in mounts {
        if m.bind {
            touch_or_mkdir(sys, &m.source, &m.target)?;
            sys.mount(
                &m.source,
                &m.target,
                &p.empty,
                libc::MS_BIND | (m.flags & libc::MS_REC),
                &p.empty,
            )?;
            if m.flags & libc::MS_RDONLY != 0 {
                let remount = libc::MS_BIND | libc::MS_REMOUNT | (m.flags & !libc::MS_REC);
                sys.mount(&p.empty, &m.target, &p.empty, remount, &p.empty)?;
            }
        } else {
            sys.mkdir(&m.target)?;
            sys.mount(&m.source, &m.target, &m.fstype, m.flags, &m.data)?;
        }
    }
    for (src, target) in dev_nodes {
        sys.touch(target)?;
        sys.mount(src, target, &p.empty, libc::MS_BIND, &p.empty)?;
    }
    for (target, link) in dev_links {
        sys.symlink(target, link)?;
    }
    sys.chdir(rootfs)?;
    sys.pivot_root_here()?;
    sys.chdir(c"/")
}

/// Creates a bind-mount target of the same kind as its source (directory or file).
fn touch_or_mkdir(sys: &mut impl JailSys, source: &CStr, target: &CStr) -> io::Result<()> {
    // SAFETY: `st` is a plain C struct filled by stat(2); `source` is NUL-terminated.
    let is_dir = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::stat(source.as_ptr(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    };
    if is_dir {
        sys.mkdir(target)
    } else {
        sys.touch(target)
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn exists_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// The real system calls.
#[derive(Debug, Default)]
pub struct LibcJail;

impl JailSys for LibcJail {
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: unshare(2) takes only flags.
        check(unsafe { libc::unshare(flags) })
    }

    fn mount(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: &CStr,
        flags: libc::c_ulong,
        data: &CStr,
    ) -> io::Result<()> {
        let opt = |s: &CStr| {
            if s.is_empty() {
                std::ptr::null()
            } else {
                s.as_ptr()
            }
        };
        // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
        check(unsafe {
            libc::mount(
                opt(source),
                target.as_ptr(),
                opt(fstype),
                flags,
                opt(data).cast(),
            )
        })
    }

    fn mkdir(&mut self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is NUL-terminated.
        exists_ok(check(unsafe { libc::mkdir(path.as_ptr(), 0o755) }))
    }

    fn touch(&mut self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is NUL-terminated; the returned fd is closed at once.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened by us.
        unsafe { libc::close(fd) };
        Ok(())
    }

    fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()> {
        // SAFETY: both are NUL-terminated.
        exists_ok(check(unsafe {
            libc::symlink(target.as_ptr(), link.as_ptr())
        }))
    }

    fn chdir(&mut self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is NUL-terminated.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn pivot_root_here(&mut self) -> io::Result<()> {
        let dot = c".";
        // No chroot fallback: a chroot can be left. The guest's root is a tmpfs (husk-init
        // leaves the initramfs), on which pivot_root works.
        // SAFETY: pivot_root(2) with two NUL-terminated paths.
        let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: umount2(2) with a NUL-terminated path.
        check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
    }

    fn sethostname(&mut self, name: &CStr) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes.
        check(unsafe { libc::sethostname(name.as_ptr(), name.to_bytes().len()) })
    }

    fn set_ids(&mut self, uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `groups`.
        check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
        // SAFETY: plain id arguments.
        check(unsafe { libc::setgid(gid) })?;
        // SAFETY: plain id arguments.
        check(unsafe { libc::setuid(uid) })
    }

    fn join_cgroup(&mut self, procs: RawFd) -> io::Result<()> {
        // "0" means the writing process.
        // SAFETY: writes one byte from a static buffer to an fd we hold open.
        let n = unsafe { libc::write(procs, c"0".as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn take_terminal(&mut self) -> io::Result<()> {
        // SAFETY: setsid(2) takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TIOCSCTTY on stdin with argument 0 (do not steal).
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })
    }

    fn setns(&mut self, fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
        // SAFETY: setns(2) with an fd we hold open and a namespace type.
        check(unsafe { libc::setns(fd, nstype) })
    }

    fn chroot_to(&mut self, dir: RawFd) -> io::Result<()> {
        // SAFETY: fchdir(2) to an fd we hold open, then chroot(2) to a static path.
        check(unsafe { libc::fchdir(dir) })?;
        // SAFETY: chroot(2) with a NUL-terminated path.
        check(unsafe { libc::chroot(c".".as_ptr()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    #[derive(Default)]
    struct Recorder(Vec<String>);

    fn s(c: &CStr) -> String {
        c.to_string_lossy().into_owned()
    }

    impl JailSys for Recorder {
        fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
            self.0.push(format!("unshare {flags:#x}"));
            Ok(())
        }
        fn mount(
            &mut self,
            src: &CStr,
            target: &CStr,
            fstype: &CStr,
            flags: libc::c_ulong,
            _: &CStr,
        ) -> io::Result<()> {
            self.0.push(format!(
                "mount {} {} {} {flags:#x}",
                s(src),
                s(target),
                s(fstype)
            ));
            Ok(())
        }
        fn mkdir(&mut self, p: &CStr) -> io::Result<()> {
            self.0.push(format!("mkdir {}", s(p)));
            Ok(())
        }
        fn touch(&mut self, p: &CStr) -> io::Result<()> {
            self.0.push(format!("touch {}", s(p)));
            Ok(())
        }
        fn symlink(&mut self, t: &CStr, l: &CStr) -> io::Result<()> {
            self.0.push(format!("symlink {} {}", s(l), s(t)));
            Ok(())
        }
        fn chdir(&mut self, p: &CStr) -> io::Result<()> {
            self.0.push(format!("chdir {}", s(p)));
            Ok(())
        }
        fn pivot_root_here(&mut self) -> io::Result<()> {
            self.0.push("pivot_root".into());
            Ok(())
        }
        fn sethostname(&mut self, n: &CStr) -> io::Result<()> {
            self.0.push(format!("hostname {}", s(n)));
            Ok(())
        }
        fn set_ids(&mut self, uid: u32, gid: u32, groups: &[libc::gid_t]) -> io::Result<()> {
            self.0.push(format!("ids {uid} {gid} {groups:?}"));
            Ok(())
        }
        fn join_cgroup(&mut self, _: RawFd) -> io::Result<()> {
            self.0.push("cgroup".into());
            Ok(())
        }
        fn take_terminal(&mut self) -> io::Result<()> {
            self.0.push("terminal".into());
            Ok(())
        }
        fn setns(&mut self, _: RawFd, nstype: libc::c_int) -> io::Result<()> {
            self.0.push(format!("setns {nstype:#x}"));
            Ok(())
        }
        fn chroot_to(&mut self, _: RawFd) -> io::Result<()> {
            self.0.push("chroot".into());
            Ok(())
        }
    }

    #[test]
    fn default_spec_jail_order() {
        let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
        v["process"]["args"] = serde_json::json!(["/bin/sh"]);
        v["process"]["cwd"] = "/work".into();
        v["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 100, "additionalGids": [5]});
        v["hostname"] = "box".into();
        let plan = spec::parse(&v.to_string()).unwrap();
        let jail = JailPlan::new(Path::new("/run/c/rootfs"), &plan, None, Vec::new()).unwrap();
        let mut rec = Recorder::default();
        enter(&mut rec, &jail).unwrap();
        let calls = rec.0;
        let pos = |prefix: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} in {calls:#?}"))
        };
        assert_eq!(
            calls[0],
            format!(
                "unshare {:#x}",
                libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC
            )
        );
        assert!(
            calls[1].starts_with("mount  / "),
            "root made private first: {}",
            calls[1]
        );
        assert!(pos("mount proc /run/c/rootfs/proc proc") < pos("pivot_root"));
        assert!(
            pos("mount /dev/null /run/c/rootfs/dev/null")
                > pos("mount tmpfs /run/c/rootfs/dev tmpfs")
        );
        assert!(pos("symlink /run/c/rootfs/dev/fd /proc/self/fd") < pos("pivot_root"));
        assert!(pos("pivot_root") < pos("hostname box"));
        assert!(
            pos("hostname box") < pos("ids 1000 100 [5]"),
            "hostname needs root"
        );
        assert_eq!(calls.last().unwrap(), "chdir /work");
    }

    /// A fake /proc/PID with the files an exec'd process opens.
    fn fake_proc(pid: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join(pid.to_string());
        std::fs::create_dir_all(base.join("ns")).unwrap();
        std::fs::create_dir_all(base.join("root")).unwrap();
        for (name, _) in JOINED_NAMESPACES {
            std::fs::write(base.join("ns").join(name), "").unwrap();
        }
        dir
    }

    #[test]
    fn an_exec_joins_cgroup_terminal_namespaces_and_root_in_order() {
        let proc = fake_proc(42);
        let plan = spec::parse_process(
            r#"{"args":["sh"],"cwd":"/srv","terminal":true,"user":{"uid":7,"gid":8}}"#,
        )
        .unwrap();
        let cgroup = std::fs::File::create(proc.path().join("procs")).unwrap();
        let jail = JailPlan::join(proc.path(), 42, &plan, Some(cgroup.into())).unwrap();
        let mut rec = Recorder::default();
        enter(&mut rec, &jail).unwrap();
        assert_eq!(
            rec.0,
            [
                "cgroup".to_owned(),
                "terminal".into(),
                format!("setns {:#x}", libc::CLONE_NEWIPC),
                format!("setns {:#x}", libc::CLONE_NEWUTS),
                format!("setns {:#x}", libc::CLONE_NEWNS),
                "chroot".into(),
                "ids 7 8 []".into(),
                "chdir /srv".into(),
            ]
        );
    }

    #[test]
    fn an_exec_into_a_gone_process_is_an_error() {
        let proc = fake_proc(42);
        let plan =
            spec::parse_process(r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        let e = JailPlan::join(proc.path(), 43, &plan, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
