//! The host's side of husk's traces (ARCHITECTURE.md §5): the spans of the shim, `husk run`
//! and the host back ends, and the guest's spans that husk-tracer forwards over vsock port
//! 10240, all reach one [`Pipeline`] (a [`husk_telemetry::SpanSink`]) that keeps them in the
//! local store for `husk trace` (one file per trace, a terminal waterfall, the JSON Jaeger UI
//! imports, OTLP JSON) and exports them to an OTLP collector (HTTP/protobuf or gRPC).
//!
//! Owns the guest receiver ([`GuestReceiver`]: frames, acks, the guest clock's correction), the
//! pipeline's queue and worker, the OTLP exporter client, the stored span model, the store's
//! files, the waterfall and the exports. Must never trust the guest (every frame is bounded,
//! every id checked, held spans bounded, and no guest can stall or crash the host: a bad frame
//! costs that frame or that connection, never the receiver), never block the thread that hands
//! it spans, never make spans of its own (they would feed back into itself), never send spans
//! anywhere but the configured collector (plain `http://` only, no TLS), and never name a file
//! from anything but a validated hex trace id.

mod export;
mod host;
mod model;
mod otlp;
mod pipeline;
mod receiver;
mod store;
mod waterfall;

pub use export::{jaeger_json, otlp_json, otlp_request};
pub use host::{HostTracing, FLUSH_TIMEOUT};
pub use model::{records_from_request, SpanRecord};
pub use otlp::{OtlpClient, OtlpError, OtlpProtocol, OtlpTarget, EXPORT_TIMEOUT, HTTP_TRACES_PATH};
pub use pipeline::{Pipeline, PipelineConfig, PipelineStats, QUEUE_BYTES, QUEUE_REQUESTS};
pub use receiver::{
    check_guest_frame, receive_guest_spans, shift, ClockOffset, GuestReceiver, ReceiverStats,
    CLOCK_OFFSET_ATTRIBUTE, HELD_BYTES, HELD_SPANS, MAX_CONNECTIONS,
};
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
    /// The collector in the configuration cannot be used.
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    /// A thread, runtime or socket the pipeline or the receiver needs could not be set up.
    #[error("cannot start the trace {what}: {error}")]
    Start {
        what: &'static str,
        error: std::io::Error,
    },
}

/// Lets a warning through at most once per [`LogLimit::INTERVAL`], counting the ones held back,
/// so a collector that is down or a guest that sends garbage cannot flood the host's log.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogLimit {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    /// Some(how many were held back since the last one) when this warning may be written.
    pub(crate) fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(t) if now.duration_since(t) < Self::INTERVAL => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}
