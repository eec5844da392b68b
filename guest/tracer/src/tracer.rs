//! The tracer's life: the receiving thread ([`listener`]) and the forwarding thread
//! ([`forwarder`]) around one [`SpanBuffer`], and the ordered shutdown: stop accepting, read
//! what the clients have sent (at most [`listener::DRAIN`]), then forward what is buffered
//! until everything is acknowledged or [`FLUSH`] after the shutdown began.
//!
//! Owns the threads and the shutdown's order and deadlines. Must never handle signals, parse
//! arguments or exit the process (main does), and never wait past the flush deadline.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocols::trace_wire::TRACER_SOCKET;

use crate::buffer::{Limits, SpanBuffer};
use crate::error::TracerError;
use crate::forwarder::{self, Counters};
use crate::listener::{self, Settings};
use crate::uplink::Uplink;

/// From the shutdown's start to the moment the tracer gives up on what the host has not taken.
pub const FLUSH: Duration = Duration::from_secs(2);
/// How much longer than the deadline the shutdown waits for the forwarder to notice it.
const GRACE: Duration = Duration::from_millis(100);

/// What the tracer is set up with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The local socket.
    pub socket: PathBuf,
    pub limits: Limits,
    pub settings: Settings,
    /// See [`FLUSH`].
    pub flush: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: TRACER_SOCKET.into(),
            limits: Limits::default(),
            settings: Settings::default(),
            flush: FLUSH,
        }
    }
}

/// The tracer's account at exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Spans the host acknowledged.
    pub forwarded: u64,
    /// Spans dropped because the buffer was full (or a batch could not be framed).
    pub dropped: u64,
    /// Spans the host had not acknowledged by the deadline (lost too).
    pub undelivered: u64,
}

/// A running tracer.
#[derive(Debug)]
pub struct Tracer {
    buffer: Arc<SpanBuffer>,
    counters: Arc<Counters>,
    stop: UnixStream,
    listener: JoinHandle<()>,
    /// Disconnected once the forwarder has returned.
    forwarder_done: mpsc::Receiver<()>,
    flush: Duration,
}

impl Tracer {
    /// Listens at `config.socket` and forwards to `uplink`, each on its own thread.
    pub fn start<U: Uplink>(config: Config, uplink: U) -> Result<Self, TracerError> {
        let listening = listener::bind(&config.socket)?;
        let buffer = Arc::new(SpanBuffer::new(config.limits));
        let counters = Arc::new(Counters::default());
        let (stop, stop_theirs) = UnixStream::pair().map_err(|source| TracerError::Thread {
            what: "listener",
            source,
        })?;
        let (done_tx, forwarder_done) = mpsc::channel::<()>();
        let forwarder = {
            let (buffer, counters) = (buffer.clone(), counters.clone());
            std::thread::Builder::new()
                .name("forwarder".into())
                .spawn(move || {
                    let _done = done_tx;
                    forwarder::run(&uplink, &buffer, &counters);
                })
                .map_err(|source| TracerError::Thread {
                    what: "forwarder",
                    source,
                })?
        };
        let listener = {
            let buffer = buffer.clone();
            let path = config.socket.clone();
            let settings = config.settings;
            std::thread::Builder::new()
                .name("listener".into())
                .spawn(move || listener::serve(listening, &path, &stop_theirs, &buffer, settings))
        };
        let listener = match listener {
            Ok(l) => l,
            Err(source) => {
                // The forwarder ends once the closed buffer is empty, which it is.
                buffer.close(Instant::now());
                let _ = forwarder.join();
                return Err(TracerError::Thread {
                    what: "listener",
                    source,
                });
            }
        };
        Ok(Self {
            buffer,
            counters,
            stop,
            listener,
            forwarder_done,
            flush: config.flush,
        })
    }

    /// Stops: no new clients, the connected ones read out, everything buffered forwarded until
    /// acknowledged or the deadline ([`Config::flush`] from now) passes.
    pub fn shutdown(self) -> Summary {
        let deadline = Instant::now() + self.flush;
        // The listener also stops if this fails: its end then reads end of stream.
        let _ = (&self.stop).write_all(&[1]);
        drop(self.stop);
        if self.listener.join().is_err() {
            tracing::warn!("the listener thread panicked");
        }
        self.buffer.close(deadline);
        let wait = deadline.saturating_duration_since(Instant::now()) + GRACE;
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.forwarder_done.recv_timeout(wait) {
            tracing::warn!("the forwarder did not finish by the deadline");
        }
        Summary {
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            dropped: self.buffer.dropped(),
            undelivered: self.buffer.queued() + self.counters.in_flight.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::tests::{names, request};
    use crate::forwarder::tests::{host, Answer, WAIT};
    use crate::uplink::UnixPath;
    use husk_telemetry::{SpanSink, TracerSocket};
    use std::collections::BTreeSet;

    fn config(dir: &std::path::Path) -> Config {
        Config {
            socket: dir.join("tracer.sock"),
            ..Config::default()
        }
    }

    #[test]
    fn spans_from_several_clients_reach_the_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host_path = dir.path().join("host.sock");
        let frames = host(&host_path, vec![]);
        let tracer = Tracer::start(config(dir.path()), UnixPath(host_path)).expect("start");
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let path = dir.path().join("tracer.sock");
                std::thread::spawn(move || {
                    let sink = TracerSocket::at(&path);
                    for r in 0..4 {
                        sink.send(request(&format!("c{c}r{r}s"), 5));
                    }
                    assert!(sink.flush(WAIT), "client {c} flushed");
                    assert_eq!(sink.dropped(), 0);
                    sink
                })
            })
            .collect();
        let sinks: Vec<_> = clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect();
        let mut got = BTreeSet::new();
        while got.len() < 60 {
            let request = frames.recv_timeout(WAIT).expect("spans at the host");
            for name in names(&request) {
                assert!(got.insert(name.clone()), "{name} arrived twice");
            }
        }
        assert!(got.contains("c0r0s0") && got.contains("c2r3s4"), "{got:?}");
        let summary = tracer.shutdown();
        assert_eq!(
            summary,
            Summary {
                forwarded: 60,
                dropped: 0,
                undelivered: 0
            }
        );
        drop(sinks);
    }

    #[test]
    fn the_shutdown_forwards_what_is_buffered_once_the_host_is_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host_path = dir.path().join("host.sock");
        let tracer = Tracer::start(config(dir.path()), UnixPath(host_path.clone())).expect("start");
        // The host is not there yet: the spans wait in the tracer (or in its socket).
        let sink = TracerSocket::at(&dir.path().join("tracer.sock"));
        sink.send(request("early", 3));
        sink.send(request("late", 2));
        assert!(sink.flush(WAIT));
        // The host comes, and the first connection is lost before its ack.
        let frames = host(&host_path, vec![Answer::Hangup]);
        let summary = tracer.shutdown();
        assert_eq!(
            summary,
            Summary {
                forwarded: 5,
                dropped: 0,
                undelivered: 0
            }
        );
        let mut got = Vec::new();
        while let Ok(request) = frames.try_recv() {
            got.extend(names(&request));
        }
        // Everything arrived; the unacknowledged attempt shows up twice.
        for name in ["early0", "early1", "early2", "late0", "late1"] {
            assert!(got.iter().any(|n| n == name), "{name} missing from {got:?}");
        }
        assert!(!dir.path().join("tracer.sock").exists());
    }

    #[test]
    fn without_a_host_the_shutdown_ends_at_its_deadline_and_counts_the_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.flush = Duration::from_millis(300);
        let tracer = Tracer::start(cfg, UnixPath(dir.path().join("absent.sock"))).expect("start");
        let sink = TracerSocket::at(&dir.path().join("tracer.sock"));
        sink.send(request("lost", 4));
        assert!(sink.flush(WAIT));
        let summary = tracer.shutdown();
        assert_eq!(
            summary,
            Summary {
                forwarded: 0,
                dropped: 0,
                undelivered: 4
            }
        );
    }
}
