//! Leaves the initramfs before anything else runs: the image's files move (copied, then
//! deleted from the initramfs, as `switch_root` does) to a tmpfs that becomes `/`.
//!
//! Why: the initramfs is the kernel's `rootfs`, which `pivot_root` cannot move, so containers
//! could only be chrooted, and a chroot can be left for whatever stays reachable beneath it.
//! On a real mount, the agent's jail uses `pivot_root`, and the `rootfs` under everything is
//! empty. Owns that move. Must never run anywhere but as PID 1 on an initramfs (it deletes the
//! tree it copies); the copy and delete are plain file operations, tested on temporary trees.

use std::io;
use std::os::unix::fs::{lchown, DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

/// `RAMFS_MAGIC` from linux/magic.h (the rootfs without CONFIG_TMPFS).
const RAMFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x8584_58f6);

/// Where the new root is mounted before it moves to `/`.
const NEW_ROOT: &str = "/.husk-root";

/// Copies the tree under `from` into `to` (an existing, empty directory), entry by entry,
/// deleting each original once copied; `skip` (a path under `from`) is neither copied nor
/// deleted. Keeps modes, owners, symlinks and device nodes.
pub fn move_tree(from: &Path, to: &Path, skip: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        if src == skip {
            continue;
        }
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::DirBuilder::new().mode(meta.mode()).create(&dst)?;
            move_tree(&src, &dst, skip)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode()))?;
            std::fs::remove_dir(&src)?;
        } else {
            if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            } else if ft.is_file() {
                std::fs::copy(&src, &dst)?;
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
                let perm = Mode::from_bits_truncate(meta.mode() & 0o7777);
                mknod(&dst, kind, perm, meta.rdev())?;
            } else {
                // Sockets cannot be copied; none are in an image.
                continue;
            }
            std::fs::remove_file(&src)?;
        }
        // Ownership last, so a copy made by a non-root test run only fails here harmlessly.
        if let Err(e) = lchown(&dst, Some(meta.uid()), Some(meta.gid())) {
            if e.kind() != io::ErrorKind::PermissionDenied {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Whether `/` is the initramfs (the kernel's rootfs, a ramfs or a tmpfs).
fn on_initramfs() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(s) => {
            let t = s.filesystem_type();
            t == RAMFS_MAGIC || t == nix::sys::statfs::TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Moves `/` from the initramfs to a tmpfs; does nothing when `/` is not an initramfs (a
/// disk root). Returns whether it moved.
pub fn leave_initramfs() -> io::Result<bool> {
    if !on_initramfs() {
        return Ok(false);
    }
    let new_root = Path::new(NEW_ROOT);
    std::fs::create_dir(new_root)?;
    mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    move_tree(Path::new("/"), new_root, new_root)?;
    std::env::set_current_dir(new_root)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
    nix::unistd::chroot(".")?;
    std::env::set_current_dir("/")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_moves_whole_and_the_original_is_emptied() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let f = from.path();
        std::fs::create_dir_all(f.join("usr/bin")).unwrap();
        std::fs::write(f.join("usr/bin/tool"), b"#!x").unwrap();
        std::fs::set_permissions(
            f.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/bin", f.join("bin")).unwrap();
        std::fs::create_dir(f.join("skipped")).unwrap();
        std::fs::write(f.join("skipped/kept"), b"").unwrap();
        std::fs::create_dir(f.join("tmp")).unwrap();
        std::fs::set_permissions(f.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();

        move_tree(f, to.path(), &f.join("skipped")).unwrap();

        let t = to.path();
        assert_eq!(std::fs::read(t.join("usr/bin/tool")).unwrap(), b"#!x");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&t.join("usr/bin/tool")), 0o755);
        assert_eq!(mode(&t.join("tmp")), 0o1777);
        assert_eq!(
            std::fs::read_link(t.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert!(!t.join("skipped").exists());
        let left: Vec<_> = std::fs::read_dir(f)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["skipped"], "only the skipped entry stays behind");
        assert!(f.join("skipped/kept").exists());
    }
}
