//! Applies one image layer (a tar, gzip-compressed or not) onto a root filesystem directory,
//! honouring OCI whiteouts: `.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` empties
//! its directory of what the layers below put there.
//!
//! Owns the layer format. Must never write outside the root: entries go through the `tar`
//! crate's `unpack_in`, which refuses `..` and paths that leave the root, and whiteout targets
//! are checked the same way.

use std::collections::HashSet;
use std::io::{BufRead, Read};
use std::path::{Component, Path, PathBuf};

use crate::{io_err, OciError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Wraps `r` in a gzip decoder when it starts with the gzip magic; refuses zstd.
pub fn maybe_gunzip<'a, R: BufRead + 'a>(mut r: R) -> std::io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "zstd-compressed layers are not supported yet",
        ))
    } else {
        Ok(Box::new(r))
    }
}

/// A relative path with only normal components, or `None`.
fn relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies the layer read from `r` onto `root`.
pub fn apply(r: impl Read, root: &Path, digest: &str) -> Result<(), OciError> {
    let err = |detail: String| OciError::Layer {
        digest: digest.to_owned(),
        detail,
    };
    let mut archive = tar::Archive::new(r);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    // What this layer created, so an opaque marker only hides the layers below.
    let mut ours: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(|e| err(e.to_string()))? {
        let mut entry = entry.map_err(|e| err(e.to_string()))?;
        let raw = entry.path().map_err(|e| err(e.to_string()))?.into_owned();
        let Some(path) = relative(&raw) else {
            if raw
                .components()
                .all(|c| matches!(c, Component::CurDir | Component::RootDir))
            {
                continue; // the root itself ("./")
            }
            return Err(err(format!("entry {} leaves the root", raw.display())));
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            let dir = root.join(&parent);
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    let rel = parent.join(child.file_name());
                    if !ours.contains(&rel) {
                        remove_any(&child.path()).map_err(io_err(format!(
                            "applying opaque whiteout in {}",
                            parent.display()
                        )))?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let target = parent.join(hidden);
            if relative(&target).is_none() || hidden.is_empty() {
                return Err(err(format!("whiteout {} is malformed", path.display())));
            }
            remove_any(&root.join(&target)).map_err(io_err(format!(
                "applying whiteout for {}",
                target.display()
            )))?;
            continue;
        }
        // A file over a directory (or the reverse) replaces it.
        let dest = root.join(&path);
        if let Ok(m) = std::fs::symlink_metadata(&dest) {
            if m.is_dir() != entry.header().entry_type().is_dir() {
                remove_any(&dest).map_err(io_err(format!("replacing {}", path.display())))?;
            }
        }
        let unpacked = entry.unpack_in(root).map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            err(format!("{}: {e}{cause}", path.display()))
        })?;
        if !unpacked {
            return Err(err(format!("entry {} leaves the root", path.display())));
        }
        ours.insert(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        let root = tempfile::tempdir().unwrap();
        let lower = tar_of(&[
            ("etc/", None),
            ("etc/a", Some(b"1")),
            ("etc/b", Some(b"2")),
            ("var/", None),
            ("var/old", Some(b"x")),
        ]);
        apply(lower.as_slice(), root.path(), "l1").unwrap();
        let upper = tar_of(&[
            ("etc/.wh.a", Some(b"")),
            ("var/", None),
            ("var/new", Some(b"y")),
            ("var/.wh..wh..opq", Some(b"")),
        ]);
        apply(upper.as_slice(), root.path(), "l2").unwrap();
        assert!(!root.path().join("etc/a").exists());
        assert_eq!(std::fs::read(root.path().join("etc/b")).unwrap(), b"2");
        assert!(
            !root.path().join("var/old").exists(),
            "opaque dir hides the lower layer"
        );
        assert_eq!(
            std::fs::read(root.path().join("var/new")).unwrap(),
            b"y",
            "but keeps its own"
        );
    }

    #[test]
    fn gzip_is_detected_and_zstd_refused() {
        use std::io::Write;
        let plain = tar_of(&[("f", Some(b"hi"))]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let root = tempfile::tempdir().unwrap();
        apply(
            maybe_gunzip(std::io::BufReader::new(std::io::Cursor::new(gz))).unwrap(),
            root.path(),
            "g",
        )
        .unwrap();
        assert_eq!(std::fs::read(root.path().join("f")).unwrap(), b"hi");
        let zstd = std::io::Cursor::new(vec![0x28, 0xb5, 0x2f, 0xfd, 0]);
        assert!(maybe_gunzip(std::io::BufReader::new(zstd)).is_err());
    }

    #[test]
    fn whiteouts_cannot_climb_out() {
        let root = tempfile::tempdir().unwrap();
        let evil = tar_of(&[(".wh...", Some(b""))]);
        assert!(apply(evil.as_slice(), root.path(), "e").is_err());
    }
}
