//! husk's own trace viewer (`husk trace`): OTLP spans received from the shim, the host back ends
//! and the guest, kept one file per trace, shown as a terminal waterfall and exported as the
//! JSON Jaeger UI imports or as OTLP JSON.
//!
//! Owns the stored span model, the store's files, the waterfall and the exports. Must never
//! receive spans from the network itself nor trust them: ids of the wrong length are dropped,
//! and every file name comes from a validated hex trace id.

mod export;
mod model;
mod store;
mod waterfall;

pub use export::{jaeger_json, otlp_json, otlp_request};
pub use model::{records_from_request, SpanRecord};
pub use store::{TraceStore, TraceSummary, STORE_DIR};
pub use waterfall::render;

/// Why traces could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot {what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("no trace {query:?} in {} (`husk trace list` shows them)", dir.display())]
    NotFound {
        query: String,
        dir: std::path::PathBuf,
    },
    #[error("{query:?} matches several traces ({}): give more of the id", matches.join(", "))]
    Ambiguous { query: String, matches: Vec<String> },
}
