//! The container's root filesystem on the host: the mounts containerd passes with Create (the
//! snapshot, usually an overlay) mounted at `<bundle>/rootfs`, which is then shared into the
//! pod's VM with virtio-fs.
//!
//! Owns mounting and unmounting there. Must never mount outside the bundle nor leave a mount
//! behind on a failed create or a delete.

use std::path::Path;

use containerd_shim::protos::types::mount::Mount;

/// Mounts containerd's rootfs mounts at `target`; `false` when there were none (the bundle
/// already holds a rootfs directory).
pub fn mount(mounts: &[Mount], target: &Path) -> anyhow::Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    std::fs::create_dir_all(target)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", target.display()))?;
    for (i, m) in mounts.iter().enumerate() {
        let fs = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = containerd_shim::mount::mount_rootfs(fs, source, &m.options, target) {
            if i > 0 {
                unmount(target);
            }
            anyhow::bail!(
                "mounting the container's rootfs ({} {}) at {}: {e}",
                m.type_,
                m.source,
                target.display()
            );
        }
    }
    Ok(true)
}

/// Detaches everything mounted at `target` (best effort, logged).
pub fn unmount(target: &Path) {
    loop {
        match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                tracing::warn!(path = %target.display(), error = %e, "unmounting the rootfs");
                break;
            }
        }
    }
}
