//! Where an installation of husk keeps its guest kernel and images, and where VMs put their
//! sockets and logs. `kernel/build.sh`, `husk image build`, the CLI and the tests agree on
//! these through this module alone.
//!
//! Owns the default paths and their environment overrides. Must never create or read files.

use std::path::PathBuf;

/// Overrides the artifact root (default [`DEFAULT_HOME`]).
pub const HOME_ENV: &str = "HUSK_HOME";
/// The artifact root when [`HOME_ENV`] is not set.
pub const DEFAULT_HOME: &str = "/var/lib/husk";
/// Overrides the VM socket root (default [`crate::config::DEFAULT_RUN_ROOT`]).
pub const RUN_ROOT_ENV: &str = "HUSK_RUN_ROOT";
/// Overrides the VM log root (default [`crate::config::DEFAULT_LOG_ROOT`]).
pub const LOG_ROOT_ENV: &str = "HUSK_LOG_ROOT";

fn env_or(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

/// The artifact root.
pub fn home() -> PathBuf {
    env_or(HOME_ENV, DEFAULT_HOME)
}

/// The guest kernel installed by `kernel/build.sh`.
pub fn kernel() -> PathBuf {
    home().join("kernel/vmlinux")
}

/// The guest image of a flavour (`default`, `debug`), as `husk image build` writes it.
pub fn image(flavour: &str) -> PathBuf {
    home().join("images").join(format!("{flavour}.cpio"))
}

/// A container image husk made itself (e.g. `busybox`), as a root filesystem directory.
pub fn container_image(name: &str) -> PathBuf {
    home().join("containers").join(name)
}

/// Root of per-VM socket directories.
pub fn run_root() -> PathBuf {
    env_or(RUN_ROOT_ENV, crate::config::DEFAULT_RUN_ROOT)
}

/// Root of per-VM log directories.
pub fn log_root() -> PathBuf {
    env_or(LOG_ROOT_ENV, crate::config::DEFAULT_LOG_ROOT)
}
