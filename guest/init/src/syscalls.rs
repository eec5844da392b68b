//! The privileged system calls husk-init makes, behind a small trait so that the logic that
//! decides *what* to mount or set is unit-tested without root, against a recording fake.
//!
//! This module owns the trait, the real implementation and the fake. It must never decide
//! policy (which filesystems, which hostname): callers do.

use std::io;
use std::path::Path;

/// One filesystem mount request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: Option<&'static str>,
}

/// The system calls init needs for its setup.
pub trait Syscalls {
    /// `mkdir -p` with the given mode for directories it creates.
    fn create_dir_all(&mut self, path: &Path, mode: u32) -> io::Result<()>;
    /// `mount(2)`.
    fn mount(&mut self, req: &MountRequest) -> io::Result<()>;
    /// `sethostname(2)`.
    fn set_hostname(&mut self, name: &str) -> io::Result<()>;
    /// Reads a whole file.
    fn read_file(&mut self, path: &Path) -> io::Result<Vec<u8>>;
    /// Writes `data` to an existing file in a single `write(2)` (kernel interfaces such as
    /// selinuxfs take a value only whole, in one call); a short write is an error.
    fn write_file(&mut self, path: &Path, data: &[u8]) -> io::Result<()>;
}

/// The real system calls.
#[derive(Debug, Default)]
pub struct RealSyscalls;

impl Syscalls for RealSyscalls {
    fn create_dir_all(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn mount(&mut self, req: &MountRequest) -> io::Result<()> {
        nix::mount::mount(
            Some(req.source),
            req.target,
            Some(req.fstype),
            nix::mount::MsFlags::from_bits_truncate(req.flags),
            req.data,
        )
        .map_err(io::Error::from)
    }

    fn set_hostname(&mut self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn read_file(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_file(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        let n = f.write(data)?;
        if n != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", data.len()),
            ));
        }
        Ok(())
    }
}

/// A fake that records every call and fails the ones it is told to.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct RecordingSyscalls {
    pub calls: Vec<String>,
    /// Mount targets that fail with the given errno.
    pub fail_mounts: Vec<(&'static str, i32)>,
    /// Files the fake reads: path and contents (others are `ENOENT`). Writes update them.
    pub files: Vec<(String, Vec<u8>)>,
    /// Paths whose writes fail with the given errno.
    pub fail_writes: Vec<(&'static str, i32)>,
}

#[cfg(test)]
impl Syscalls for RecordingSyscalls {
    fn create_dir_all(&mut self, path: &Path, mode: u32) -> io::Result<()> {
        self.calls
            .push(format!("mkdir {} {mode:o}", path.display()));
        Ok(())
    }

    fn mount(&mut self, req: &MountRequest) -> io::Result<()> {
        self.calls.push(format!(
            "mount {} {} {}",
            req.fstype, req.source, req.target
        ));
        match self.fail_mounts.iter().find(|(t, _)| *t == req.target) {
            Some((_, errno)) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }

    fn set_hostname(&mut self, name: &str) -> io::Result<()> {
        self.calls.push(format!("hostname {name}"));
        Ok(())
    }

    fn read_file(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        let path = path.to_string_lossy();
        self.calls.push(format!("read {path}"));
        self.files
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn write_file(&mut self, path: &Path, data: &[u8]) -> io::Result<()> {
        let path = path.to_string_lossy().into_owned();
        self.calls
            .push(format!("write {path} {} bytes", data.len()));
        if let Some((_, errno)) = self.fail_writes.iter().find(|(p, _)| *p == path) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        self.files.retain(|(p, _)| *p != path);
        self.files.push((path, data.to_vec()));
        Ok(())
    }
}
