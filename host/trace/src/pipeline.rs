//! The host's span pipeline: the [`SpanSink`] every span on the host reaches (the host's own,
//! through husk-telemetry, and the guest's, through the [`crate::GuestReceiver`]). Each request
//! is kept in the [`TraceStore`] (`[tracing] store`) and exported to the OTLP collector
//! (`[tracing] otlp_endpoint`), in order, by one worker thread.
//!
//! Owns the bounded queue, the worker thread (and its Tokio runtime for the OTLP client), the
//! counts and `flush`. Must never block a sender (a full queue drops its oldest request and
//! counts it), never panic or stop on a failed export or store write (counted, warned about at
//! most every few seconds), never sleep to wait (`flush` and `shutdown` wait on a condition
//! variable for a sequence number), and never make spans itself: they would come back to it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_telemetry::{span_count, ExportTraceServiceRequest, SpanSink};
use prost::Message;

use crate::otlp::{OtlpClient, OtlpTarget};
use crate::{LogLimit, TraceError, TraceStore};

/// Requests the queue holds before it drops its oldest.
pub const QUEUE_REQUESTS: usize = 1024;
/// Encoded bytes the queue holds before it drops its oldest request.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// How long dropping a [`Pipeline`] waits for what it holds to be stored and exported.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the pipeline sends spans (husk-config's `[tracing]`, mapped by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineConfig {
    /// husk's state directory: spans are kept in [`TraceStore::in_state_dir`]; None: not kept.
    pub store: Option<PathBuf>,
    /// The collector to export to; None: no export.
    pub otlp: Option<OtlpTarget>,
}

impl From<&husk_config::Config> for PipelineConfig {
    /// The pipeline `[tracing]` asks for: the store under `runtime.state_dir` when `store`,
    /// export when `otlp_endpoint` is set.
    fn from(config: &husk_config::Config) -> Self {
        let t = &config.tracing;
        PipelineConfig {
            store: t.store.then(|| config.runtime.state_dir.clone()),
            otlp: (!t.otlp_endpoint.is_empty()).then(|| OtlpTarget {
                endpoint: t.otlp_endpoint.clone(),
                protocol: t.otlp_protocol,
            }),
        }
    }
}

/// What the pipeline has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Spans handed to [`SpanSink::send`].
    pub received: u64,
    /// Spans written to the store (those with valid ids).
    pub stored: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Requests the collector did not accept (unreachable, timed out, refused).
    pub export_errors: u64,
    /// Requests the store could not write.
    pub store_errors: u64,
    /// Spans dropped from a full queue, or sent after shutdown.
    pub dropped: u64,
}

/// The host's [`SpanSink`]; see the module's documentation.
#[derive(Debug)]
pub struct Pipeline {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The worker waits on this for work or the end.
    work: Condvar,
    /// `flush` and `shutdown` wait on this for the worker's progress.
    progress: Condvar,
    capacity: (usize, usize),
    received: AtomicU64,
    stored: AtomicU64,
    exported: AtomicU64,
    export_errors: AtomicU64,
    store_errors: AtomicU64,
    dropped: AtomicU64,
    drop_log: LogLimit,
    export_log: LogLimit,
    store_log: LogLimit,
}

#[derive(Debug, Default)]
struct State {
    /// In sequence order.
    queue: VecDeque<Item>,
    bytes: usize,
    /// The sequence number of the last request enqueued (0: none yet).
    last_seq: u64,
    /// The request the worker is working on.
    in_flight: Option<u64>,
    stopping: bool,
    exited: bool,
}

#[derive(Debug)]
struct Item {
    seq: u64,
    spans: u64,
    bytes: usize,
    request: ExportTraceServiceRequest,
}

impl State {
    /// Whether every request up to `seq` has been handled (or dropped).
    fn done_through(&self, seq: u64) -> bool {
        self.queue.front().is_none_or(|i| i.seq > seq) && self.in_flight.is_none_or(|s| s > seq)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn drop_items(&self, items: impl IntoIterator<Item = Item>) {
        let (mut requests, mut spans) = (0u64, 0u64);
        for i in items {
            requests += 1;
            spans += i.spans;
        }
        if requests == 0 {
            return;
        }
        self.dropped.fetch_add(spans, Ordering::Relaxed);
        if let Some(suppressed) = self.drop_log.allow() {
            tracing::warn!(
                requests,
                spans,
                suppressed,
                "trace pipeline full or stopped: dropped the oldest spans (the store or the OTLP \
                 collector is not keeping up)"
            );
        }
    }

    /// The worker: takes requests in order and stores and exports each; ends on `stopping`
    /// once the queue is empty.
    fn run(
        &self,
        store: Option<TraceStore>,
        client: Option<OtlpClient>,
        rt: tokio::runtime::Runtime,
    ) {
        loop {
            let item = {
                let mut st = self.lock();
                loop {
                    if let Some(item) = st.queue.pop_front() {
                        st.bytes -= item.bytes;
                        st.in_flight = Some(item.seq);
                        break Some(item);
                    }
                    if st.stopping {
                        break None;
                    }
                    st = self.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let Some(item) = item else { break };
            if let Some(store) = &store {
                match store.add(&item.request) {
                    Ok(n) => {
                        self.stored.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.store_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = self.store_log.allow() {
                            tracing::warn!(suppressed, "cannot keep spans for `husk trace`: {e}");
                        }
                    }
                }
            }
            if let Some(client) = &client {
                match rt.block_on(client.export(&item.request)) {
                    Ok(()) => {
                        self.exported.fetch_add(item.spans, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.export_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = self.export_log.allow() {
                            tracing::warn!(suppressed, "spans not exported: {e}");
                        }
                    }
                }
            }
            self.lock().in_flight = None;
            self.progress.notify_all();
        }
        self.lock().exited = true;
        self.progress.notify_all();
    }
}

impl Pipeline {
    /// Starts the worker for `config`. Fails on an unusable OTLP endpoint (the error says what
    /// to put in `[tracing] otlp_endpoint`) or when the thread cannot start.
    pub fn start(config: PipelineConfig) -> Result<Arc<Self>, TraceError> {
        Self::with_capacity(config, QUEUE_REQUESTS, QUEUE_BYTES)
    }

    pub(crate) fn with_capacity(
        config: PipelineConfig,
        requests: usize,
        bytes: usize,
    ) -> Result<Arc<Self>, TraceError> {
        let client = config.otlp.as_ref().map(OtlpClient::new).transpose()?;
        let store = config.store.as_deref().map(TraceStore::in_state_dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| TraceError::Start {
                what: "pipeline's runtime",
                error,
            })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            capacity: (requests.max(1), bytes),
            received: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            export_errors: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            drop_log: LogLimit::default(),
            export_log: LogLimit::default(),
            store_log: LogLimit::default(),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("husk-trace-pipeline".into())
                .spawn(move || shared.run(store, client, rt))
                .map_err(|error| TraceError::Start {
                    what: "pipeline thread",
                    error,
                })?
        };
        Ok(Arc::new(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        }))
    }

    /// The counts so far.
    pub fn stats(&self) -> PipelineStats {
        let s = &self.shared;
        PipelineStats {
            received: s.received.load(Ordering::Relaxed),
            stored: s.stored.load(Ordering::Relaxed),
            exported: s.exported.load(Ordering::Relaxed),
            export_errors: s.export_errors.load(Ordering::Relaxed),
            store_errors: s.store_errors.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
        }
    }

    /// Waits up to `timeout` for what was sent before the call to be handled, then stops the
    /// worker: requests still queued are dropped (and counted). Whether everything was handled
    /// and the worker has ended. Later sends are dropped. A second call only reports.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let flushed = self.flush(timeout);
        let dropped: Vec<Item> = {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.bytes = 0;
            st.queue.drain(..).collect()
        };
        self.shared.drop_items(dropped);
        self.shared.work.notify_all();
        let left = deadline.saturating_duration_since(Instant::now());
        let st = self
            .shared
            .progress
            .wait_timeout_while(self.shared.lock(), left, |st| !st.exited)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        let exited = st.exited;
        drop(st);
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match handle {
            // It has said it is done: joining takes no time.
            Some(h) if exited => {
                let _ = h.join();
            }
            // Still inside one export (bounded by its own timeout): let it finish on its own.
            Some(_) => tracing::warn!(
                "trace pipeline still exporting after {}s; leaving it to finish",
                timeout.as_secs_f64()
            ),
            None => {}
        }
        flushed && exited
    }
}

impl SpanSink for Pipeline {
    fn send(&self, request: ExportTraceServiceRequest) {
        let spans = span_count(&request);
        self.shared.received.fetch_add(spans, Ordering::Relaxed);
        let bytes = request.encoded_len();
        let (max_requests, max_bytes) = self.shared.capacity;
        let mut dropped = Vec::new();
        {
            let mut st = self.shared.lock();
            st.last_seq += 1;
            let seq = st.last_seq;
            let item = Item {
                seq,
                spans,
                bytes,
                request,
            };
            if st.stopping {
                dropped.push(item);
            } else {
                st.queue.push_back(item);
                st.bytes += bytes;
                while st.queue.len() > max_requests || (st.bytes > max_bytes && st.queue.len() > 1)
                {
                    let Some(old) = st.queue.pop_front() else {
                        break;
                    };
                    st.bytes -= old.bytes;
                    dropped.push(old);
                }
            }
        }
        self.shared.work.notify_one();
        if !dropped.is_empty() {
            self.shared.progress.notify_all();
            self.shared.drop_items(dropped);
        }
    }

    /// True once every request sent before the call has been stored and its export attempted
    /// (or dropped from a full queue); false after `timeout`, or when the worker has ended with
    /// requests still queued.
    fn flush(&self, timeout: Duration) -> bool {
        let st = self.shared.lock();
        let target = st.last_seq;
        let st = self
            .shared
            .progress
            .wait_timeout_while(st, timeout, |st| !st.done_through(target) && !st.exited)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        st.done_through(target)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown(DROP_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{request, span};
    use crate::otlp::tests::{http_server, http_server_gated};
    use crate::OtlpProtocol;

    fn http(endpoint: &str) -> Option<OtlpTarget> {
        Some(OtlpTarget {
            endpoint: endpoint.to_owned(),
            protocol: OtlpProtocol::HttpProtobuf,
        })
    }

    #[test]
    fn requests_are_stored_and_exported_before_flush_returns() {
        let d = tempfile::tempdir().expect("tempdir");
        let (endpoint, seen) = http_server("200 OK");
        let p = Pipeline::start(PipelineConfig {
            store: Some(d.path().to_owned()),
            otlp: http(&endpoint),
        })
        .expect("start");
        let a = request("husk", vec![span(0xaa, 1, 0, "run", 1, 100)]);
        let b = request(
            "husk-agent",
            vec![
                span(0xaa, 2, 1, "CreateContainer", 10, 20),
                span(0xaa, 3, 1, "StartContainer", 30, 40),
            ],
        );
        p.send(a.clone());
        p.send(b.clone());
        assert!(p.flush(Duration::from_secs(10)), "flushed");
        let stats = p.stats();
        assert_eq!(
            (stats.received, stats.stored, stats.exported),
            (3, 3, 3),
            "{stats:?}"
        );
        assert_eq!(seen.recv().expect("first").body, a, "in order");
        assert_eq!(seen.recv().expect("second").body, b);
        let (_, spans) = TraceStore::in_state_dir(d.path())
            .load(&"aa".repeat(16))
            .expect("stored");
        assert_eq!(spans.len(), 3);
    }

    #[test]
    fn flush_returns_once_what_was_sent_before_it_is_exported() {
        let (gate, gate_rx) = std::sync::mpsc::channel();
        let (endpoint, seen) = http_server_gated("200 OK", gate_rx);
        let p = Pipeline::start(PipelineConfig {
            store: None,
            otlp: http(&endpoint),
        })
        .expect("start");
        p.send(request("husk", vec![span(0xaa, 1, 0, "first", 1, 2)]));
        seen.recv().expect("the collector has the first request");
        // The collector holds its answer: the first request is still in flight.
        assert!(!p.flush(Duration::from_millis(100)), "not yet exported");
        assert_eq!(p.stats().exported, 0);
        gate.send(()).expect("answer the first");
        assert!(p.flush(Duration::from_secs(10)));
        assert_eq!(p.stats().exported, 1);

        p.send(request("husk", vec![span(0xbb, 1, 0, "second", 1, 2)]));
        seen.recv().expect("second");
        assert!(!p.flush(Duration::from_millis(50)));
        gate.send(()).expect("answer the second");
        assert!(p.flush(Duration::from_secs(10)));
        assert_eq!(p.stats().exported, 2);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_a_dead_collector_is_counted() {
        let (gate, gate_rx) = std::sync::mpsc::channel();
        let (endpoint, seen) = http_server_gated("503 Service Unavailable", gate_rx);
        let p = Pipeline::with_capacity(
            PipelineConfig {
                store: None,
                otlp: http(&endpoint),
            },
            2,
            QUEUE_BYTES,
        )
        .expect("start");
        p.send(request("husk", vec![span(0xaa, 1, 0, "in flight", 1, 2)]));
        seen.recv().expect("in flight");
        for (i, name) in ["dropped", "kept", "kept too"].into_iter().enumerate() {
            p.send(request(
                "husk",
                vec![span(0xaa, 2 + i as u8, 0, name, 1, 2)],
            ));
        }
        assert_eq!(p.stats().dropped, 1);
        for _ in 0..3 {
            gate.send(()).expect("answer");
        }
        assert!(p.flush(Duration::from_secs(10)));
        let names: Vec<String> = [seen.recv(), seen.recv()]
            .into_iter()
            .map(|s| {
                s.expect("request").body.resource_spans[0].scope_spans[0].spans[0]
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(names, ["kept", "kept too"]);
        let stats = p.stats();
        assert_eq!((stats.export_errors, stats.exported), (3, 0), "{stats:?}");
    }

    #[test]
    fn shutdown_and_drop_store_what_was_sent_and_later_sends_are_dropped() {
        let d = tempfile::tempdir().expect("tempdir");
        let config = PipelineConfig {
            store: Some(d.path().to_owned()),
            otlp: None,
        };
        let p = Pipeline::start(config.clone()).expect("start");
        p.send(request("husk", vec![span(0xaa, 1, 0, "a", 1, 2)]));
        drop(p);
        let store = TraceStore::in_state_dir(d.path());
        assert_eq!(store.load(&"aa".repeat(16)).expect("stored").1.len(), 1);

        let p = Pipeline::start(config).expect("start");
        p.send(request("husk", vec![span(0xbb, 1, 0, "b", 1, 2)]));
        assert!(p.shutdown(Duration::from_secs(10)));
        p.send(request("husk", vec![span(0xcc, 1, 0, "late", 1, 2)]));
        assert_eq!(p.stats().dropped, 1);
        assert!(p.flush(Duration::from_secs(1)), "nothing left to wait for");
        assert!(store.load(&"bb".repeat(16)).is_ok());
        assert!(store.load(&"cc".repeat(16)).is_err());
    }

    #[test]
    fn a_bad_endpoint_is_refused_at_start() {
        let e = Pipeline::start(PipelineConfig {
            store: None,
            otlp: http("https://collector:4318"),
        })
        .expect_err("https");
        assert!(matches!(e, TraceError::Otlp(_)), "{e}");
    }
}
