//! Containers' root filesystems on the host: the pod's shared directory (one virtio-fs share
//! per pod, a shared mount so that what is mounted in it later reaches virtiofsd), and in it
//! each container's rootfs at `<id>/rootfs`: the mounts containerd passes with Create (the
//! snapshot, usually an overlay), or the bundle's own rootfs directory bound there.
//!
//! Owns mounting and unmounting there. Must never leave a mount behind on a failed create or
//! a delete.

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

/// Makes `dir` a mount point of its own with shared propagation, so mounts made under it later
/// propagate into virtiofsd's mount namespace (a slave of the host's).
pub fn make_shared_dir(dir: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| anyhow::anyhow!("binding {} onto itself: {e}", dir.display()))?;
    if let Err(e) = mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    ) {
        unmount(dir);
        anyhow::bail!("making {} a shared mount: {e}", dir.display());
    }
    Ok(())
}

/// Binds `source` (a prepared rootfs directory) at `target`.
pub fn bind(source: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", target.display()))?;
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("binding {} at {}: {e}", source.display(), target.display()))
}
