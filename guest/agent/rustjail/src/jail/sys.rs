//! The system calls the jail makes, behind one trait: [`LibcSys`] makes them, [`Recorder`]
//! (tests only) writes each down so the order of the jail's steps is tested without root.
//!
//! Owns the thin wrappers (each one system call, or an open+write for /proc files). Must never
//! decide anything: what to call and in which order is the jail's.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::capabilities::CapSets;

/// What is at a path (`lstat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Other,
}

/// The jail's system calls.
pub trait Sys {
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()>;
    /// Opens `path` (a /proc/PID/ns/NAME file) and joins that namespace.
    fn setns(&mut self, path: &Path, nstype: libc::c_int) -> io::Result<()>;
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()>;
    /// `pivot_root(".", ".")` in `new_root`, then detaches the old root stacked on it.
    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()>;
    fn chdir(&mut self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents; existing ones are fine.
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()>;
    /// Creates an empty file (a bind-mount target); an existing one is fine.
    fn create_file(&mut self, path: &Path) -> io::Result<()>;
    fn mknod(&mut self, path: &Path, kind: u32, mode: u32, dev: u64) -> io::Result<()>;
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Creates a symlink; an existing one is fine.
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()>;
    /// What is at `path` (not following a final symlink); `None` when nothing is.
    fn kind(&mut self, path: &Path) -> io::Result<Option<Kind>>;
    /// Writes a whole /proc or /sys file.
    fn write_file(&mut self, path: &Path, contents: &str) -> io::Result<()>;
    fn sethostname(&mut self, name: &str) -> io::Result<()>;
    fn setdomainname(&mut self, name: &str) -> io::Result<()>;
    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()>;
    fn setgroups(&mut self, groups: &[u32]) -> io::Result<()>;
    fn setresgid(&mut self, gid: u32) -> io::Result<()>;
    fn setresuid(&mut self, uid: u32) -> io::Result<()>;
    /// Drops one capability from the bounding set.
    fn drop_bounding(&mut self, cap: u32) -> io::Result<()>;
    /// Sets the effective, permitted and inheritable sets.
    fn capset(&mut self, sets: &CapSets) -> io::Result<()>;
    fn raise_ambient(&mut self, cap: u32) -> io::Result<()>;
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> io::Result<()>;
    fn set_no_new_privs(&mut self) -> io::Result<()>;
    fn umask(&mut self, mask: u32);
    /// `setsid()`, then makes the terminal on stdin the controlling terminal.
    fn take_terminal(&mut self) -> io::Result<()>;
    /// The path of the terminal on stdin (`/dev/pts/N`).
    fn terminal_path(&mut self) -> io::Result<std::path::PathBuf>;
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a string"))
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
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// The real system calls.
#[derive(Debug, Default)]
pub struct LibcSys;

impl Sys for LibcSys {
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: unshare(2) takes only flags.
        check(unsafe { libc::unshare(flags) })
    }

    fn setns(&mut self, path: &Path, nstype: libc::c_int) -> io::Result<()> {
        let f = std::fs::File::open(path)?;
        // SAFETY: setns(2) on an fd we hold open for the call.
        check(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), nstype) })
    }

    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = source.map(cstr).transpose()?;
        let fstype = fstype.map(cstr).transpose()?;
        let data = data.map(cstr).transpose()?;
        let target = cpath(target)?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
        check(unsafe {
            libc::mount(
                ptr(&source),
                target.as_ptr(),
                ptr(&fstype),
                flags,
                ptr(&data).cast(),
            )
        })
    }

    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        let t = cpath(target)?;
        // SAFETY: `t` is NUL-terminated.
        check(unsafe { libc::umount2(t.as_ptr(), flags) })
    }

    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()> {
        self.chdir(new_root)?;
        // SAFETY: pivot_root(2) with two NUL-terminated strings; the old root is stacked
        // on "." and detached at once.
        check(unsafe {
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
        })?;
        // SAFETY: `"."` is NUL-terminated.
        check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })?;
        self.chdir(Path::new("/"))
    }

    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        std::env::set_current_dir(path)
    }

    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
    }

    fn mknod(&mut self, path: &Path, kind: u32, mode: u32, dev: u64) -> io::Result<()> {
        let p = cpath(path)?;
        // The node gets exactly `mode`: no umask in the way (as runc).
        // SAFETY: umask(2) cannot fail; `p` is NUL-terminated; mknod(2) takes plain numbers.
        let r = unsafe {
            let old = libc::umask(0);
            let rc = libc::mknod(p.as_ptr(), kind | mode, dev);
            let r = check(rc);
            libc::umask(old);
            r
        };
        exists_ok(r)
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        exists_ok(std::os::unix::fs::symlink(target, link))
    }

    fn kind(&mut self, path: &Path) -> io::Result<Option<Kind>> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(Some(Kind::Dir)),
            Ok(m) if m.is_file() => Ok(Some(Kind::File)),
            Ok(_) => Ok(Some(Kind::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_file(&mut self, path: &Path, contents: &str) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(contents.as_bytes())
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn setdomainname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s bytes.
        check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) })
    }

    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        // SAFETY: prctl(2) with plain integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong, 0, 0, 0) })
    }

    fn setgroups(&mut self, groups: &[u32]) -> io::Result<()> {
        // SAFETY: the pointer and count describe `groups`. The raw syscall sets the groups of
        // this (single-threaded) process only, without glibc's cross-thread signalling.
        check(unsafe {
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) as libc::c_int
        })
    }

    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        // SAFETY: plain integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) as libc::c_int })
    }

    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        // SAFETY: plain integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) as libc::c_int })
    }

    fn drop_bounding(&mut self, cap: u32) -> io::Result<()> {
        // SAFETY: prctl(2) with plain integer arguments.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })
    }

    fn capset(&mut self, sets: &CapSets) -> io::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let split = |m: u64| [m as u32, (m >> 32) as u32];
        let (e, p, i) = (
            split(sets.effective),
            split(sets.permitted),
            split(sets.inheritable),
        );
        let data = [
            Data {
                effective: e[0],
                permitted: p[0],
                inheritable: i[0],
            },
            Data {
                effective: e[1],
                permitted: p[1],
                inheritable: i[1],
            },
        ];
        // SAFETY: capset(2) with a version-3 header and the two data words it reads.
        check(unsafe {
            libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr())
                as libc::c_int
        })
    }

    fn raise_ambient(&mut self, cap: u32) -> io::Result<()> {
        // SAFETY: prctl(2) with plain integer arguments.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        })
    }

    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: prlimit(2) on this process with a limit that lives across the call.
        check(unsafe {
            libc::prlimit(
                0,
                resource as libc::__rlimit_resource_t,
                &lim,
                std::ptr::null_mut(),
            )
        })
    }

    fn set_no_new_privs(&mut self) -> io::Result<()> {
        // SAFETY: prctl(2) with plain integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
    }

    fn umask(&mut self, mask: u32) {
        // SAFETY: umask(2) cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }

    fn take_terminal(&mut self) -> io::Result<()> {
        // SAFETY: setsid(2) takes nothing; -1 is an error.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TIOCSCTTY on stdin, the terminal's slave.
        check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })
    }

    fn terminal_path(&mut self) -> io::Result<std::path::PathBuf> {
        std::fs::read_link("/proc/self/fd/0")
    }
}

/// Records each call, in order, as one line; answers `kind` from a list of existing paths.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Recorder {
    pub calls: Vec<String>,
    pub existing: Vec<(std::path::PathBuf, Kind)>,
}

#[cfg(test)]
impl Sys for Recorder {
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        self.calls.push(format!("unshare {flags:#x}"));
        Ok(())
    }
    fn setns(&mut self, path: &Path, nstype: libc::c_int) -> io::Result<()> {
        self.calls
            .push(format!("setns {} {nstype:#x}", path.display()));
        Ok(())
    }
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.calls.push(format!(
            "mount {} {} {} {flags:#x} {}",
            source.unwrap_or("-"),
            target.display(),
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn umount(&mut self, target: &Path, flags: libc::c_int) -> io::Result<()> {
        self.calls
            .push(format!("umount {} {flags:#x}", target.display()));
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path) -> io::Result<()> {
        self.calls
            .push(format!("pivot_root {}", new_root.display()));
        Ok(())
    }
    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        self.calls.push(format!("chdir {}", path.display()));
        Ok(())
    }
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        self.calls.push(format!("mkdir {}", path.display()));
        Ok(())
    }
    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        self.calls.push(format!("touch {}", path.display()));
        Ok(())
    }
    fn mknod(&mut self, path: &Path, kind: u32, mode: u32, dev: u64) -> io::Result<()> {
        self.calls
            .push(format!("mknod {} {kind:o} {mode:o} {dev}", path.display()));
        Ok(())
    }
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.calls
            .push(format!("chown {} {uid} {gid}", path.display()));
        Ok(())
    }
    fn symlink(&mut self, target: &Path, link: &Path) -> io::Result<()> {
        self.calls
            .push(format!("symlink {} {}", target.display(), link.display()));
        Ok(())
    }
    fn kind(&mut self, path: &Path) -> io::Result<Option<Kind>> {
        Ok(self
            .existing
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, k)| *k))
    }
    fn write_file(&mut self, path: &Path, contents: &str) -> io::Result<()> {
        self.calls
            .push(format!("write {} {contents}", path.display()));
        Ok(())
    }
    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        self.calls.push(format!("sethostname {name}"));
        Ok(())
    }
    fn setdomainname(&mut self, name: &str) -> io::Result<()> {
        self.calls.push(format!("setdomainname {name}"));
        Ok(())
    }
    fn set_keep_caps(&mut self, keep: bool) -> io::Result<()> {
        self.calls.push(format!("keepcaps {keep}"));
        Ok(())
    }
    fn setgroups(&mut self, groups: &[u32]) -> io::Result<()> {
        self.calls.push(format!("setgroups {groups:?}"));
        Ok(())
    }
    fn setresgid(&mut self, gid: u32) -> io::Result<()> {
        self.calls.push(format!("setresgid {gid}"));
        Ok(())
    }
    fn setresuid(&mut self, uid: u32) -> io::Result<()> {
        self.calls.push(format!("setresuid {uid}"));
        Ok(())
    }
    fn drop_bounding(&mut self, cap: u32) -> io::Result<()> {
        self.calls.push(format!("drop_bounding {cap}"));
        Ok(())
    }
    fn capset(&mut self, sets: &CapSets) -> io::Result<()> {
        self.calls.push(format!(
            "capset e={:#x} p={:#x} i={:#x}",
            sets.effective, sets.permitted, sets.inheritable
        ));
        Ok(())
    }
    fn raise_ambient(&mut self, cap: u32) -> io::Result<()> {
        self.calls.push(format!("ambient {cap}"));
        Ok(())
    }
    fn setrlimit(&mut self, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
        self.calls
            .push(format!("setrlimit {resource} {soft} {hard}"));
        Ok(())
    }
    fn set_no_new_privs(&mut self) -> io::Result<()> {
        self.calls.push("no_new_privs".into());
        Ok(())
    }
    fn umask(&mut self, mask: u32) {
        self.calls.push(format!("umask {mask:o}"));
    }
    fn take_terminal(&mut self) -> io::Result<()> {
        self.calls.push("take_terminal".into());
        Ok(())
    }
    fn terminal_path(&mut self) -> io::Result<std::path::PathBuf> {
        Ok("/dev/pts/0".into())
    }
}
