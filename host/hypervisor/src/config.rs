//! What a VM is booted with: kernel, image, size, command line and where its files go.
//!
//! Owns the configuration values and their defaults. Must never start anything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// Where per-VM sockets live by default (removed when the VM ends).
pub const DEFAULT_RUN_ROOT: &str = "/run/husk/vms";

/// Where per-VM logs are kept by default.
pub const DEFAULT_LOG_ROOT: &str = "/var/log/husk/vms";

/// Boot configuration of one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Unique id; names the run and log directories.
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Extra kernel command-line words, appended last (so they win).
    pub extra_cmdline: Vec<String>,
    /// Parent of the VM's socket directory.
    pub run_root: PathBuf,
    /// Parent of the VM's log directory.
    pub log_root: PathBuf,
    /// Deterministic instruction counting under TCG (`-icount shift=0,sleep=off`): guest time
    /// advances one nanosecond per instruction. For benchmarks.
    pub icount: bool,
}

impl VmConfig {
    /// A configuration with defaults and a fresh id.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        Self {
            id: fresh_id(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            extra_cmdline: Vec::new(),
            run_root: DEFAULT_RUN_ROOT.into(),
            log_root: DEFAULT_LOG_ROOT.into(),
            icount: false,
        }
    }

    /// The VM's log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.log_root.join(&self.id)
    }
}

/// `<pid>-<n>` in base 36: unique on this host while the process lives, and short enough
/// that socket paths under the run root stay within `sun_path`'s 108 bytes.
pub fn fresh_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}", base36(std::process::id()), base36(n))
}

/// The pid of the husk process that made `id` with [`fresh_id`], if `id` is one of ours.
pub fn creator_pid(id: &str) -> Option<u32> {
    let (pid, n) = id.split_once('-')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    if !valid(pid) || !valid(n) {
        return None;
    }
    u32::from_str_radix(pid, 36).ok()
}

pub(crate) fn base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_short() {
        let a = fresh_id();
        let b = fresh_id();
        assert_ne!(a, b);
        assert!(a.len() < 16);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36), "10");
        assert_eq!(creator_pid(&a), Some(std::process::id()));
        assert_eq!(creator_pid("not-a-vm!"), None);
        assert_eq!(creator_pid("nodash"), None);
    }
}
