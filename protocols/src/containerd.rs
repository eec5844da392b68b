//! Messages husk sends to containerd that its shim library does not define: cgroup v2
//! metrics, under the type URL containerd's registry knows them by.
//!
//! Owns only the re-export and the type URL. Must never change a field number: they are
//! containerd's.

pub use crate::generated::containerd_cgroups_v2::*;

/// The type URL containerd decodes cgroup v2 metrics by (`ctr task metrics`).
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";
