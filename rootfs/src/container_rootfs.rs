//! Container root filesystems made by husk itself, so that a container runs with no registry:
//! a busybox rootfs built from Debian's busybox-static.
//!
//! Owns that directory layout. Must never overwrite an existing tree: it builds into a fresh
//! directory next to the target and renames it into place.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::elf::check_static_x86_64;
use crate::ImageError;

/// Writes a busybox root filesystem at `out` (replacing what was there).
pub fn busybox_rootfs(busybox: &Path, out: &Path) -> Result<PathBuf, ImageError> {
    let data = std::fs::read(busybox).map_err(|error| ImageError::Read {
        what: "busybox",
        path: busybox.into(),
        error,
    })?;
    check_static_x86_64(&data).map_err(|error| ImageError::Unusable {
        what: "busybox",
        path: busybox.into(),
        error,
        fix: "install Debian's busybox-static package (`apt-get install busybox-static`)",
    })?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| ImageError::Version {
            path: busybox.into(),
            detail: e.to_string(),
        })?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |error| ImageError::Write { path, error }
    };
    let mut staging = out.as_os_str().to_owned();
    staging.push(".new");
    let staging = PathBuf::from(staging);
    let _ = std::fs::remove_dir_all(&staging);
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(staging.join(d)).map_err(write_err(&staging))?;
    }
    std::fs::write(staging.join("bin/busybox"), &data).map_err(write_err(&staging))?;
    std::fs::set_permissions(
        staging.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .map_err(write_err(&staging))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        // Plain names only; the links are relative so they resolve inside and outside the VM.
        if applet.is_empty()
            || applet == "busybox"
            || applet.contains('/')
            || applet.starts_with('.')
        {
            continue;
        }
        std::os::unix::fs::symlink("busybox", staging.join("bin").join(applet))
            .map_err(write_err(&staging))?;
    }
    std::fs::write(
        staging.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .map_err(write_err(&staging))?;
    std::fs::write(staging.join("etc/group"), "root:x:0:\n").map_err(write_err(&staging))?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&staging, out).map_err(write_err(out))?;
    Ok(out.to_owned())
}
