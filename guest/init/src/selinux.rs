//! SELinux at boot: mounts selinuxfs, loads the image's policy and turns enforcing on, after
//! the base mounts and before any service starts, unless the kernel command line turns it off
//! (`husk.selinux=0`).
//!
//! Order: the root has already moved from the initramfs to a tmpfs, and the base filesystems
//! are mounted, all before the policy exists. That is fine: the kernel labels those files and
//! mounts when the policy loads (the root's and /run's files as `tmpfs_t`, /dev's as
//! `device_t`, by the policy's filesystem rules), and init itself becomes `kernel_t`, the
//! kernel's domain, which its services inherit.
//!
//! Owns selinuxfs and the policy load. Must never leave SELinux weaker than the image and the
//! command line ask for: every failure is returned, and husk-init treats it as fatal.

use std::io;
use std::path::Path;

use husk_protocols::cmdline::SelinuxMode;
use husk_protocols::manifest::SelinuxPolicy;
use libc::{MS_NOEXEC, MS_NOSUID, MS_RELATIME};

use crate::syscalls::{MountRequest, Syscalls};

/// selinuxfs, where libselinux looks for it.
pub const SELINUXFS: MountRequest = MountRequest {
    source: "selinuxfs",
    target: "/sys/fs/selinux",
    fstype: "selinuxfs",
    flags: MS_NOSUID | MS_NOEXEC | MS_RELATIME,
    data: None,
};

/// Writing a binary policy here loads it.
const LOAD: &str = "/sys/fs/selinux/load";
/// `1`: enforcing, `0`: permissive.
const ENFORCE: &str = "/sys/fs/selinux/enforce";

/// What init did about SELinux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The policy is loaded, enforcing or permissive.
    Loaded(SelinuxMode),
    /// The command line turned SELinux off.
    TurnedOff,
    /// The image carries no policy (built before husk had SELinux).
    NoPolicy,
}

impl Outcome {
    /// The mode in effect.
    pub fn mode(self) -> SelinuxMode {
        match self {
            Outcome::Loaded(m) => m,
            Outcome::TurnedOff | Outcome::NoPolicy => SelinuxMode::Off,
        }
    }
}

/// Why SELinux could not be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum SelinuxError {
    #[error(
        "cannot mount selinuxfs on {target}: {0} (the guest kernel needs CONFIG_SECURITY_SELINUX)",
        target = SELINUXFS.target
    )]
    Mount(io::Error),
    #[error("cannot read the image's SELinux policy {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(
        "the kernel refused the SELinux policy {path} ({bytes} bytes, version {version}): {source}"
    )]
    Load {
        path: String,
        bytes: usize,
        version: u32,
        source: io::Error,
    },
    #[error("cannot set SELinux {mode}: {source}")]
    Enforce {
        mode: &'static str,
        source: io::Error,
    },
    #[error("SELinux should be {wanted} but {ENFORCE} reads {found:?}")]
    Mismatch { wanted: &'static str, found: String },
}

/// Sets SELinux up as `wanted` (from the command line) with the image's `policy`.
pub fn setup(
    sys: &mut impl Syscalls,
    wanted: SelinuxMode,
    policy: Option<&SelinuxPolicy>,
) -> Result<Outcome, SelinuxError> {
    if wanted == SelinuxMode::Off {
        return Ok(Outcome::TurnedOff);
    }
    let Some(policy) = policy else {
        return Ok(Outcome::NoPolicy);
    };
    match sys.mount(&SELINUXFS) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => return Err(SelinuxError::Mount(e)),
    }
    let binary = sys
        .read_file(Path::new(&policy.path))
        .map_err(|source| SelinuxError::Read {
            path: policy.path.clone(),
            source,
        })?;
    sys.write_file(Path::new(LOAD), &binary)
        .map_err(|source| SelinuxError::Load {
            path: policy.path.clone(),
            bytes: binary.len(),
            version: policy.version,
            source,
        })?;
    let (value, name) = match wanted {
        SelinuxMode::Permissive => (b"0", SelinuxMode::Permissive.name()),
        _ => (b"1", SelinuxMode::Enforcing.name()),
    };
    sys.write_file(Path::new(ENFORCE), value)
        .map_err(|source| SelinuxError::Enforce { mode: name, source })?;
    // Read back: what the kernel says is what counts.
    let found = sys
        .read_file(Path::new(ENFORCE))
        .map_err(|source| SelinuxError::Enforce { mode: name, source })?;
    let found = String::from_utf8_lossy(&found).trim().to_owned();
    if found.as_bytes() != value {
        return Err(SelinuxError::Mismatch {
            wanted: name,
            found,
        });
    }
    Ok(Outcome::Loaded(if value == b"1" {
        SelinuxMode::Enforcing
    } else {
        SelinuxMode::Permissive
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::RecordingSyscalls;

    fn policy() -> SelinuxPolicy {
        SelinuxPolicy {
            path: "/etc/selinux/husk/policy/policy.33".into(),
            version: 33,
            sha256: "ab".into(),
        }
    }

    fn sys_with_policy() -> RecordingSyscalls {
        RecordingSyscalls {
            files: vec![(policy().path, b"\x8c\xff\x7c\xf9policy".to_vec())],
            ..Default::default()
        }
    }

    #[test]
    fn loads_then_enforces() {
        let mut sys = sys_with_policy();
        let out = setup(&mut sys, SelinuxMode::Enforcing, Some(&policy())).unwrap();
        assert_eq!(out, Outcome::Loaded(SelinuxMode::Enforcing));
        assert_eq!(
            sys.calls,
            [
                "mount selinuxfs selinuxfs /sys/fs/selinux",
                "read /etc/selinux/husk/policy/policy.33",
                "write /sys/fs/selinux/load 10 bytes",
                "write /sys/fs/selinux/enforce 1 bytes",
                "read /sys/fs/selinux/enforce",
            ]
        );
        assert!(sys
            .files
            .contains(&("/sys/fs/selinux/enforce".into(), b"1".to_vec())));
    }

    #[test]
    fn permissive_loads_without_enforcing() {
        let mut sys = sys_with_policy();
        let out = setup(&mut sys, SelinuxMode::Permissive, Some(&policy())).unwrap();
        assert_eq!(out, Outcome::Loaded(SelinuxMode::Permissive));
        assert_eq!(out.mode().name(), "permissive");
        assert!(sys
            .files
            .contains(&("/sys/fs/selinux/enforce".into(), b"0".to_vec())));
    }

    #[test]
    fn off_touches_nothing() {
        let mut sys = sys_with_policy();
        let out = setup(&mut sys, SelinuxMode::Off, Some(&policy())).unwrap();
        assert_eq!(out, Outcome::TurnedOff);
        assert_eq!(out.mode(), SelinuxMode::Off);
        assert!(sys.calls.is_empty());
        let out = setup(&mut sys, SelinuxMode::Enforcing, None).unwrap();
        assert_eq!(out, Outcome::NoPolicy);
        assert!(sys.calls.is_empty());
    }

    #[test]
    fn an_existing_selinuxfs_is_fine() {
        let mut sys = RecordingSyscalls {
            fail_mounts: vec![("/sys/fs/selinux", libc::EBUSY)],
            ..sys_with_policy()
        };
        setup(&mut sys, SelinuxMode::Enforcing, Some(&policy())).unwrap();
    }

    #[test]
    fn failures_say_what_failed() {
        let mut sys = RecordingSyscalls {
            fail_mounts: vec![("/sys/fs/selinux", libc::ENODEV)],
            ..sys_with_policy()
        };
        let err = setup(&mut sys, SelinuxMode::Enforcing, Some(&policy())).unwrap_err();
        assert!(err.to_string().contains("CONFIG_SECURITY_SELINUX"), "{err}");

        let mut sys = RecordingSyscalls::default();
        let err = setup(&mut sys, SelinuxMode::Enforcing, Some(&policy())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read the image's SELinux policy /etc/selinux/husk"),
            "{err}"
        );

        let mut sys = RecordingSyscalls {
            fail_writes: vec![("/sys/fs/selinux/load", libc::EINVAL)],
            ..sys_with_policy()
        };
        let err = setup(&mut sys, SelinuxMode::Enforcing, Some(&policy())).unwrap_err();
        assert!(
            err.to_string()
                .contains("the kernel refused the SELinux policy"),
            "{err}"
        );

        let mut sys = RecordingSyscalls {
            fail_writes: vec![("/sys/fs/selinux/enforce", libc::EACCES)],
            ..sys_with_policy()
        };
        let err = setup(&mut sys, SelinuxMode::Enforcing, Some(&policy())).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot set SELinux enforcing"),
            "{err}"
        );
    }
}
