//! The agent's record of each running container in the guest, read by husk-console to enter a
//! container (`husk exec --container ID`).
//!
//! Owns the record's location and schema only. The agent keeps each container's files in
//! `DIR/<id>/` (mounts included) and writes the record there, [`RECORD_FILE`], once its init
//! process exists; it goes with the directory when the container is deleted; readers must treat the contents as possibly stale (check the process's start time)
//! and the id as untrusted text.

use serde::{Deserialize, Serialize};

/// The agent's per-container directories in the guest (a tmpfs, root-only).
pub const DIR: &str = "/run/husk/containers";

/// The record's file name inside a container's directory.
pub const RECORD_FILE: &str = "record.json";

/// One running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The container id (the host's).
    pub id: String,
    /// Its init process, in the guest's PID namespace.
    pub pid: i32,
    /// That process's start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot), so a
    /// reused pid is never mistaken for the container.
    pub start_time: u64,
    /// The process's working directory from the OCI spec.
    #[serde(default)]
    pub cwd: String,
    /// The process's environment from the OCI spec.
    #[serde(default)]
    pub env: Vec<String>,
}

/// Whether `id` is a valid container id, and so a usable directory name inside [`DIR`]
/// (the agent's rule: [`crate::agent::valid_id`]).
pub fn valid_id(id: &str) -> bool {
    crate::agent::valid_id(id)
}

/// The record file of container `id`, if the id is valid.
pub fn path_for(id: &str) -> Option<std::path::PathBuf> {
    valid_id(id).then(|| std::path::Path::new(DIR).join(id).join(RECORD_FILE))
}

/// The start time of `pid` from the text of its `/proc/<pid>/stat`, if it parses.
pub fn start_time_from_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // After ')': field 3 (state) is the first word, so field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_in_the_directory() {
        assert!(valid_id("abc-1.2_3"));
        for bad in ["", "..", ".hidden", "a/b", "../x", "a b", &"x".repeat(4096)] {
            assert!(!valid_id(bad), "{bad:?}");
            assert_eq!(path_for(bad), None);
        }
        assert_eq!(
            path_for("c1"),
            Some(std::path::PathBuf::from(
                "/run/husk/containers/c1/record.json"
            ))
        );
    }

    #[test]
    fn start_time_parses_odd_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 100 1";
        assert_eq!(start_time_from_stat(stat), Some(777));
        assert_eq!(start_time_from_stat("garbage"), None);
        let mine = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(start_time_from_stat(&mine).is_some());
    }
}
