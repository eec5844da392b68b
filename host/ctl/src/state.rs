//! The runtime state directory: one JSON record per running sandbox, for `husk ps`.
//!
//! Owns the records' location (root-only, 0700), writing, removal and listing. Must never keep
//! a record past its sandbox: records are removed by a guard, and records of dead husk processes
//! are dropped when listed.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Overrides the state directory (default `/run/husk/sandboxes`).
pub const STATE_DIR_ENV: &str = "HUSK_STATE_DIR";

/// The state directory.
pub fn dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/husk/sandboxes".into())
}

/// One running sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    /// The husk process that owns the sandbox.
    pub pid: u32,
    /// Seconds since the epoch.
    pub created: u64,
    pub backend: String,
}

/// Removes the record when dropped.
#[derive(Debug)]
pub struct Registered(PathBuf);

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `r` (readable by root only) and returns its guard.
pub fn register(r: &Record) -> std::io::Result<Registered> {
    let d = dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)?;
    let path = d.join(format!("{}.json", r.id));
    let tmp = d.join(format!(".{}.json.tmp", r.id));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    serde_json::to_writer_pretty(&mut f, r)?;
    std::fs::rename(&tmp, &path)?;
    Ok(Registered(path))
}

/// The records of live sandboxes; records whose husk process is gone are removed.
pub fn list() -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(r) = std::fs::read(&path)
            .map_err(drop)
            .and_then(|b| serde_json::from_slice::<Record>(&b).map_err(drop))
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{}", r.pid)).exists() {
            out.push(r);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    out
}
