//! Paths inside a container's root: a spec path resolved through the image's symlinks the way
//! the container would see it, without ever leaving the root.
//!
//! Owns the refusal of mount destinations (and other spec paths acted on before `pivot_root`)
//! that a symlink in the image would send outside the container's root. Must never create or
//! change anything.

use std::path::{Component, Path, PathBuf};

/// Most symlinks followed while resolving one path (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Why a path could not be resolved inside the root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{path} leaves the container's root through the symlink {link} (-> {target}); it is refused")]
    Escapes {
        path: String,
        link: String,
        target: String,
    },
    #[error("{0} goes through more than {MAX_LINKS} symlinks")]
    Loop(String),
}

/// `dest` (absolute, clean, as in the spec) resolved inside `root`: each symlink met on the way
/// is followed as the container would (an absolute target starts again at `root`); a relative
/// target whose `..` would climb above `root` is refused. Components that do not exist yet are
/// kept as they are. Returns the host-side path (under `root`).
pub fn resolve_in_root(root: &Path, dest: &Path) -> Result<PathBuf, PathError> {
    let mut pending: Vec<std::ffi::OsString> = dest
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            _ => None,
        })
        .collect();
    let mut inside: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            if inside.pop().is_none() {
                return Err(PathError::Escapes {
                    path: dest.display().to_string(),
                    link: "..".into(),
                    target: "..".into(),
                });
            }
            continue;
        }
        if part == "." {
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&inside);
        here.push(&part);
        match std::fs::read_link(&here) {
            Ok(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(PathError::Loop(dest.display().to_string()));
                }
                let link_in_root = {
                    let mut p = PathBuf::from("/");
                    p.extend(&inside);
                    p.push(&part);
                    p
                };
                if target.is_absolute() {
                    inside.clear();
                } else {
                    // A relative target may not climb above the root.
                    let mut depth = inside.len() as isize;
                    for c in target.components() {
                        match c {
                            Component::ParentDir => depth -= 1,
                            Component::Normal(_) => depth += 1,
                            _ => {}
                        }
                        if depth < 0 {
                            return Err(PathError::Escapes {
                                path: dest.display().to_string(),
                                link: link_in_root.display().to_string(),
                                target: target.display().to_string(),
                            });
                        }
                    }
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(p.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => inside.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&inside);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::fs::create_dir_all(r.join("var")).unwrap();
        symlink("/run", r.join("var/run")).unwrap();
        symlink("../run/x", r.join("var/lock")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/var/run/app")).unwrap(),
            r.join("run/app")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/var/lock")).unwrap(),
            r.join("run/x")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/new/dir")).unwrap(),
            r.join("new/dir")
        );
    }

    #[test]
    fn escapes_and_loops_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a")).unwrap();
        symlink("../../../../etc", r.join("a/evil")).unwrap();
        let e = resolve_in_root(r, Path::new("/a/evil/passwd")).unwrap_err();
        assert!(e.to_string().contains("/a/evil"), "{e}");
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        assert!(matches!(
            resolve_in_root(r, Path::new("/loop1")),
            Err(PathError::Loop(_))
        ));
    }
}
