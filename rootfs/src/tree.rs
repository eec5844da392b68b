//! The image's file tree in memory: paths, permissions and contents, kept sorted so that the
//! archive and its content hash are the same for the same inputs.
//!
//! Owns path normalisation and parent creation. Must never touch the host filesystem.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::cpio::{self, Kind};

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub perm: u32,
    pub kind: Kind,
}

/// A sorted file tree; keys have no leading slash.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

fn normalise(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

impl Tree {
    /// Adds a directory and any missing parents (mode 0755).
    pub fn dir(&mut self, path: &str, perm: u32) {
        let path = normalise(path);
        self.parents(&path);
        self.nodes.insert(
            path,
            Node {
                perm,
                kind: Kind::Dir,
            },
        );
    }

    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.nodes.entry(acc.clone()).or_insert(Node {
                perm: 0o755,
                kind: Kind::Dir,
            });
        }
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.put(path, perm, Kind::File(data));
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.put(path, 0o777, Kind::Symlink(target.to_owned()));
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.put(path, perm, Kind::CharDev { major, minor });
    }

    fn put(&mut self, path: &str, perm: u32, kind: Kind) {
        let path = normalise(path);
        self.parents(&path);
        self.nodes.insert(path, Node { perm, kind });
    }

    /// Whether `path` is present.
    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(&normalise(path))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// SHA-256 over every entry's path, mode, kind and contents, in order.
    pub fn digest(&self) -> Sha256 {
        let mut h = Sha256::new();
        for (path, node) in &self.nodes {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(node.perm.to_le_bytes());
            match &node.kind {
                Kind::Dir => h.update(b"d"),
                Kind::File(d) => {
                    h.update(b"f");
                    h.update((d.len() as u64).to_le_bytes());
                    h.update(d);
                }
                Kind::Symlink(t) => {
                    h.update(b"l");
                    h.update(t.as_bytes());
                    h.update([0]);
                }
                Kind::CharDev { major, minor } => {
                    h.update(b"c");
                    h.update(major.to_le_bytes());
                    h.update(minor.to_le_bytes());
                }
            }
        }
        h
    }

    /// Writes the tree as a newc archive.
    pub fn write_cpio<W: std::io::Write>(&self, out: W) -> std::io::Result<W> {
        let mut w = cpio::Writer::new(out);
        for (path, node) in &self.nodes {
            w.entry(path, node.perm, &node.kind)?;
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_sorted_first() {
        let mut t = Tree::default();
        t.file("/usr/bin/x", 0o755, b"x".to_vec());
        assert!(t.contains("usr") && t.contains("usr/bin") && t.contains("/usr/bin/x"));
        let keys: Vec<_> = t.nodes.keys().cloned().collect();
        assert_eq!(keys, ["usr", "usr/bin", "usr/bin/x"]);
    }

    #[test]
    fn digest_depends_on_content_not_insertion_order() {
        let mut a = Tree::default();
        a.file("a", 0o644, b"1".to_vec());
        a.symlink("b", "a");
        let mut b = Tree::default();
        b.symlink("b", "a");
        b.file("a", 0o644, b"1".to_vec());
        assert_eq!(a.digest().finalize(), b.digest().finalize());
        b.file("a", 0o644, b"2".to_vec());
        assert_ne!(a.digest().finalize(), b.digest().finalize());
    }
}
