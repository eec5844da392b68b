//! SELinux for containers: the process label (`process.selinuxLabel`, or the default
//! container type) set as the exec label before `execve`, and the mount label
//! (`linux.mountLabel`) added as `context=` to the container's mounts.
//!
//! Owns the labels' validation and application. Must never load policy (husk-init does) nor
//! relabel files.

/// The process label a container gets when its spec names none.
pub const DEFAULT_PROCESS_LABEL: &str = "system_u:system_r:container_t:s0";
/// The file label of a container's mounts when its spec names none.
pub const DEFAULT_MOUNT_LABEL: &str = "system_u:object_r:container_file_t:s0";

/// Why a label was refused or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SelinuxError {
    #[error("SELinux label {0:?} is not user:role:type[:level]")]
    BadLabel(String),
}

/// Whether SELinux is on in this guest (a policy is loaded).
pub fn is_enabled() -> bool {
    false
}

/// Checks a label's syntax (`user:role:type[:level]`, no NUL, no whitespace, bounded).
pub fn validate_label(label: &str) -> Result<(), SelinuxError> {
    Err(SelinuxError::BadLabel(label.to_owned()))
}

/// Sets the label the calling thread's next `execve` runs with.
pub fn set_exec_label(label: &str) -> Result<(), SelinuxError> {
    Err(SelinuxError::BadLabel(label.to_owned()))
}

/// The mount option that gives a new mount's files `label`.
pub fn mount_option(label: &str) -> String {
    format!("context=\"{label}\"")
}
