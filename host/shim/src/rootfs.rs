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

/// Binds `source` (a directory or file) at `target` (existing, of the same kind).
pub fn bind(source: &Path, target: &Path) -> anyhow::Result<()> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("binding {} at {}: {e}", source.display(), target.display()))
}

/// Unmounts a container's rootfs and volumes in the pod's shared directory (`dir` is
/// `<shared>/<id>`), and removes what was made there.
pub fn unmount_container(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join("mounts")) {
        for e in entries.flatten() {
            unmount(&e.path());
        }
    }
    unmount(&dir.join("rootfs"));
    remove_unmounted(dir);
}

/// The mount points of this process's mount namespace (`\040`-style escapes decoded).
fn mount_points() -> std::collections::HashSet<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            p.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
                .into()
        })
        .collect()
}

/// Removes `dir` and what is under it, never entering a mount point (one still mounted, such as
/// a volume whose unmount failed, is left with a warning: its files are the user's, not ours
/// to delete). Same-filesystem bind mounts share a device number, so mount points are taken
/// from the mount table.
pub fn remove_unmounted(dir: &Path) {
    let mounts = mount_points();
    fn walk(dir: &Path, mounts: &std::collections::HashSet<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if mounts.contains(&path) {
                tracing::warn!(path = %path.display(), "still mounted; left in place");
                continue;
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    walk(&path, mounts);
                    let _ = std::fs::remove_dir(&path);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => {}
            }
        }
    }
    if mounts.contains(dir) {
        tracing::warn!(path = %dir.display(), "still mounted; left in place");
        return;
    }
    walk(dir, &mounts);
    let _ = std::fs::remove_dir(dir);
}

/// Binds each host bind-mount source of `spec` (its `mounts`) into `dir` (in the pod's shared
/// directory) and points the mount at it as the guest sees it (`guest_dir`); returns the
/// mount points made, to unmount at delete.
pub fn share_volumes(
    spec: &mut serde_json::Value,
    dir: &Path,
    guest_dir: &str,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut made = Vec::new();
    let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) else {
        return Ok(made);
    };
    for (i, m) in mounts.iter_mut().enumerate() {
        let is_bind = m["type"].as_str() == Some("bind")
            || m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
        let Some(source) = m["source"].as_str().filter(|s| s.starts_with('/')) else {
            continue;
        };
        if !is_bind {
            continue;
        }
        let source = Path::new(source).to_owned();
        let meta = std::fs::metadata(&source).map_err(|e| {
            anyhow::anyhow!("bind mount source {} on the host: {e}", source.display())
        })?;
        let target = dir.join(i.to_string());
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::write(&target, b"")
        }
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", target.display()))?;
        bind(&source, &target)?;
        made.push(target);
        m["source"] = format!("{guest_dir}/{i}").into();
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_leaves_nothing_but_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("c1");
        std::fs::create_dir_all(d.join("mounts/0")).unwrap();
        std::fs::write(d.join("mounts/1"), b"").unwrap();
        remove_unmounted(&d);
        assert!(!d.exists());
    }

    #[test]
    fn volumes_are_pointed_at_the_share() {
        let host = tempfile::tempdir().unwrap();
        let mut spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/nonexistent/volume", "options": ["rbind", "ro"]},
        ]});
        let e = share_volumes(
            &mut spec,
            &host.path().join("m"),
            "/run/husk/shares/pod/c/mounts",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("bind mount source /nonexistent/volume"),
            "{e}"
        );
        assert_eq!(
            spec["mounts"][0]["source"], "proc",
            "non-bind mounts are left alone"
        );
    }
}
