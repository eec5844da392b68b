//! The receiving side: the local socket ([`husk_protocols::trace_wire::TRACER_SOCKET`]) and its
//! clients, the guest's husk processes, each sending OTLP frames (husk-telemetry's
//! `TracerSocket`). One thread polls the listener and every client; each complete frame is
//! decoded and pushed into the [`SpanBuffer`].
//!
//! Owns the socket file, the clients, their partial frames and the client limit. At shutdown it
//! stops accepting and reads what the connected clients have already sent, for a bounded time.
//! Must never trust a client: a length over the frame limit, a frame cut short or a body that
//! is not OTLP closes that client, never the tracer; and never wait on the forwarder.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use husk_protocols::frame::FrameError;
use husk_protocols::trace_wire::MAX_TRACE_FRAME;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::buffer::SpanBuffer;
use crate::error::TracerError;
use crate::ratelimit::{RateLimit, WARN_EVERY};

/// Clients served at once; one more is closed at once.
pub const MAX_CLIENTS: usize = 16;
/// How long the shutdown waits for a client's frame that has begun to arrive.
pub const DRAIN: Duration = Duration::from_secs(1);
/// Smallest read from a client.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one client before the others get their turn.
const READ_TURN: usize = 1024 * 1024;

/// The receiving side's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub max_clients: usize,
    pub drain: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_clients: MAX_CLIENTS,
            drain: DRAIN,
        }
    }
}

/// Listens at `path`: creates its directory if missing, replaces a stale socket file, and
/// makes the socket root-only (every husk process in the guest runs as root).
pub fn bind(path: &Path) -> Result<UnixListener, TracerError> {
    let err = |source| TracerError::Listen {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!("removed a stale {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// What a turn of reading a client found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Everything it has sent so far is read.
    Idle,
    /// Its turn ended with more to read.
    More,
    /// It closed the connection after a whole frame.
    Closed,
}

/// One connected client and the part of a frame read so far.
#[derive(Debug)]
struct Client {
    id: u64,
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    /// The length in the header of the frame being read, once its 4 bytes are in.
    fn frame_len(&self) -> Option<usize> {
        let header: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(header) as usize)
    }

    /// Reads what the client has sent, up to a turn's worth, pushing each complete frame.
    fn pump(&mut self, buffer: &SpanBuffer) -> Result<Status, TracerError> {
        let mut turn = READ_TURN;
        loop {
            if turn == 0 {
                return Ok(Status::More);
            }
            // The rest of the current frame (its header was checked against the limit when it
            // came in), or a chunk.
            let rest = self.frame_len().map_or(0, |len| {
                (4 + len.min(MAX_TRACE_FRAME)).saturating_sub(self.buf.len())
            });
            let old = self.buf.len();
            self.buf.resize(old + rest.max(READ_CHUNK), 0);
            let read = (&self.stream).read(&mut self.buf[old..]);
            self.buf.truncate(old + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) if old == 0 => return Ok(Status::Closed),
                Ok(0) => {
                    let want = self.frame_len().map_or(4, |len| 4 + len);
                    return Err(FrameError::Truncated { got: old, want }.into());
                }
                Ok(n) => {
                    turn = turn.saturating_sub(n);
                    self.frames(buffer)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Status::Idle),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TracerError::Client(e)),
            }
        }
    }

    /// Decodes and pushes every complete frame read so far; keeps the partial one.
    fn frames(&mut self, buffer: &SpanBuffer) -> Result<(), TracerError> {
        let mut at = 0;
        let result = loop {
            let Some(header) = self.buf.get(at..at + 4) else {
                break Ok(());
            };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len > MAX_TRACE_FRAME {
                break Err(FrameError::TooLarge {
                    len,
                    max: MAX_TRACE_FRAME,
                }
                .into());
            }
            let Some(body) = self.buf.get(at + 4..at + 4 + len) else {
                break Ok(());
            };
            match husk_telemetry::decode(body) {
                Ok(request) => buffer.push(request),
                Err(e) => break Err(e.into()),
            }
            at += 4 + len;
        };
        self.buf.drain(..at);
        // A big frame's room is given back once it is read.
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
            self.buf = Vec::new();
        }
        result
    }

    /// Whether a frame has begun to arrive and is not complete.
    fn partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// The receiving side's state between polls.
#[derive(Debug)]
struct Receiver<'a> {
    buffer: &'a SpanBuffer,
    settings: Settings,
    clients: Vec<Client>,
    next_id: u64,
    refused: RateLimit,
}

impl Receiver<'_> {
    /// Accepts every pending connection, closing those over the limit.
    fn accept(&mut self, listener: &UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors or memory: give the clients a moment to end.
                    tracing::warn!("accepting a client: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            };
            let max = self.settings.max_clients;
            if self.clients.len() >= max {
                drop(stream);
                if let Some(n) = self.refused.add(1, Instant::now()) {
                    tracing::warn!("refused {n} clients: {max} are connected, the most served");
                }
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("a new client: {e}");
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            tracing::debug!(client = id, "client connected");
            self.clients.push(Client {
                id,
                stream,
                buf: Vec::new(),
            });
        }
    }

    /// Reads client `i`; whether it stays connected. `draining`: a client whose sent frames
    /// are all read is done.
    fn serve(&mut self, i: usize, draining: bool) -> bool {
        let client = &mut self.clients[i];
        match client.pump(self.buffer) {
            Ok(Status::Idle) => !draining || client.partial(),
            Ok(Status::More) => true,
            Ok(Status::Closed) => {
                tracing::debug!(client = client.id, "client closed");
                false
            }
            Err(e) => {
                tracing::warn!(client = client.id, "{e}; closing that client");
                false
            }
        }
    }
}

/// Waits for `stop`, the listener or clients to be ready, or `timeout`; which are (in that
/// order: stop, listener, then each client).
fn wait(
    stop: Option<&UnixStream>,
    listener: Option<&UnixListener>,
    clients: &[Client],
    timeout: Option<Duration>,
) -> (bool, bool, Vec<bool>) {
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(clients.len() + 2);
    let events = PollFlags::POLLIN;
    fds.extend(stop.map(|s| PollFd::new(s.as_fd(), events)));
    fds.extend(listener.map(|l| PollFd::new(l.as_fd(), events)));
    fds.extend(
        clients
            .iter()
            .map(|c| PollFd::new(c.stream.as_fd(), events)),
    );
    let timeout = timeout.map_or(PollTimeout::NONE, |t| {
        PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX)
    });
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => {
            tracing::warn!("waiting for clients: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut ready = fds
        .iter()
        .map(|f| f.revents().is_some_and(|r| !r.is_empty()));
    let stop_ready = stop.is_some() && ready.next().unwrap_or(false);
    let listener_ready = listener.is_some() && ready.next().unwrap_or(false);
    (stop_ready, listener_ready, ready.collect())
}

/// Serves clients until `stop` becomes readable (a byte, or its other end closed), then
/// drains: accepts the connections already made, removes the socket file, and reads what every
/// client has sent until each is read to a frame boundary or closed, at most
/// [`Settings::drain`].
pub fn serve(
    listener: UnixListener,
    path: &Path,
    stop: &UnixStream,
    buffer: &SpanBuffer,
    settings: Settings,
) {
    let mut r = Receiver {
        buffer,
        settings,
        clients: Vec::new(),
        next_id: 1,
        refused: RateLimit::new(WARN_EVERY),
    };
    loop {
        let (stopping, accept, ready) = wait(Some(stop), Some(&listener), &r.clients, None);
        if accept {
            r.accept(&listener);
        }
        for i in (0..ready.len()).rev() {
            if ready[i] && !r.serve(i, false) {
                r.clients.swap_remove(i);
            }
        }
        if stopping {
            break;
        }
    }

    let deadline = Instant::now() + settings.drain;
    r.accept(&listener);
    drop(listener);
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!("removing {}: {e}", path.display());
    }
    let mut ready = vec![true; r.clients.len()];
    loop {
        for i in (0..r.clients.len()).rev() {
            if ready[i] && !r.serve(i, true) {
                r.clients.swap_remove(i);
            }
        }
        if r.clients.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                "{} clients were still sending at shutdown; their partial frames are lost",
                r.clients.len()
            );
            return;
        }
        ready = wait(None, None, &r.clients, Some(left)).2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::tests::{names, request};
    use crate::buffer::Limits;
    use husk_protocols::trace_wire::write_trace_frame;
    use std::io::Write;
    use std::sync::Arc;

    /// A listener on a fresh socket, served on a thread; the stop stream and the buffer.
    struct Served {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        stop: UnixStream,
        buffer: Arc<SpanBuffer>,
        thread: std::thread::JoinHandle<()>,
    }

    fn served(settings: Settings) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        // A missing directory is made, and a stale socket file replaced.
        let path = dir.path().join("run/husk/tracer.sock");
        drop(bind(&path).expect("first bind"));
        assert!(path.exists());
        let listener = bind(&path).expect("bind over a stale socket");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (stop, theirs) = UnixStream::pair().expect("pair");
        let buffer = Arc::new(SpanBuffer::new(Limits::default()));
        let thread = {
            let (path, buffer) = (path.clone(), buffer.clone());
            std::thread::spawn(move || serve(listener, &path, &theirs, &buffer, settings))
        };
        Served {
            _dir: dir,
            path,
            stop,
            buffer,
            thread,
        }
    }

    fn frame(request: &husk_telemetry::ExportTraceServiceRequest) -> Vec<u8> {
        let mut out = Vec::new();
        write_trace_frame(&mut out, &husk_telemetry::encode(request)).expect("frame");
        out
    }

    /// Whether the server closed `conn` (end of stream, or a reset), waiting at most `WAIT`.
    fn closed_by_server(conn: &mut UnixStream) -> bool {
        conn.set_read_timeout(Some(crate::forwarder::tests::WAIT))
            .expect("timeout");
        match conn.read(&mut [0u8; 1]) {
            Ok(0) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    #[test]
    fn frames_in_pieces_and_in_bulk_arrive_whole_and_in_order() {
        let s = served(Settings::default());
        let mut c = UnixStream::connect(&s.path).expect("connect");
        let mut bytes = frame(&request("a", 2));
        bytes.extend(frame(&request("b", 1)));
        // A frame split inside its header, then the rest.
        c.write_all(&bytes[..2]).expect("write");
        c.write_all(&bytes[2..]).expect("write");
        let got = s.buffer.next_batch(MAX_TRACE_FRAME).expect("batch");
        let mut all = names(&got.request);
        while all.len() < 3 {
            all.extend(names(
                &s.buffer.next_batch(MAX_TRACE_FRAME).expect("batch").request,
            ));
        }
        assert_eq!(all, ["a0", "a1", "b0"]);
        drop(c);
        (&s.stop).write_all(&[1]).expect("stop");
        s.thread.join().expect("listener");
        assert!(!s.path.exists(), "the socket file is removed at shutdown");
    }

    #[test]
    fn a_bad_client_is_closed_and_the_others_are_served() {
        let s = served(Settings::default());
        let mut good = UnixStream::connect(&s.path).expect("connect");
        let mut not_otlp = UnixStream::connect(&s.path).expect("connect");
        // Field 12 as a 64-bit value, with 2 of its 8 bytes.
        not_otlp
            .write_all(&[0, 0, 0, 3, 0x61, 1, 2])
            .expect("write");
        assert!(closed_by_server(&mut not_otlp));
        let mut oversized = UnixStream::connect(&s.path).expect("connect");
        oversized.write_all(&u32::MAX.to_be_bytes()).expect("write");
        assert!(closed_by_server(&mut oversized));
        let mut just_over = UnixStream::connect(&s.path).expect("connect");
        let len = (MAX_TRACE_FRAME as u32 + 1).to_be_bytes();
        just_over.write_all(&len).expect("write");
        assert!(closed_by_server(&mut just_over));

        good.write_all(&frame(&request("ok", 1))).expect("write");
        let got = s.buffer.next_batch(MAX_TRACE_FRAME).expect("batch");
        assert_eq!(names(&got.request), ["ok0"]);
        (&s.stop).write_all(&[1]).expect("stop");
        s.thread.join().expect("listener");
    }

    #[test]
    fn clients_over_the_limit_are_closed_at_once() {
        let s = served(Settings {
            max_clients: 1,
            drain: DRAIN,
        });
        let mut first = UnixStream::connect(&s.path).expect("connect");
        first
            .write_all(&frame(&request("first", 1)))
            .expect("write");
        // Once its frame is in, the first client is surely accepted.
        s.buffer.next_batch(MAX_TRACE_FRAME).expect("batch");
        let mut second = UnixStream::connect(&s.path).expect("connect");
        assert!(closed_by_server(&mut second));
        drop(first);
        (&s.stop).write_all(&[1]).expect("stop");
        s.thread.join().expect("listener");
    }

    #[test]
    fn the_shutdown_reads_what_clients_sent_and_waits_for_a_frame_in_progress() {
        // A drain long enough that only the frame's completion ends it.
        let s = served(Settings {
            max_clients: MAX_CLIENTS,
            drain: Duration::from_secs(600),
        });
        // Sent, and perhaps not yet read, when the shutdown begins.
        let mut sent = UnixStream::connect(&s.path).expect("connect");
        sent.write_all(&frame(&request("sent", 2))).expect("write");
        // Half a frame: the shutdown waits for the rest.
        let mut slow = UnixStream::connect(&s.path).expect("connect");
        let slow_frame = frame(&request("slow", 1));
        slow.write_all(&slow_frame[..5]).expect("write");
        (&s.stop).write_all(&[1]).expect("stop");
        let mut seen = Vec::new();
        while !seen.iter().any(|n: &String| n.starts_with("sent")) {
            seen.extend(names(
                &s.buffer.next_batch(MAX_TRACE_FRAME).expect("batch").request,
            ));
        }
        slow.write_all(&slow_frame[5..]).expect("the rest");
        while !seen.iter().any(|n| n.starts_with("slow")) {
            seen.extend(names(
                &s.buffer.next_batch(MAX_TRACE_FRAME).expect("batch").request,
            ));
        }
        s.thread
            .join()
            .expect("the listener ends with the clients still connected");
        assert_eq!(seen, ["sent0", "sent1", "slow0"]);
        drop((sent, slow));
    }
}
