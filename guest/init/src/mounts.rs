//! The guest's base filesystems: what husk-init mounts before anything else runs.
//!
//! Owns the mount table and the order. Must never mount anything that comes from the host or a
//! container spec (that is the agent's job).

use std::io;
use std::path::Path;

use libc::{MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RELATIME};

use crate::syscalls::{MountRequest, Syscalls};

/// Mounts in order: a later entry may live under an earlier one.
pub const BASE_MOUNTS: &[MountRequest] = &[
    MountRequest {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME,
        data: None,
    },
    MountRequest {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME,
        data: None,
    },
    MountRequest {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MS_NOSUID | MS_RELATIME,
        data: Some("mode=0755"),
    },
    MountRequest {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MS_NOSUID | MS_NOEXEC | MS_RELATIME,
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    MountRequest {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MS_NOSUID | MS_NODEV | MS_RELATIME,
        data: Some("mode=1777"),
    },
    MountRequest {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: MS_NOSUID | MS_NODEV | MS_RELATIME,
        data: Some("mode=0755"),
    },
    MountRequest {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME,
        data: Some("nsdelegate"),
    },
];

/// Why the base mounts failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {target}: {source}")]
    MountPoint {
        target: &'static str,
        source: io::Error,
    },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: io::Error,
    },
}

/// Mounts [`BASE_MOUNTS`]. A target that is already mounted (`EBUSY`, e.g. a devtmpfs the
/// kernel mounted itself) counts as done.
pub fn mount_base(sys: &mut impl Syscalls) -> Result<(), MountError> {
    for m in BASE_MOUNTS {
        sys.create_dir_all(Path::new(m.target), 0o755)
            .map_err(|source| MountError::MountPoint {
                target: m.target,
                source,
            })?;
        match sys.mount(m) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(source) => {
                return Err(MountError::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::RecordingSyscalls;

    #[test]
    fn mounts_everything_in_order() {
        let mut sys = RecordingSyscalls::default();
        mount_base(&mut sys).unwrap();
        let mounts: Vec<_> = sys
            .calls
            .iter()
            .filter(|c| c.starts_with("mount"))
            .collect();
        assert_eq!(
            mounts,
            [
                "mount proc proc /proc",
                "mount sysfs sysfs /sys",
                "mount devtmpfs devtmpfs /dev",
                "mount devpts devpts /dev/pts",
                "mount tmpfs shm /dev/shm",
                "mount tmpfs run /run",
                "mount cgroup2 cgroup2 /sys/fs/cgroup",
            ]
        );
        assert_eq!(sys.calls[0], "mkdir /proc 755");
    }

    #[test]
    fn already_mounted_is_fine() {
        let mut sys = RecordingSyscalls {
            fail_mounts: vec![("/dev", libc::EBUSY)],
            ..Default::default()
        };
        mount_base(&mut sys).unwrap();
    }

    #[test]
    fn failure_names_the_mount() {
        let mut sys = RecordingSyscalls {
            fail_mounts: vec![("/sys/fs/cgroup", libc::ENODEV)],
            ..Default::default()
        };
        let err = mount_base(&mut sys).unwrap_err().to_string();
        assert!(
            err.contains("cannot mount cgroup2 on /sys/fs/cgroup"),
            "{err}"
        );
    }
}
