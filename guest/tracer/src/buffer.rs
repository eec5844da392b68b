//! The spans received and not yet handed to the forwarder: a queue bounded in spans (and, as a
//! backstop, in encoded bytes), oldest first, and the hand-off between the receiving side and
//! the forwarder, shutdown included.
//!
//! Owns the bound, the drop-oldest policy and the count of dropped spans, and the merging of
//! queued `ResourceSpans` into one request no larger than a frame. Must never block the
//! receiving side on the forwarder (a push only ever takes the lock briefly; when the queue is
//! full the oldest spans go) and never do I/O.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_telemetry::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;

use crate::ratelimit::{RateLimit, WARN_EVERY};

/// Spans kept at most while the host does not take them.
pub const SPAN_LIMIT: u64 = 16384;
/// Encoded bytes kept at most (a backstop against few, huge spans).
pub const BYTE_LIMIT: usize = 32 * 1024 * 1024;

/// How much the buffer holds before it drops the oldest spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub spans: u64,
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            spans: SPAN_LIMIT,
            bytes: BYTE_LIMIT,
        }
    }
}

/// The number of spans in a request.
#[cfg(test)]
pub use husk_telemetry::span_count;

fn resource_span_count(resource: &ResourceSpans) -> u64 {
    resource
        .scope_spans
        .iter()
        .map(|s| s.spans.len() as u64)
        .sum()
}

/// Bytes `resource` takes as one `resource_spans` field of an `ExportTraceServiceRequest`
/// (tag, length, body): a request's encoded size is the sum of its fields'.
fn field_len(resource: &ResourceSpans) -> usize {
    let len = resource.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// One queued `ResourceSpans`, with its span count and encoded size.
#[derive(Debug)]
struct Entry {
    resource: ResourceSpans,
    spans: u64,
    bytes: usize,
}

impl Entry {
    fn new(resource: ResourceSpans) -> Self {
        Self {
            spans: resource_span_count(&resource),
            bytes: field_len(&resource),
            resource,
        }
    }

    /// Removes its `n` oldest spans (the first ones, scope by scope), fewer than it has.
    fn drop_oldest(&mut self, n: u64) {
        let mut left = n as usize;
        self.resource.scope_spans.retain_mut(|scope| {
            if left == 0 {
                return true;
            }
            let k = left.min(scope.spans.len());
            scope.spans.drain(..k);
            left -= k;
            !scope.spans.is_empty()
        });
        self.spans = resource_span_count(&self.resource);
        self.bytes = field_len(&self.resource);
    }
}

#[derive(Debug)]
struct Queue {
    entries: VecDeque<Entry>,
    spans: u64,
    bytes: usize,
    /// Set at shutdown: the forwarder's deadline.
    closing: Option<Instant>,
    drop_warning: RateLimit,
}

/// Requests merged for the host, with the number of spans they carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub request: ExportTraceServiceRequest,
    pub spans: u64,
}

/// The bounded span queue shared by the receiving side and the forwarder.
#[derive(Debug)]
pub struct SpanBuffer {
    limits: Limits,
    queue: Mutex<Queue>,
    changed: Condvar,
    dropped: AtomicU64,
}

impl SpanBuffer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                spans: 0,
                bytes: 0,
                closing: None,
                drop_warning: RateLimit::new(WARN_EVERY),
            }),
            changed: Condvar::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a received request's spans; when the queue is then over its limits, its oldest
    /// spans are dropped and counted. Never waits for the forwarder.
    pub fn push(&self, request: ExportTraceServiceRequest) {
        // Sized before the lock is taken: the forwarder waits on it too.
        let entries: Vec<Entry> = request
            .resource_spans
            .into_iter()
            .map(Entry::new)
            .filter(|e| e.spans > 0)
            .collect();
        let mut q = self.lock();
        for entry in entries {
            q.spans += entry.spans;
            q.bytes += entry.bytes;
            q.entries.push_back(entry);
        }
        let mut lost = 0;
        while q.spans > self.limits.spans || q.bytes > self.limits.bytes {
            let excess = q.spans.saturating_sub(self.limits.spans);
            let bytes_over = q.bytes > self.limits.bytes;
            let Some(front) = q.entries.front_mut() else {
                break;
            };
            if !bytes_over && front.spans > excess {
                let before = front.bytes;
                front.drop_oldest(excess);
                let after = front.bytes;
                q.bytes = q.bytes - before + after;
                q.spans -= excess;
                lost += excess;
            } else if let Some(gone) = q.entries.pop_front() {
                q.spans -= gone.spans;
                q.bytes -= gone.bytes;
                lost += gone.spans;
            }
        }
        let report = q.drop_warning.add(lost, Instant::now());
        drop(q);
        self.changed.notify_all();
        if lost > 0 {
            let total = self.dropped.fetch_add(lost, Ordering::Relaxed) + lost;
            if let Some(n) = report {
                tracing::warn!(
                    "buffer full ({} spans): dropped the {n} oldest spans, {total} in all; the host is not taking them",
                    self.limits.spans
                );
            }
        }
    }

    /// The oldest queued spans merged into one request of at most `max_bytes` encoded bytes
    /// (their `resource_spans` concatenated, oldest first), taken out of the queue. Waits for
    /// spans while there are none; `None` once the buffer is closing and empty.
    pub fn next_batch(&self, max_bytes: usize) -> Option<Batch> {
        let mut q = self.lock();
        let mut lost = 0;
        let batch = loop {
            if q.entries.is_empty() {
                if q.closing.is_some() {
                    break None;
                }
                q = self.changed.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let mut request = ExportTraceServiceRequest::default();
            let (mut spans, mut bytes) = (0, 0);
            while let Some(front) = q.entries.front() {
                if bytes + front.bytes > max_bytes {
                    break;
                }
                let Some(e) = q.entries.pop_front() else {
                    break;
                };
                q.spans -= e.spans;
                q.bytes -= e.bytes;
                spans += e.spans;
                bytes += e.bytes;
                request.resource_spans.push(e.resource);
            }
            if spans > 0 {
                break Some(Batch { request, spans });
            }
            // The oldest entry alone exceeds a frame (a client's frame never does): it cannot
            // be sent, so it is dropped.
            if let Some(e) = q.entries.pop_front() {
                q.spans -= e.spans;
                q.bytes -= e.bytes;
                lost += e.spans;
            }
        };
        drop(q);
        if lost > 0 {
            let total = self.dropped.fetch_add(lost, Ordering::Relaxed) + lost;
            tracing::warn!("dropped {lost} spans too large for one frame, {total} in all");
        }
        batch
    }

    /// Starts the shutdown: no more waiting for spans; the forwarder has until `deadline`.
    pub fn close(&self, deadline: Instant) {
        self.lock().closing = Some(deadline);
        self.changed.notify_all();
    }

    /// The forwarder's deadline, once the shutdown has begun.
    pub fn closing(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Waits up to `timeout` (a back-off), returning early when the shutdown state is no
    /// longer `seen` (what [`Self::closing`] returned to the caller): a shutdown that begins
    /// before or during the pause ends it.
    pub fn pause(&self, timeout: Duration, seen: Option<Instant>) {
        let q = self.lock();
        let _ = self
            .changed
            .wait_timeout_while(q, timeout, |q| q.closing == seen);
    }

    /// Counts spans lost elsewhere (the forwarder's unsent batch at exit) as dropped.
    pub fn count_lost(&self, spans: u64) {
        self.dropped.fetch_add(spans, Ordering::Relaxed);
    }

    /// Spans dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Spans queued now.
    pub fn queued(&self) -> u64 {
        self.lock().spans
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use husk_protocols::trace_wire::MAX_TRACE_FRAME;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    /// A request from `service` with spans named `<prefix>0`, `<prefix>1`, … in one scope.
    pub(crate) fn request(prefix: &str, n: usize) -> ExportTraceServiceRequest {
        request_sized(prefix, n, 0)
    }

    /// [`request`] with `pad` bytes of padding in each span (in its trace state).
    pub(crate) fn request_sized(prefix: &str, n: usize, pad: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..n)
                        .map(|i| Span {
                            name: format!("{prefix}{i}"),
                            trace_state: "x".repeat(pad),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// The span names in a request, in order.
    pub(crate) fn names(request: &ExportTraceServiceRequest) -> Vec<String> {
        request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    fn limits(spans: u64) -> Limits {
        Limits {
            spans,
            bytes: BYTE_LIMIT,
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_spans_and_counts_them() {
        let b = SpanBuffer::new(limits(10));
        b.push(request("a", 4));
        b.push(request("b", 4));
        assert_eq!((b.queued(), b.dropped()), (8, 0));
        b.push(request("c", 4));
        assert_eq!((b.queued(), b.dropped()), (10, 2));
        // One request larger than the whole buffer keeps only its newest spans.
        let b2 = SpanBuffer::new(limits(3));
        b2.push(request("big", 5));
        assert_eq!((b2.queued(), b2.dropped()), (3, 2));
        b2.close(Instant::now());
        let batch = b2.next_batch(MAX_TRACE_FRAME).expect("a batch");
        assert_eq!(names(&batch.request), ["big2", "big3", "big4"]);

        b.close(Instant::now());
        let batch = b.next_batch(MAX_TRACE_FRAME).expect("a batch");
        assert_eq!(batch.spans, 10);
        assert_eq!(
            names(&batch.request),
            ["a2", "a3", "b0", "b1", "b2", "b3", "c0", "c1", "c2", "c3"]
        );
        assert_eq!(
            batch.request.resource_spans.len(),
            3,
            "resources concatenated"
        );
        assert_eq!(b.next_batch(MAX_TRACE_FRAME), None, "closing and empty");
    }

    #[test]
    fn the_byte_limit_drops_whole_resources_oldest_first() {
        let b = SpanBuffer::new(Limits {
            spans: SPAN_LIMIT,
            bytes: 3000,
        });
        for prefix in ["a", "b", "c"] {
            b.push(request_sized(prefix, 1, 1000));
        }
        assert_eq!((b.queued(), b.dropped()), (2, 1));
        b.close(Instant::now());
        let batch = b.next_batch(MAX_TRACE_FRAME).expect("a batch");
        assert_eq!(names(&batch.request), ["b0", "c0"]);
    }

    #[test]
    fn batches_never_exceed_a_frame_and_lose_nothing() {
        // 12 requests of ~a quarter frame each (10 spans of 105/4096 of a frame): at most 3
        // fit in one frame.
        let b = SpanBuffer::new(Limits::default());
        let per_span = MAX_TRACE_FRAME * 105 / 4096;
        for i in 0..12 {
            b.push(request_sized(&format!("r{i}-"), 10, per_span));
        }
        b.close(Instant::now());
        let mut all = Vec::new();
        let mut batches = 0;
        while let Some(batch) = b.next_batch(MAX_TRACE_FRAME) {
            let encoded = husk_telemetry::encode(&batch.request);
            assert!(encoded.len() <= MAX_TRACE_FRAME, "{} bytes", encoded.len());
            assert_eq!(span_count(&batch.request), batch.spans);
            all.extend(names(&batch.request));
            batches += 1;
        }
        assert_eq!(batches, 4);
        assert_eq!(all.len(), 120);
        assert_eq!(all[0], "r0-0");
        assert_eq!(all[119], "r11-9");
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn an_entry_larger_than_the_frame_is_dropped_not_stuck() {
        let b = SpanBuffer::new(Limits::default());
        b.push(request_sized("big", 1, 2000));
        b.push(request("small", 1));
        b.close(Instant::now());
        let batch = b.next_batch(1000).expect("a batch");
        assert_eq!(names(&batch.request), ["small0"]);
        assert_eq!(b.dropped(), 1);
    }

    #[test]
    fn the_forwarder_waits_for_spans_and_is_woken_by_a_push_or_the_shutdown() {
        let b = std::sync::Arc::new(SpanBuffer::new(Limits::default()));
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                let first = b.next_batch(MAX_TRACE_FRAME).map(|batch| batch.spans);
                let second = b.next_batch(MAX_TRACE_FRAME).map(|batch| batch.spans);
                (first, second)
            })
        };
        b.push(request("a", 2));
        b.close(Instant::now());
        assert_eq!(waiter.join().expect("waiter"), (Some(2), None));
        // A pause ends at once when the shutdown begins during it.
        let b = std::sync::Arc::new(SpanBuffer::new(Limits::default()));
        let pauser = {
            let b = b.clone();
            std::thread::spawn(move || b.pause(Duration::from_secs(600), None))
        };
        b.close(Instant::now());
        pauser.join().expect("pause ended by the shutdown");
        // Once closing, a pause is a plain (bounded) wait.
        let seen = b.closing();
        let t = Instant::now();
        b.pause(Duration::from_millis(20), seen);
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}
