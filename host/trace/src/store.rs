//! The local trace store: one file per trace (`<dir>/<trace id>.jsonl`, one span per line),
//! root-only, appended to as spans arrive.
//!
//! Owns the files, listing and finding a trace by id or unique prefix. Must never name a file
//! from anything but a validated trace id, and never fail a whole trace for one bad line.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde::Serialize;

use crate::model::{records_from_request, valid_hex_id, SpanRecord};
use crate::TraceError;

/// A directory of traces.
#[derive(Debug, Clone)]
pub struct TraceStore {
    dir: PathBuf,
}

/// One trace, as `husk trace list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The earliest root span's name (or the earliest span's, if no root arrived).
    pub root: String,
    pub services: Vec<String>,
    pub spans: usize,
    pub errors: usize,
    pub start_unix_nano: u64,
    pub duration_nanos: u64,
}

/// The store's directory inside husk's state directory (`runtime.state_dir`).
pub const STORE_DIR: &str = "traces";

impl TraceStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store of a state directory: `<state_dir>/traces`.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self::new(state_dir.join(STORE_DIR))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TraceError {
        let path = path.to_owned();
        move |error| TraceError::Io { what, path, error }
    }

    /// Appends the request's spans to their traces' files; returns how many were kept.
    pub fn add(&self, req: &ExportTraceServiceRequest) -> Result<usize, TraceError> {
        let mut by_trace: BTreeMap<String, Vec<SpanRecord>> = BTreeMap::new();
        for r in records_from_request(req) {
            by_trace.entry(r.trace_id.clone()).or_default().push(r);
        }
        if by_trace.is_empty() {
            return Ok(0);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Self::io("create", &self.dir))?;
        let mut kept = 0;
        for (trace, spans) in by_trace {
            let path = self.dir.join(format!("{trace}.jsonl"));
            let mut text = String::new();
            for s in &spans {
                text += &serde_json::to_string(s).unwrap_or_default();
                text.push('\n');
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(Self::io("open", &path))?;
            f.write_all(text.as_bytes())
                .map_err(Self::io("write", &path))?;
            kept += spans.len();
        }
        Ok(kept)
    }

    /// The ids of the stored traces.
    fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".jsonl")?;
                valid_hex_id(id, 32).then(|| id.to_owned())
            })
            .collect();
        ids.sort();
        ids
    }

    fn read(&self, id: &str) -> Result<Vec<SpanRecord>, TraceError> {
        let path = self.dir.join(format!("{id}.jsonl"));
        let text = std::fs::read_to_string(&path).map_err(Self::io("read", &path))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<SpanRecord>(l).ok())
            .filter(|s| s.trace_id == id)
            .collect())
    }

    /// The spans of the trace `query` names (its id or a unique prefix), earliest first.
    pub fn load(&self, query: &str) -> Result<(String, Vec<SpanRecord>), TraceError> {
        let q = query.to_ascii_lowercase();
        let matches: Vec<String> = self
            .ids()
            .into_iter()
            .filter(|id| !q.is_empty() && id.starts_with(&q))
            .collect();
        let id = match matches.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(TraceError::NotFound {
                    query: query.to_owned(),
                    dir: self.dir.clone(),
                })
            }
            many => {
                return Err(TraceError::Ambiguous {
                    query: query.to_owned(),
                    matches: many.to_vec(),
                })
            }
        };
        let mut spans = self.read(&id)?;
        spans.sort_by_key(|s| (s.start_unix_nano, s.end_unix_nano));
        Ok((id, spans))
    }

    /// Every stored trace, most recent first.
    pub fn list(&self) -> Vec<TraceSummary> {
        let mut out: Vec<TraceSummary> = self
            .ids()
            .into_iter()
            .filter_map(|id| {
                let spans = self.read(&id).ok()?;
                summarize(&id, &spans)
            })
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.start_unix_nano));
        out
    }
}

fn summarize(id: &str, spans: &[SpanRecord]) -> Option<TraceSummary> {
    let start = spans.iter().map(|s| s.start_unix_nano).min()?;
    let end = spans.iter().map(|s| s.end_unix_nano).max()?;
    let root = spans
        .iter()
        .filter(|s| s.parent_span_id.is_none())
        .chain(spans.iter())
        .min_by_key(|s| (s.parent_span_id.is_some(), s.start_unix_nano))
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let mut services: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
    services.sort();
    services.dedup();
    Some(TraceSummary {
        trace_id: id.to_owned(),
        root,
        services,
        spans: spans.len(),
        errors: spans.iter().filter(|s| s.error.is_some()).count(),
        start_unix_nano: start,
        duration_nanos: end - start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{request, span};

    #[test]
    fn traces_are_stored_per_id_and_found_by_prefix() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = TraceStore::new(d.path().join("traces"));
        assert!(store.list().is_empty());
        let kept = store
            .add(&request(
                "containerd-shim-husk-v2",
                vec![
                    span(0xaa, 1, 0, "Create", 1_000, 9_000),
                    span(0xbb, 1, 0, "Start", 50_000, 60_000),
                ],
            ))
            .expect("add");
        assert_eq!(kept, 2);
        store
            .add(&request(
                "husk-agent",
                vec![span(0xaa, 2, 1, "CreateContainer", 2_000, 8_000)],
            ))
            .expect("add");
        let list = store.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].trace_id, "bb".repeat(16), "most recent first");
        assert_eq!(list[1].root, "Create");
        assert_eq!(list[1].services, ["containerd-shim-husk-v2", "husk-agent"]);
        assert_eq!((list[1].spans, list[1].duration_nanos), (2, 8_000));

        let (id, spans) = store.load("AAAA").expect("a prefix, any case");
        assert_eq!(id, "aa".repeat(16));
        assert_eq!(spans.len(), 2);
        assert!(matches!(store.load("cc"), Err(TraceError::NotFound { .. })));
        assert!(matches!(store.load(""), Err(TraceError::NotFound { .. })));
        std::fs::write(d.path().join("traces/not-a-trace.jsonl"), "x").expect("write");
        assert_eq!(
            store.list().len(),
            2,
            "files not named by a trace id are ignored"
        );
    }
}
