//! SELinux for containers: the process label (`process.selinuxLabel`, or the default
//! container type) set as the exec label before `execve`, and the mount label
//! (`linux.mountLabel`) added as `context=` to the container's mounts.
//!
//! Implemented with the `selinux` crate (libselinux through `selinux-sys`; linked statically
//! into the guest agent, see this crate's build script). Labels are `user:role:type:level`
//! with husk's MCS level (`s0`, or `s0:c1,c2` for a Kubernetes pod); a label without a level
//! gets [`DEFAULT_LEVEL`]. The policy that defines the types is `rootfs/selinux/husk.cil`.
//!
//! Owns the labels' validation and application. Must never load policy (husk-init does) nor
//! relabel files. When SELinux is off in the guest (`husk.selinux=0`), labels are still
//! validated but applying them does nothing, as runc does on a host without SELinux.

use std::borrow::Cow;
use std::ffi::CString;

use selinux::{KernelSupport, SELinuxMode, SecurityContext};

/// The process label a container gets when its spec names none.
pub const DEFAULT_PROCESS_LABEL: &str = "system_u:system_r:container_t:s0";
/// The file label of a container's mounts when its spec names none.
pub const DEFAULT_MOUNT_LABEL: &str = "system_u:object_r:container_file_t:s0";
/// The MCS level of a label that names none (no categories).
pub const DEFAULT_LEVEL: &str = "s0";
/// Longest label accepted: what one write to `/proc/thread-self/attr/exec` takes (a page).
pub const MAX_LABEL_LEN: usize = 4095;

/// Why a label was refused or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SelinuxError {
    #[error("SELinux label {0:?} is not user:role:type[:level]")]
    BadLabel(String),
    #[error("cannot set the exec label {label:?} (does the policy define it?): {detail}")]
    SetExec { label: String, detail: String },
    #[error("cannot read this process's SELinux label: {0}")]
    Current(String),
}

/// An error of the `selinux` crate with its causes (its own text names only the call).
fn describe(e: &selinux::errors::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether SELinux is on in this guest: husk-init mounted selinuxfs and loaded the policy
/// (libselinux also wants `/etc/selinux/config`, which the image carries).
pub fn is_enabled() -> bool {
    selinux::kernel_support() != KernelSupport::Unsupported
}

/// Whether SELinux is on and enforcing (not permissive).
pub fn enforcing() -> bool {
    is_enabled() && selinux::current_mode() == SELinuxMode::Enforcing
}

/// The calling thread's own label (e.g. `system_u:system_r:kernel_t:s0-s0:c0.c1023` for the
/// agent); `None` when SELinux is off.
pub fn current_label() -> Result<Option<String>, SelinuxError> {
    if !is_enabled() {
        return Ok(None);
    }
    let ctx = SecurityContext::current(true).map_err(|e| SelinuxError::Current(describe(&e)))?;
    let bytes = ctx.as_bytes();
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A name in a label (user, role, type, sensitivity or category): letters, digits, `_`, `.`,
/// and `-` where it cannot be taken for a level range's (`dash_ok`: users, roles, types).
fn valid_name(s: &str, dash_ok: bool) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || (dash_ok && b == b'-'))
}

/// One MLS level: `sens` or `sens:cats`, where cats is a comma list of `c` or `c.c` ranges.
fn valid_level(level: &str) -> bool {
    let (sens, cats) = match level.split_once(':') {
        Some((s, c)) => (s, Some(c)),
        None => (level, None),
    };
    let name = |s: &str| valid_name(s, false) && !s.contains('.');
    name(sens)
        && cats.is_none_or(|cats| {
            cats.split(',').all(|item| match item.split_once('.') {
                Some((lo, hi)) => name(lo) && name(hi),
                None => name(item),
            })
        })
}

/// Checks a label's syntax (`user:role:type[:level]`, no NUL, no whitespace, no quotes,
/// bounded). The level may be a range (`s0-s0:c0.c1023`). Whether the policy accepts it is
/// only known when it is applied.
pub fn validate_label(label: &str) -> Result<(), SelinuxError> {
    let bad = || SelinuxError::BadLabel(label.to_owned());
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(bad());
    }
    let mut parts = label.splitn(4, ':');
    let (Some(user), Some(role), Some(ty)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if ![user, role, ty].iter().all(|n| valid_name(n, true)) {
        return Err(bad());
    }
    match parts.next() {
        None => Ok(()),
        Some(range) => {
            let ok = match range.split_once('-') {
                Some((low, high)) => valid_level(low) && valid_level(high),
                None => valid_level(range),
            };
            if ok {
                Ok(())
            } else {
                Err(bad())
            }
        }
    }
}

/// `label` with [`DEFAULT_LEVEL`] added when it names no level (husk's policy is MCS: the
/// kernel refuses a label without one).
pub fn with_default_level(label: &str) -> Cow<'_, str> {
    if label.split(':').count() >= 4 {
        Cow::Borrowed(label)
    } else {
        Cow::Owned(format!("{label}:{DEFAULT_LEVEL}"))
    }
}

/// Sets the label the calling thread's next `execve` runs with (`setexeccon`, which writes
/// `/proc/thread-self/attr/exec`): call it in the container's process after fork, as late as
/// possible before `execve`. The agent's domain may enter any container type, also with
/// no_new_privs set (the policy grants `nnp_transition`). Does nothing but validate when
/// SELinux is off.
pub fn set_exec_label(label: &str) -> Result<(), SelinuxError> {
    validate_label(label)?;
    if !is_enabled() {
        return Ok(());
    }
    let label = with_default_level(label);
    let c =
        CString::new(label.as_bytes()).map_err(|_| SelinuxError::BadLabel(label.to_string()))?;
    let ctx = SecurityContext::from_c_str(&c, true);
    ctx.set_for_next_exec().map_err(|e| SelinuxError::SetExec {
        label: label.to_string(),
        detail: describe(&e),
    })
}

/// The mount option that gives a new mount's files `label` (validate it first). The label is
/// quoted, so the commas of a category list (`s0:c1,c2`) stay part of it for the kernel's
/// option parser.
pub fn mount_option(label: &str) -> String {
    format!("context=\"{}\"", with_default_level(label))
}

/// Mount data `data` (e.g. `mode=0755`, or empty) with the `context=` option for `label`
/// added. Only for SELinux on: the kernel refuses `context=` before a policy is loaded.
pub fn add_mount_label(data: &str, label: &str) -> String {
    if data.is_empty() {
        mount_option(label)
    } else {
        format!("{data},{}", mount_option(label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits mount data as the kernel's SELinux option parser does: on commas outside
    /// double quotes, then drops the quotes of each option's value.
    fn kernel_split(data: &str) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut quoted = false;
        for c in data.chars() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => out.push(String::new()),
                c => out.last_mut().unwrap().push(c),
            }
        }
        out
    }

    #[test]
    fn good_labels_pass() {
        for l in [
            DEFAULT_PROCESS_LABEL,
            DEFAULT_MOUNT_LABEL,
            "system_u:system_r:container_t:s0:c1,c2",
            "system_u:object_r:container_file_t:s0:c0.c1023",
            "system_u:system_r:kernel_t:s0-s0:c0.c1023",
            "system_u:system_r:container_t:s0:c1,c5.c9,c700",
            "unconfined_u:unconfined_r:spc_t",
            "user.name:role-x:type_1:s0",
        ] {
            validate_label(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        }
    }

    #[test]
    fn bad_labels_fail() {
        let long = format!("u:r:{}:s0", "t".repeat(MAX_LABEL_LEN));
        for l in [
            "",
            "container_t",
            "u:r",
            "u::t:s0",
            "u:r:t:",
            "u:r:t:s0:",
            "u:r:t:s0:c1,",
            "u:r:t:s0:c1..c2",
            "u:r:t:s0-",
            "u:r:t:s0:c1,c2\",x=\"y",
            "u:r:t:s0 c1",
            "u:r:t\0:s0",
            "u:r:t:s0\n",
            "u:r:t:s0:c1:c2",
            long.as_str(),
        ] {
            assert!(
                matches!(validate_label(l), Err(SelinuxError::BadLabel(_))),
                "{l:?} passed"
            );
        }
    }

    #[test]
    fn a_missing_level_becomes_s0() {
        assert_eq!(
            with_default_level("system_u:system_r:container_t"),
            "system_u:system_r:container_t:s0"
        );
        assert_eq!(
            with_default_level(DEFAULT_PROCESS_LABEL),
            DEFAULT_PROCESS_LABEL
        );
        assert_eq!(
            with_default_level("u:r:t:s0:c1,c2"),
            "u:r:t:s0:c1,c2",
            "a level with categories is kept whole"
        );
    }

    #[test]
    fn mount_option_is_quoted() {
        assert_eq!(
            mount_option(DEFAULT_MOUNT_LABEL),
            "context=\"system_u:object_r:container_file_t:s0\""
        );
        assert_eq!(
            mount_option("system_u:object_r:container_file_t"),
            "context=\"system_u:object_r:container_file_t:s0\""
        );
    }

    #[test]
    fn categories_survive_the_kernels_option_parser() {
        let label = "system_u:object_r:container_file_t:s0:c1,c2";
        let data = add_mount_label("mode=0755,size=65536k", label);
        assert_eq!(
            kernel_split(&data),
            [
                "mode=0755",
                "size=65536k",
                "context=system_u:object_r:container_file_t:s0:c1,c2"
            ]
        );
        assert_eq!(
            kernel_split(&add_mount_label("", label)),
            ["context=system_u:object_r:container_file_t:s0:c1,c2"]
        );
    }

    #[test]
    fn the_default_labels_name_types_of_husks_policy() {
        let policy = include_str!("../../../../rootfs/selinux/husk.cil");
        for label in [DEFAULT_PROCESS_LABEL, DEFAULT_MOUNT_LABEL] {
            let ty = label.split(':').nth(2).unwrap();
            assert!(
                policy.contains(&format!("(type {ty})")),
                "rootfs/selinux/husk.cil has no type {ty}"
            );
        }
        assert!(policy.contains("(roletype system_r domain)"));
    }

    #[test]
    fn applying_a_bad_label_fails_before_touching_the_kernel() {
        assert!(matches!(
            set_exec_label("not a label"),
            Err(SelinuxError::BadLabel(_))
        ));
    }
}
