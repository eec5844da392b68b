//! The host's end of the guest's trace link (ARCHITECTURE.md §5, `protocols::trace_wire`):
//! husk-tracer connects to host vsock port 10240, which arrives here as Unix stream
//! connections on `<vsock.sock>_10240`, and sends frames of OTLP protobuf; each frame's spans
//! are checked, moved onto the host's clock and handed to the sink, then acked.
//!
//! The guest's clock is not the host's. The shim learns the difference when the guest is ready
//! and [`ClockOffset::set`]s it; every span time (start, end, events) is then shifted by it and
//! each resource says by how much in [`CLOCK_OFFSET_ATTRIBUTE`]. Spans that arrive before then
//! are held (bounded) and handed on, shifted, when it is set, or unshifted (and without the
//! attribute) at [`GuestReceiver::finish`] or when the holding space is full.
//!
//! The guest is untrusted. Frames are bounded by `MAX_TRACE_FRAME` before any allocation; a
//! frame whose body is not OTLP protobuf is counted, logged (rate-limited) and acked, since the
//! stream is still in step and the guest should move on; a frame over the limit or cut short
//! closes that connection (the stream is out of step). Spans without a 16-byte trace id and an
//! 8-byte span id (not all zero, parent empty or 8 bytes) are dropped and counted. At most
//! [`MAX_CONNECTIONS`] connections are served at once; more wait in the listen queue.
//!
//! Owns the listener's accept thread, one thread per connection, the held spans and the
//! counts. Must never let a guest crash or stall the host: no panic on any input, no unbounded
//! memory, and `finish` returns within its timeout whatever the guest does (it shuts the
//! sockets down). Never polls: idle connections block in `read`, `finish` waits on a condition
//! variable for connections to end.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocols::frame::FrameError;
use husk_protocols::trace_wire::{read_trace_frame, ACK};
use husk_telemetry::{ExportTraceServiceRequest, SpanSink};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::{LogLimit, TraceError};

/// Guest connections served at once.
pub const MAX_CONNECTIONS: usize = 2;
/// Spans held while the guest's clock offset is unknown; beyond it the oldest go on unshifted.
pub const HELD_SPANS: u64 = 16 * 1024;
/// Encoded bytes held while the guest's clock offset is unknown.
pub const HELD_BYTES: usize = 16 * 1024 * 1024;
/// The resource attribute that says by how many nanoseconds a guest's span times were moved
/// (host clock minus guest clock).
pub const CLOCK_OFFSET_ATTRIBUTE: &str = "husk.clock_offset_ns";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The guest clock's offset from the host's, once known; shared by the shim (which learns it)
/// and the receiver (which applies it).
#[derive(Debug, Default)]
pub struct ClockOffset {
    offset: Mutex<Option<i64>>,
    receivers: Mutex<Vec<Weak<Shared>>>,
}

impl ClockOffset {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Sets the offset (host clock minus guest clock, in nanoseconds) and hands the spans held
    /// until now on, shifted. A later call changes it for spans that arrive after.
    pub fn set(&self, offset_nanos: i64) {
        *lock(&self.offset) = Some(offset_nanos);
        let receivers: Vec<Arc<Shared>> = {
            let mut r = lock(&self.receivers);
            r.retain(|w| w.strong_count() > 0);
            r.iter().filter_map(Weak::upgrade).collect()
        };
        for r in receivers {
            r.release_held(false);
        }
    }

    /// The offset, if known.
    pub fn get(&self) -> Option<i64> {
        *lock(&self.offset)
    }
}

/// What a receiver has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Guest connections accepted.
    pub connections: u64,
    /// Frames read (malformed ones included).
    pub frames: u64,
    /// Spans handed to the sink.
    pub spans: u64,
    /// Frames that were not OTLP protobuf, over the limit or cut short.
    pub malformed: u64,
    /// Spans dropped for their ids.
    pub invalid_spans: u64,
    /// Spans handed on without the clock correction (the offset was not known in time).
    pub unshifted_spans: u64,
}

/// Receives the guest's spans; see the module's documentation.
#[derive(Debug)]
pub struct GuestReceiver {
    shared: Arc<Shared>,
    listener: UnixListener,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    sink: Arc<dyn SpanSink>,
    clock: Arc<ClockOffset>,
    held: Mutex<Held>,
    conns: Mutex<Conns>,
    /// Signalled when a connection ends or the receiver stops.
    conns_changed: Condvar,
    connections: AtomicU64,
    frames: AtomicU64,
    spans: AtomicU64,
    malformed: AtomicU64,
    invalid_spans: AtomicU64,
    unshifted_spans: AtomicU64,
    malformed_log: LogLimit,
    invalid_log: LogLimit,
}

#[derive(Debug, Default)]
struct Held {
    queue: VecDeque<(ExportTraceServiceRequest, u64, usize)>,
    spans: u64,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Conns {
    active: usize,
    next_id: u64,
    /// A second handle on each live connection, to shut it down at `finish`.
    streams: Vec<(u64, UnixStream)>,
    stopping: bool,
}

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|&b| b != 0)
}

fn valid_span(s: &Span) -> bool {
    valid_id(&s.trace_id, 16)
        && valid_id(&s.span_id, 8)
        && (s.parent_span_id.is_empty() || s.parent_span_id.len() == 8)
}

/// Drops the spans with invalid ids (and the scopes and resources left empty); returns
/// (spans kept, spans dropped).
pub(crate) fn keep_valid(request: &mut ExportTraceServiceRequest) -> (u64, u64) {
    let (mut kept, mut dropped) = (0u64, 0u64);
    for rs in &mut request.resource_spans {
        for ss in &mut rs.scope_spans {
            let before = ss.spans.len();
            ss.spans.retain(valid_span);
            kept += ss.spans.len() as u64;
            dropped += (before - ss.spans.len()) as u64;
        }
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    request
        .resource_spans
        .retain(|rs| !rs.scope_spans.is_empty());
    (kept, dropped)
}

/// `t` moved by `offset`, kept within `u64`; 0 (unset) stays 0.
fn shift_time(t: u64, offset: i64) -> u64 {
    if t == 0 {
        return 0;
    }
    let moved = i128::from(t) + i128::from(offset);
    u64::try_from(moved.clamp(1, i128::from(u64::MAX))).unwrap_or(u64::MAX)
}

/// Decodes one frame's body from the guest and drops its spans with invalid ids: the request,
/// the spans kept and the spans dropped. Pure, for the receiver and its fuzz target.
pub fn check_guest_frame(
    body: &[u8],
) -> Result<(ExportTraceServiceRequest, u64, u64), prost::DecodeError> {
    let mut request = husk_telemetry::decode(body)?;
    let (kept, dropped) = keep_valid(&mut request);
    Ok((request, kept, dropped))
}

/// Moves every time in `request` by `offset` (host clock minus guest clock, nanoseconds,
/// saturating) and records it on every resource as [`CLOCK_OFFSET_ATTRIBUTE`].
pub fn shift(request: &mut ExportTraceServiceRequest, offset: i64) {
    for rs in &mut request.resource_spans {
        for s in rs.scope_spans.iter_mut().flat_map(|ss| &mut ss.spans) {
            s.start_time_unix_nano = shift_time(s.start_time_unix_nano, offset);
            s.end_time_unix_nano = shift_time(s.end_time_unix_nano, offset);
            for e in &mut s.events {
                e.time_unix_nano = shift_time(e.time_unix_nano, offset);
            }
        }
        let resource = rs.resource.get_or_insert_with(Resource::default);
        resource
            .attributes
            .retain(|kv| kv.key != CLOCK_OFFSET_ATTRIBUTE);
        resource.attributes.push(KeyValue {
            key: CLOCK_OFFSET_ATTRIBUTE.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(offset)),
            }),
            ..Default::default()
        });
    }
}

impl Shared {
    fn stats(&self) -> ReceiverStats {
        ReceiverStats {
            connections: self.connections.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            spans: self.spans.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            invalid_spans: self.invalid_spans.load(Ordering::Relaxed),
            unshifted_spans: self.unshifted_spans.load(Ordering::Relaxed),
        }
    }

    fn hand_on(&self, request: ExportTraceServiceRequest, spans: u64, shifted: bool) {
        if !shifted {
            self.unshifted_spans.fetch_add(spans, Ordering::Relaxed);
        }
        self.spans.fetch_add(spans, Ordering::Relaxed);
        self.sink.send(request);
    }

    /// Hands a checked request on, shifted, or holds it while the offset is unknown. The held
    /// lock is taken before the offset is read, so a request is never held after `set` has
    /// released the others (`set` stores the offset first, then takes this lock).
    fn deliver(&self, mut request: ExportTraceServiceRequest, spans: u64, bytes: usize) {
        let mut held = lock(&self.held);
        if let Some(offset) = self.clock.get() {
            shift(&mut request, offset);
            self.hand_on(request, spans, true);
            return;
        }
        held.queue.push_back((request, spans, bytes));
        held.spans += spans;
        held.bytes += bytes;
        while held.queue.len() > 1 && (held.spans > HELD_SPANS || held.bytes > HELD_BYTES) {
            let Some((old, n, b)) = held.queue.pop_front() else {
                break;
            };
            held.spans -= n;
            held.bytes -= b;
            self.hand_on(old, n, false);
        }
    }

    /// Hands the held requests on: shifted when the offset is known, else (at the end) as
    /// they are.
    fn release_held(&self, at_end: bool) {
        let mut held = lock(&self.held);
        let offset = self.clock.get();
        if offset.is_none() && !at_end {
            return;
        }
        held.spans = 0;
        held.bytes = 0;
        for (mut request, spans, _) in std::mem::take(&mut held.queue) {
            match offset {
                Some(o) => {
                    shift(&mut request, o);
                    self.hand_on(request, spans, true);
                }
                None => self.hand_on(request, spans, false),
            }
        }
    }

    /// One frame's body: decode, check, hand on. Returns nothing: whatever the body, the
    /// frame is acked.
    fn frame(&self, body: &[u8]) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        let (request, kept, dropped) = match check_guest_frame(body) {
            Ok(checked) => checked,
            Err(e) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.malformed_log.allow() {
                    tracing::warn!(
                        bytes = body.len(),
                        suppressed,
                        "guest sent a trace frame that is not OTLP protobuf (dropped): {e}"
                    );
                }
                return;
            }
        };
        if dropped > 0 {
            self.invalid_spans.fetch_add(dropped, Ordering::Relaxed);
            if let Some(suppressed) = self.invalid_log.allow() {
                tracing::warn!(
                    spans = dropped,
                    suppressed,
                    "guest sent spans with invalid trace or span ids (dropped)"
                );
            }
        }
        if kept > 0 {
            self.deliver(request, kept, body.len());
        }
    }

    /// Serves one connection until it ends (or is shut down).
    fn serve(&self, mut stream: UnixStream) {
        loop {
            match read_trace_frame(&mut stream) {
                Ok(body) => {
                    self.frame(&body);
                    if stream.write_all(&[ACK]).is_err() {
                        break;
                    }
                }
                Err(FrameError::Closed) | Err(FrameError::Io(_)) => break,
                // Cut short by `finish` shutting the connection down: not the guest's fault.
                Err(_) if lock(&self.conns).stopping => break,
                Err(e) => {
                    self.frames.fetch_add(1, Ordering::Relaxed);
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.malformed_log.allow() {
                        tracing::warn!(
                            suppressed,
                            "guest's trace connection closed on a bad frame: {e}"
                        );
                    }
                    break;
                }
            }
        }
    }

    fn connection_ended(&self, id: u64) {
        let mut c = lock(&self.conns);
        c.active -= 1;
        c.streams.retain(|(i, _)| *i != id);
        drop(c);
        self.conns_changed.notify_all();
    }

    /// The accept thread: at most [`MAX_CONNECTIONS`] at once; ends when the listener is shut
    /// down (at `finish`), then waits for its connection threads, which `finish` has shut down.
    fn accept_loop(self: &Arc<Self>, listener: UnixListener) {
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        loop {
            {
                let mut c = lock(&self.conns);
                while c.active >= MAX_CONNECTIONS && !c.stopping {
                    c = self
                        .conns_changed
                        .wait(c)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if c.stopping {
                    break;
                }
            }
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    let mut c = lock(&self.conns);
                    if c.stopping {
                        break;
                    }
                    match e.kind() {
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted => {
                            continue
                        }
                        _ => {}
                    }
                    // Out of descriptors or the like: say so, and try again shortly unless
                    // told to stop.
                    tracing::warn!("cannot accept the guest's trace connection: {e}");
                    c = self
                        .conns_changed
                        .wait_timeout(c, Duration::from_millis(200))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    if c.stopping {
                        break;
                    }
                    continue;
                }
            };
            threads.retain(|t| !t.is_finished());
            let Ok(second) = stream.try_clone() else {
                continue;
            };
            let id = {
                let mut c = lock(&self.conns);
                if c.stopping {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    break;
                }
                c.active += 1;
                c.next_id += 1;
                let id = c.next_id;
                c.streams.push((id, second));
                id
            };
            self.connections.fetch_add(1, Ordering::Relaxed);
            let shared = self.clone();
            let spawned = std::thread::Builder::new()
                .name("husk-trace-guest".into())
                .spawn(move || {
                    shared.serve(stream);
                    shared.connection_ended(id);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::warn!("cannot serve the guest's trace connection: {e}");
                    self.connection_ended(id);
                }
            }
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Receives a VM's spans when it traces: `listener` is the VM's trace listener
/// (`Vm::take_trace_listener`), `clock_offset_ns` the offset its readiness reported, `sink`
/// where spans go (none: the host does not trace). A receiver that cannot start is logged, and
/// the VM runs on without it.
pub fn receive_guest_spans(
    listener: Option<UnixListener>,
    clock_offset_ns: Option<i64>,
    sink: Option<Arc<dyn SpanSink>>,
) -> Option<GuestReceiver> {
    let (listener, sink) = (listener?, sink?);
    let clock = ClockOffset::new();
    if let Some(offset) = clock_offset_ns {
        clock.set(offset);
    }
    GuestReceiver::start(listener, sink, clock)
        .map_err(|e| tracing::warn!(error = %e, "the guest's spans are not received"))
        .ok()
}

impl GuestReceiver {
    /// Serves guest connections arriving on `listener` (bound at `<vsock.sock>_10240` before
    /// the VM boots), handing their spans to `sink` on the host's clock once `clock` is set.
    pub fn start(
        listener: UnixListener,
        sink: Arc<dyn SpanSink>,
        clock: Arc<ClockOffset>,
    ) -> Result<GuestReceiver, TraceError> {
        let start = |what| move |error| TraceError::Start { what, error };
        listener
            .set_nonblocking(false)
            .map_err(start("guest receiver's listener"))?;
        let accepting = listener
            .try_clone()
            .map_err(start("guest receiver's listener"))?;
        let shared = Arc::new(Shared {
            sink,
            clock: clock.clone(),
            held: Mutex::new(Held::default()),
            conns: Mutex::new(Conns::default()),
            conns_changed: Condvar::new(),
            connections: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            spans: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            invalid_spans: AtomicU64::new(0),
            unshifted_spans: AtomicU64::new(0),
            malformed_log: LogLimit::default(),
            invalid_log: LogLimit::default(),
        });
        lock(&clock.receivers).push(Arc::downgrade(&shared));
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("husk-trace-accept".into())
                .spawn(move || shared.accept_loop(accepting))
                .map_err(start("guest receiver's thread"))?
        };
        Ok(GuestReceiver {
            shared,
            listener,
            accept: Some(accept),
        })
    }

    /// The counts so far.
    pub fn stats(&self) -> ReceiverStats {
        self.shared.stats()
    }

    /// Waits up to `timeout` for the guest's connections to end (they do when the VM ends),
    /// then stops: no more connections, the remaining ones shut down, held spans handed on
    /// (unshifted if the offset never came), threads joined. Returns the counts.
    pub fn finish(mut self, timeout: Duration) -> ReceiverStats {
        self.stop(timeout);
        self.shared.stats()
    }

    fn stop(&mut self, timeout: Duration) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut c = self
                .shared
                .conns_changed
                .wait_timeout_while(lock(&self.shared.conns), left, |c| c.active > 0)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            c.stopping = true;
            for (_, s) in &c.streams {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        self.shared.conns_changed.notify_all();
        // Wakes the accept thread out of `accept` (Linux: EINVAL on a shut-down listener).
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = accept.join();
        self.shared.release_held(true);
    }
}

impl Drop for GuestReceiver {
    /// Stops at once: connections are shut down, held spans handed on.
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;

    use husk_protocols::trace_wire::{write_trace_frame, MAX_TRACE_FRAME};
    use opentelemetry_proto::tonic::trace::v1::span::Event;

    use crate::model::tests::{request, span};

    /// A sink that keeps what it gets and lets a test wait for it.
    #[derive(Debug, Default)]
    struct Collect {
        got: Mutex<Vec<ExportTraceServiceRequest>>,
        cond: Condvar,
    }

    impl SpanSink for Collect {
        fn send(&self, request: ExportTraceServiceRequest) {
            lock(&self.got).push(request);
            self.cond.notify_all();
        }
    }

    impl Collect {
        fn taken(&self) -> Vec<ExportTraceServiceRequest> {
            lock(&self.got).clone()
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        sink: Arc<Collect>,
        clock: Arc<ClockOffset>,
        receiver: GuestReceiver,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = husk_protocols::ports::host_listener_path(
            &dir.path().join("vsock.sock"),
            husk_protocols::ports::TRACE_PORT,
        );
        let listener = UnixListener::bind(&path).expect("bind");
        let sink = Arc::new(Collect::default());
        let clock = ClockOffset::new();
        let receiver = GuestReceiver::start(listener, sink.clone(), clock.clone()).expect("start");
        Fixture {
            _dir: dir,
            path,
            sink,
            clock,
            receiver,
        }
    }

    /// Sends one frame and waits for its ack.
    fn send(guest: &mut UnixStream, body: &[u8]) {
        write_trace_frame(guest, body).expect("frame");
        let mut ack = [0u8];
        guest.read_exact(&mut ack).expect("ack");
        assert_eq!(ack[0], ACK);
    }

    fn offset_attr(r: &ExportTraceServiceRequest) -> Option<i64> {
        r.resource_spans[0]
            .resource
            .as_ref()?
            .attributes
            .iter()
            .find(|kv| kv.key == CLOCK_OFFSET_ATTRIBUTE)
            .and_then(|kv| match kv.value.as_ref()?.value {
                Some(any_value::Value::IntValue(i)) => Some(i),
                _ => None,
            })
    }

    fn times(r: &ExportTraceServiceRequest) -> Vec<(u64, u64)> {
        r.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| (s.start_time_unix_nano, s.end_time_unix_nano))
            .collect()
    }

    #[test]
    fn spans_are_held_until_the_clock_offset_is_known_then_shifted() {
        let f = fixture();
        let mut guest = UnixStream::connect(&f.path).expect("connect");
        let mut early = span(0xaa, 1, 0, "boot", 1_000, 2_000);
        early.events.push(Event {
            time_unix_nano: 1_500,
            name: "mounted".into(),
            ..Default::default()
        });
        send(
            &mut guest,
            &husk_telemetry::encode(&request("husk-init", vec![early])),
        );
        assert!(f.sink.taken().is_empty(), "held: the offset is not known");

        f.clock.set(1_000_000);
        let got = f.sink.taken();
        assert_eq!(got.len(), 1, "released by set");
        assert_eq!(times(&got[0]), [(1_001_000, 1_002_000)]);
        assert_eq!(
            got[0].resource_spans[0].scope_spans[0].spans[0].events[0].time_unix_nano,
            1_001_500
        );
        assert_eq!(offset_attr(&got[0]), Some(1_000_000));

        // After set: shifted as it arrives; the guest's own claim of an offset is replaced.
        let mut late = request("husk-agent", vec![span(0xaa, 2, 1, "Create", 3_000, 4_000)]);
        late.resource_spans[0]
            .resource
            .as_mut()
            .expect("resource")
            .attributes
            .push(KeyValue {
                key: CLOCK_OFFSET_ATTRIBUTE.into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(7)),
                }),
                ..Default::default()
            });
        send(&mut guest, &husk_telemetry::encode(&late));
        let got = f.sink.taken();
        assert_eq!(got.len(), 2, "handed on before the ack");
        assert_eq!(times(&got[1]), [(1_003_000, 1_004_000)]);
        assert_eq!(offset_attr(&got[1]), Some(1_000_000));
        let attrs = &got[1].resource_spans[0]
            .resource
            .as_ref()
            .expect("r")
            .attributes;
        assert_eq!(
            attrs
                .iter()
                .filter(|kv| kv.key == CLOCK_OFFSET_ATTRIBUTE)
                .count(),
            1
        );

        drop(guest);
        let stats = f.receiver.finish(Duration::from_secs(30));
        assert_eq!(
            stats,
            ReceiverStats {
                connections: 1,
                frames: 2,
                spans: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn without_an_offset_held_spans_go_on_unshifted_at_finish() {
        let f = fixture();
        let mut guest = UnixStream::connect(&f.path).expect("connect");
        send(
            &mut guest,
            &husk_telemetry::encode(&request("husk-init", vec![span(0xaa, 1, 0, "boot", 5, 9)])),
        );
        assert!(f.sink.taken().is_empty());
        drop(guest);
        let stats = f.receiver.finish(Duration::from_secs(30));
        let got = f.sink.taken();
        assert_eq!(got.len(), 1);
        assert_eq!(times(&got[0]), [(5, 9)]);
        assert_eq!(offset_attr(&got[0]), None, "no correction claimed");
        assert_eq!((stats.spans, stats.unshifted_spans), (1, 1));
    }

    #[test]
    fn held_spans_are_bounded_the_oldest_go_on_unshifted() {
        let f = fixture();
        let mut guest = UnixStream::connect(&f.path).expect("connect");
        // The bound is reached in frames of CHUNK spans (a frame is at most MAX_TRACE_FRAME).
        const CHUNK: u64 = 2048;
        for chunk in 0..HELD_SPANS / CHUNK {
            let spans: Vec<Span> = (0..CHUNK)
                .map(|i| {
                    let mut s = span(0xaa, 1, 0, "many", 10, 20);
                    s.span_id = (chunk * CHUNK + i + 1).to_be_bytes().to_vec();
                    s
                })
                .collect();
            send(&mut guest, &husk_telemetry::encode(&request("g", spans)));
        }
        assert!(f.sink.taken().is_empty(), "exactly at the bound: all held");
        send(
            &mut guest,
            &husk_telemetry::encode(&request("g", vec![span(0xaa, 2, 0, "one more", 10, 20)])),
        );
        let got = f.sink.taken();
        assert_eq!(got.len(), 1, "the oldest frame went on to make room");
        assert_eq!(offset_attr(&got[0]), None);
        f.clock.set(5);
        let got = f.sink.taken();
        // All that went on so far: the oldest frame, then the held ones and the one more.
        assert_eq!(got.len() as u64, 1 + HELD_SPANS / CHUNK);
        assert_eq!(times(got.last().expect("the last")), [(15, 25)]);
        drop(guest);
        let stats = f.receiver.finish(Duration::from_secs(30));
        assert_eq!(
            (stats.spans, stats.unshifted_spans),
            (HELD_SPANS + 1, CHUNK)
        );
    }

    #[test]
    fn negative_offsets_saturate_and_unset_times_stay_unset() {
        let mut r = request("g", vec![span(0xaa, 1, 0, "x", 10, u64::MAX - 1)]);
        r.resource_spans[0].scope_spans[0]
            .spans
            .push(span(0xaa, 2, 0, "y", 0, 20));
        shift(&mut r, -15);
        assert_eq!(times(&r), [(1, u64::MAX - 16), (0, 5)]);
        shift(&mut r, i64::MAX);
        assert_eq!(times(&r)[0], (i64::MAX as u64 + 1, u64::MAX));
    }

    #[test]
    fn invalid_ids_are_dropped_and_counted() {
        let f = fixture();
        f.clock.set(0);
        let mut guest = UnixStream::connect(&f.path).expect("connect");
        let mut short_trace = span(0xaa, 2, 0, "short trace id", 1, 2);
        short_trace.trace_id.pop();
        let mut long_span = span(0xaa, 3, 0, "long span id", 1, 2);
        long_span.span_id.push(1);
        let zero = span(0, 4, 0, "all-zero trace id", 1, 2);
        let mut bad_parent = span(0xaa, 5, 0, "bad parent", 1, 2);
        bad_parent.parent_span_id = vec![1; 3];
        send(
            &mut guest,
            &husk_telemetry::encode(&request(
                "husk-agent",
                vec![
                    span(0xaa, 1, 0, "good", 1, 2),
                    short_trace,
                    long_span,
                    zero,
                    bad_parent,
                ],
            )),
        );
        // Nothing valid at all: nothing handed on, but acked all the same.
        let mut none = span(0xaa, 6, 0, "empty span id", 1, 2);
        none.span_id.clear();
        send(
            &mut guest,
            &husk_telemetry::encode(&request("husk-agent", vec![none])),
        );
        drop(guest);
        let stats = f.receiver.finish(Duration::from_secs(30));
        let got = f.sink.taken();
        assert_eq!(got.len(), 1);
        let names: Vec<&str> = got[0].resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["good"]);
        assert_eq!((stats.spans, stats.invalid_spans), (1, 5));
    }

    #[test]
    fn a_malformed_body_is_acked_and_a_bad_length_closes_the_connection() {
        let f = fixture();
        f.clock.set(0);
        let mut guest = UnixStream::connect(&f.path).expect("connect");
        send(&mut guest, b"\xff\xff\xff\xff not protobuf");
        send(
            &mut guest,
            &husk_telemetry::encode(&request("husk-agent", vec![span(0xaa, 1, 0, "ok", 1, 2)])),
        );
        assert_eq!(f.sink.taken().len(), 1, "the stream is still in step");

        // A length over the limit: the host closes this connection without reading on.
        let too_big = u32::try_from(MAX_TRACE_FRAME + 1).expect("fits");
        guest.write_all(&too_big.to_be_bytes()).expect("prefix");
        let mut rest = Vec::new();
        guest.read_to_end(&mut rest).expect("closed by the host");
        assert!(rest.is_empty(), "no ack for it");

        // Another connection still works.
        let mut again = UnixStream::connect(&f.path).expect("connect");
        send(
            &mut again,
            &husk_telemetry::encode(&request("husk-agent", vec![span(0xbb, 1, 0, "ok", 1, 2)])),
        );
        drop(again);
        let stats = f.receiver.finish(Duration::from_secs(30));
        assert_eq!(
            (
                stats.connections,
                stats.frames,
                stats.malformed,
                stats.spans
            ),
            (2, 4, 2, 2),
            "{stats:?}"
        );
    }

    #[test]
    fn finish_returns_when_the_guest_closes_or_after_its_timeout() {
        let f = fixture();
        let mut guest = UnixStream::connect(&f.path).expect("connect");
        send(
            &mut guest,
            &husk_telemetry::encode(&request("husk-init", vec![span(0xaa, 1, 0, "boot", 5, 9)])),
        );
        // The guest closes while finish waits: finish returns well before its timeout.
        let closer = std::thread::spawn(move || {
            let mut guest = guest;
            send(
                &mut guest,
                &husk_telemetry::encode(&request(
                    "husk-init",
                    vec![span(0xaa, 2, 1, "late", 6, 8)],
                )),
            );
        });
        let started = Instant::now();
        let stats = f.receiver.finish(Duration::from_secs(120));
        assert!(started.elapsed() < Duration::from_secs(60));
        closer.join().expect("closer");
        assert_eq!(
            (stats.frames, stats.spans, stats.unshifted_spans),
            (2, 2, 2)
        );

        // A guest that stays connected and silent: finish gives up at its timeout and shuts
        // the connection down; the guest sees the end of the stream.
        let f = fixture();
        let mut idle = UnixStream::connect(&f.path).expect("connect");
        send(
            &mut idle,
            &husk_telemetry::encode(&request("husk-init", vec![span(0xaa, 1, 0, "boot", 5, 9)])),
        );
        let started = Instant::now();
        let stats = f.receiver.finish(Duration::from_millis(200));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(60), "{took:?}");
        assert_eq!(stats.connections, 1);
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest).expect("shut down");
        assert!(rest.is_empty());
    }

    #[test]
    fn at_most_max_connections_are_served_at_once() {
        let f = fixture();
        f.clock.set(0);
        let body = husk_telemetry::encode(&request("g", vec![span(0xaa, 1, 0, "x", 1, 2)]));
        let mut open: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut g = UnixStream::connect(&f.path).expect("connect");
                send(&mut g, &body);
                g
            })
            .collect();
        // One more waits in the listen queue: its frame is not read until one ends.
        let mut waiting = UnixStream::connect(&f.path).expect("connect");
        write_trace_frame(&mut waiting, &body).expect("frame");
        waiting
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut ack = [0u8];
        let e = waiting.read_exact(&mut ack).expect_err("not served yet");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        assert_eq!(f.receiver.stats().connections, MAX_CONNECTIONS as u64);
        drop(open.remove(0));
        waiting.set_read_timeout(None).expect("no timeout");
        waiting.read_exact(&mut ack).expect("served once one ended");
        assert_eq!(ack[0], ACK);
        drop(open);
        drop(waiting);
        let stats = f.receiver.finish(Duration::from_secs(30));
        assert_eq!(stats.connections, MAX_CONNECTIONS as u64 + 1);
    }
}
