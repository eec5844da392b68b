//! Per-VM socket directories under the run root: created private (0700), removed when the VM
//! ends, and swept when a husk process died without removing its own (killed by a signal).
//!
//! Owns creating, removing and sweeping these directories. Must never remove a directory whose
//! creating process may still be alive.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::config::creator_pid;
use crate::error::VmError;

/// A VM's socket directory; removed with everything in it when dropped.
#[derive(Debug)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// Creates `run_root/id` (and `run_root`), after sweeping stale directories.
    pub fn create(run_root: &Path, id: &str) -> Result<Self, VmError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_root)
            .map_err(VmError::io(format!("creating {}", run_root.display())))?;
        sweep_stale(run_root);
        let dir = run_root.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(VmError::io(format!(
                "creating the VM directory {}",
                dir.display()
            )))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes directories whose creating husk process no longer exists. Their VMs' processes died
/// with it (they are spawned with a parent-death signal), so only sockets are left.
pub fn sweep_stale(run_root: &Path) {
    let Ok(entries) = std::fs::read_dir(run_root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(creator_pid) else {
            continue;
        };
        if !husk_state::alive(pid) {
            tracing::info!(dir = %e.path().display(), "removing a stale VM directory");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_remove_and_sweep() {
        let root = tempfile::tempdir().unwrap();
        let id = crate::config::fresh_id();
        let dir = RunDir::create(root.path(), &id).unwrap();
        let path = dir.path().to_owned();
        assert!(path.is_dir());
        // A directory left by a process that no longer exists (pid 2^22 + 1 is above pid_max's
        // default ceiling), and one whose name is not ours.
        let stale = root
            .path()
            .join(format!("{}-0", crate::config::base36(4_194_305)));
        std::fs::create_dir(&stale).unwrap();
        std::fs::create_dir(root.path().join("not-a-vm")).unwrap();
        sweep_stale(root.path());
        assert!(!stale.exists());
        assert!(path.is_dir(), "our own live directory is kept");
        assert!(root.path().join("not-a-vm").exists());
        drop(dir);
        assert!(!path.exists());
    }
}
