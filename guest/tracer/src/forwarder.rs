//! The forwarder: takes merged batches from the [`SpanBuffer`], writes each to the host as one
//! frame and waits for the host's [`ACK`] before it counts the batch's spans as forwarded.
//! A broken connection, a timeout or any other answer means the batch is sent again on a new
//! connection, after a bounded back-off.
//!
//! Owns the connection to the host, the unacknowledged batch and the forwarded count. Must
//! never block the receiving side (it only takes from the buffer), never forget a batch the
//! host has not acknowledged before the shutdown deadline, and never run past that deadline
//! by more than one I/O timeout capped to it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use husk_protocols::trace_wire::{write_trace_frame, ACK, MAX_TRACE_FRAME};

use crate::buffer::SpanBuffer;
use crate::error::TracerError;
use crate::uplink::Uplink;

/// How long one write of a batch, or the wait for its ack, may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first and the longest pause between failed attempts.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause once the shutdown has begun: its deadline is near.
pub const SHUTDOWN_BACKOFF: Duration = Duration::from_millis(50);

/// What the forwarder has done, readable while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Spans the host has acknowledged.
    pub forwarded: AtomicU64,
    /// Spans of the batch sent and not yet acknowledged.
    pub in_flight: AtomicU64,
}

/// A batch framed for the wire, kept until the host acknowledges it.
#[derive(Debug)]
struct Pending {
    frame: Vec<u8>,
    spans: u64,
}

/// Forwards until the buffer is closing and empty, or its deadline has passed.
pub fn run<U: Uplink>(uplink: &U, buffer: &SpanBuffer, counters: &Counters) {
    let mut pending: Option<Pending> = None;
    let mut conn: Option<UnixStream> = None;
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        let closing = buffer.closing();
        let left = closing.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            break;
        }
        let Some(batch) = pending.as_ref() else {
            let Some(next) = buffer.next_batch(MAX_TRACE_FRAME) else {
                break;
            };
            let mut frame = Vec::new();
            match write_trace_frame(&mut frame, &husk_telemetry::encode(&next.request)) {
                Ok(()) => {
                    counters.in_flight.store(next.spans, Ordering::Relaxed);
                    pending = Some(Pending {
                        frame,
                        spans: next.spans,
                    });
                }
                Err(e) => {
                    // A batch is built to fit a frame; should one not, it cannot be sent.
                    tracing::warn!("dropped a batch of {} spans: {e}", next.spans);
                    buffer.count_lost(next.spans);
                }
            }
            continue;
        };
        let timeout = left
            .map_or(IO_TIMEOUT, |l| l.min(IO_TIMEOUT))
            .max(Duration::from_millis(1));
        let reused = conn.is_some();
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => uplink
                .connect(timeout.min(CONNECT_TIMEOUT))
                .map_err(|source| TracerError::Connect {
                    uplink: uplink.describe(),
                    source,
                }),
        }
        .and_then(|mut c| send(&mut c, &batch.frame, timeout).map(|()| c));
        match result {
            Ok(c) => {
                conn = Some(c);
                counters.forwarded.fetch_add(batch.spans, Ordering::Relaxed);
                counters.in_flight.store(0, Ordering::Relaxed);
                pending = None;
                backoff = MIN_BACKOFF;
                if failing {
                    tracing::info!("the host takes spans again ({})", uplink.describe());
                    failing = false;
                }
            }
            // A connection that served before may have been closed meanwhile: try a fresh one
            // at once.
            Err(e) if reused => tracing::debug!("{e}; reconnecting"),
            Err(e) => {
                if failing {
                    tracing::debug!("{e}; retrying in {backoff:?}");
                } else {
                    tracing::warn!("{e}; keeping the spans and retrying");
                    failing = true;
                }
                let cap = if closing.is_some() {
                    SHUTDOWN_BACKOFF
                } else {
                    MAX_BACKOFF
                };
                buffer.pause(backoff.min(cap), closing);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Writes one framed batch and waits for its ack, each within `timeout`.
fn send(conn: &mut UnixStream, frame: &[u8], timeout: Duration) -> Result<(), TracerError> {
    conn.set_write_timeout(Some(timeout))
        .and_then(|()| conn.set_read_timeout(Some(timeout)))
        .map_err(TracerError::Ack)?;
    conn.write_all(frame)
        .and_then(|()| conn.flush())
        .map_err(|e| TracerError::Send(e.into()))?;
    let mut answer = [0u8; 1];
    loop {
        match conn.read(&mut answer) {
            Ok(0) => return Err(TracerError::NoAck),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TracerError::Ack(e)),
        }
    }
    if answer[0] == ACK {
        Ok(())
    } else {
        Err(TracerError::BadAck(answer[0]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::buffer::tests::{names, request};
    use crate::buffer::Limits;
    use crate::uplink::UnixPath;
    use husk_protocols::trace_wire::read_trace_frame;
    use husk_telemetry::ExportTraceServiceRequest;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::sync::Arc;

    /// How the stand-in host answers one connection's first frame.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Answer {
        /// Close the connection without an answer.
        Hangup,
        /// Answer a byte that is not the ack.
        Nak,
        /// Acknowledge this frame and every later one on the connection.
        Ack,
    }

    /// A stand-in host at `path`: connection i answers as `answers[i]` (then `Ack`), and every
    /// frame it reads is sent to the returned channel, acknowledged or not.
    pub(crate) fn host(
        path: &std::path::Path,
        answers: Vec<Answer>,
    ) -> mpsc::Receiver<ExportTraceServiceRequest> {
        let listener = UnixListener::bind(path).expect("bind the host");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for i in 0.. {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let answer = answers.get(i).copied().unwrap_or(Answer::Ack);
                while let Ok(frame) = read_trace_frame(&mut conn) {
                    let request = husk_telemetry::decode(&frame).expect("OTLP from the tracer");
                    if tx.send(request).is_err() {
                        return;
                    }
                    let reply = match answer {
                        Answer::Hangup => break,
                        Answer::Nak => 0x15,
                        Answer::Ack => ACK,
                    };
                    if conn.write_all(&[reply]).is_err() || !matches!(answer, Answer::Ack) {
                        break;
                    }
                }
            }
        });
        rx
    }

    pub(crate) const WAIT: Duration = Duration::from_secs(20);

    #[test]
    fn an_unacknowledged_batch_is_sent_again_until_the_host_takes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("host.sock");
        let frames = host(&path, vec![Answer::Hangup, Answer::Nak, Answer::Ack]);
        let buffer = Arc::new(SpanBuffer::new(Limits::default()));
        let counters = Arc::new(Counters::default());
        buffer.push(request("a", 3));
        let forwarder = {
            let (buffer, counters) = (buffer.clone(), counters.clone());
            std::thread::spawn(move || run(&UnixPath(path), &buffer, &counters))
        };
        for attempt in ["hung up", "answered a NAK", "acknowledged"] {
            let got = frames.recv_timeout(WAIT).expect(attempt);
            assert_eq!(names(&got), ["a0", "a1", "a2"], "{attempt}");
        }
        // The same connection serves the next batch.
        buffer.push(request("b", 1));
        assert_eq!(names(&frames.recv_timeout(WAIT).expect("b")), ["b0"]);
        buffer.close(Instant::now() + WAIT);
        forwarder
            .join()
            .expect("the forwarder ends once the buffer is empty");
        assert_eq!(counters.forwarded.load(Ordering::Relaxed), 4);
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(buffer.dropped(), 0);
    }

    #[test]
    fn without_a_host_the_forwarder_gives_up_at_the_deadline_and_says_what_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let buffer = SpanBuffer::new(Limits::default());
        let counters = Counters::default();
        buffer.push(request("a", 2));
        buffer.close(Instant::now() + Duration::from_millis(100));
        run(
            &UnixPath(dir.path().join("absent.sock")),
            &buffer,
            &counters,
        );
        assert_eq!(counters.forwarded.load(Ordering::Relaxed), 0);
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 2);
    }
}
