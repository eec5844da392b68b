//! The guest's sink: OTLP frames to husk-tracer's local socket
//! ([`husk_protocols::trace_wire::TRACER_SOCKET`]).
//!
//! Owns the connection to the tracer and the few frames that wait while it is not there yet
//! (husk-init traces before it starts the tracer) or restarting. Must never block its caller
//! for long: writes time out, and a full backlog drops its oldest frame and counts the spans.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use husk_protocols::trace_wire::{write_trace_frame, TRACER_SOCKET};

use crate::{encode, span_count, ExportTraceServiceRequest, SpanSink};

/// Frames kept while the tracer cannot be reached.
pub const BACKLOG_FRAMES: usize = 64;
/// How long one write to the tracer may take before the frame is kept for later.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct State {
    conn: Option<UnixStream>,
    /// Encoded frames not yet written, oldest first, with their span counts.
    backlog: VecDeque<(Vec<u8>, u64)>,
}

/// Sends to husk-tracer over its Unix socket.
#[derive(Debug)]
pub struct TracerSocket {
    path: PathBuf,
    state: Mutex<State>,
    dropped: AtomicU64,
}

impl TracerSocket {
    /// The sink for the tracer at its usual place.
    pub fn new() -> Self {
        Self::at(Path::new(TRACER_SOCKET))
    }

    /// The sink for a tracer listening at `path`.
    pub fn at(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            state: Mutex::new(State::default()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Spans dropped so far because the tracer could not take them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes the backlog in order; whether it is now empty.
    fn drain(&self, state: &mut State) -> bool {
        while let Some((frame, _)) = state.backlog.front() {
            if state.conn.is_none() {
                match UnixStream::connect(&self.path) {
                    Ok(c) => {
                        let _ = c.set_write_timeout(Some(WRITE_TIMEOUT));
                        state.conn = Some(c);
                    }
                    Err(_) => return false,
                }
            }
            let Some(conn) = state.conn.as_mut() else {
                return false;
            };
            // A frame is written whole or not at all as far as the tracer can tell: a partial
            // write leaves a broken stream, which the tracer drops.
            let mut framed = Vec::with_capacity(frame.len() + 4);
            if write_trace_frame(&mut framed, frame).is_err() {
                state.backlog.pop_front();
                continue;
            }
            match std::io::Write::write_all(conn, &framed) {
                Ok(()) => {
                    state.backlog.pop_front();
                }
                Err(_) => {
                    state.conn = None;
                    return false;
                }
            }
        }
        true
    }
}

impl Default for TracerSocket {
    fn default() -> Self {
        Self::new()
    }
}

impl SpanSink for TracerSocket {
    fn send(&self, request: ExportTraceServiceRequest) {
        let spans = span_count(&request);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.backlog.len() >= BACKLOG_FRAMES {
            if let Some((_, lost)) = state.backlog.pop_front() {
                let total = self.dropped.fetch_add(lost, Ordering::Relaxed) + lost;
                tracing::warn!(target: "telemetry", lost, total, "husk-tracer unreachable: dropped the oldest spans");
            }
        }
        state.backlog.push_back((encode(&request), spans));
        self.drain(&mut state);
    }

    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if self.drain(&mut state) {
                return true;
            }
            drop(state);
            // The tracer is starting or restarting (its socket not there yet): retry with
            // back-off until the deadline; nothing signals its arrival.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(delay.min(left));
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocols::trace_wire::read_trace_frame;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(n: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn frames_wait_for_the_tracer_then_arrive_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tracer.sock");
        let sink = TracerSocket::at(&path);
        sink.send(request(1));
        sink.send(request(2));
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(sink.flush(Duration::from_secs(5)));
        sink.send(request(3));
        let (mut conn, _) = listener.accept().expect("accept");
        for want in 1..=3 {
            let got = crate::decode(&read_trace_frame(&mut conn).expect("frame")).expect("otlp");
            assert_eq!(span_count(&got), want);
        }
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_and_counts_its_spans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = TracerSocket::at(&dir.path().join("absent.sock"));
        for _ in 0..BACKLOG_FRAMES + 2 {
            sink.send(request(3));
        }
        assert_eq!(sink.dropped(), 6);
        assert!(!sink.flush(Duration::from_millis(20)));
    }
}
