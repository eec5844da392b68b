//! The muxer: routes guest vsock packets to host Unix streams and back.
//!
//! - Host-initiated: a client connects to `uds_path` and sends `CONNECT <port>\n` (keyword in
//!   any case, at most [`MAX_CONNECT_LINE`] bytes). The muxer picks a free local port in
//!   `[2^30, 2^31)`, sends REQUEST to guest `port`, answers `OK <local port>\n` once the guest
//!   sends RESPONSE, and closes the client if the guest sends RST.
//! - Guest-initiated: a REQUEST to port P connects to `<uds_path>_<P>`; if nothing listens
//!   there the guest gets RST.
//!
//! All host sockets are non-blocking and watched by one epoll set ([`Muxer::as_raw_fd`]) that
//! the transport's event loop waits on. Connections are bounded by [`MAX_CONNECTIONS`] and the
//! replies owed for unknown connections by [`MAX_RST_QUEUE`] (tx processing pauses when it is
//! full), so a guest or a host client cannot make the muxer grow without bound.
//!
//! Must never block, never trust a header and never touch guest memory or queues.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::super::csm::{ConnState, Connection, CONN_TX_BUF_SIZE};
use super::super::packet::{Header, Packet, OP_REQUEST, OP_RST, TYPE_STREAM};
use super::super::HOST_CID;

/// Most connections (established, in handshake, or still sending their `CONNECT` line).
pub const MAX_CONNECTIONS: usize = 1023;
/// Longest `CONNECT <port>\n` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// Most RSTs owed to the guest for packets on unknown connections.
pub const MAX_RST_QUEUE: usize = 1024;
/// First host-side port handed to host-initiated connections.
const LOCAL_PORT_FIRST: u32 = 1 << 30;
/// One past the last.
const LOCAL_PORT_END: u32 = 1 << 31;
/// epoll token of the listener (others are the socket's fd).
const LISTENER_TOKEN: u64 = u64::MAX;
/// Events taken per epoll wait.
const EVENT_BATCH: usize = 64;

/// Why the muxer could not start.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("vsock muxer: cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vsock muxer: {what}: {source}")]
    Epoll {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A connection's identity: (host-side port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

/// A host client that has not sent its whole `CONNECT` line yet.
#[derive(Debug)]
struct PendingLocal {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The hybrid vsock muxer for one guest.
#[derive(Debug)]
pub struct Muxer {
    uds_path: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    epoll: Epoll,
    pending_locals: HashMap<RawFd, PendingLocal>,
    conns: HashMap<ConnKey, Connection>,
    /// Host socket fd → connection.
    fd_keys: HashMap<RawFd, ConnKey>,
    /// What each connection's socket is registered for (absent: not registered).
    registered: HashMap<RawFd, EventSet>,
    /// Connections with something for the guest, each at most once.
    rxq: VecDeque<ConnKey>,
    /// RSTs owed for packets on unknown connections.
    rst_queue: VecDeque<Header>,
    next_local_port: u32,
    /// [`MAX_CONNECTIONS`] (smaller in tests).
    max_connections: usize,
}

impl Muxer {
    /// Listens on `uds_path` (a stale socket file there is replaced).
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Self, MuxerError> {
        let listen_err = |source| MuxerError::Listen {
            path: uds_path.to_owned(),
            source,
        };
        // A stale socket from an earlier run is replaced; anything else there is an error.
        if std::fs::symlink_metadata(uds_path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(uds_path).map_err(listen_err)?;
        }
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(|source| MuxerError::Epoll {
            what: "creating the epoll set",
            source,
        })?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(|source| MuxerError::Epoll {
                what: "watching the listener",
                source,
            })?;
        Ok(Self {
            uds_path: uds_path.to_owned(),
            guest_cid,
            listener,
            epoll,
            pending_locals: HashMap::new(),
            conns: HashMap::new(),
            fd_keys: HashMap::new(),
            registered: HashMap::new(),
            rxq: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: LOCAL_PORT_FIRST,
            max_connections: MAX_CONNECTIONS,
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Live connections, handshakes included.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.pending_locals.len()
    }

    /// Whether there is a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rxq.is_empty()
    }

    /// Whether the tx queue may be processed (replies it may cause have room).
    pub fn can_accept_tx(&self) -> bool {
        self.rst_queue.len() < MAX_RST_QUEUE
    }

    /// Drops every connection (device reset); the listener stays.
    pub fn reset(&mut self) {
        for fd in self.registered.keys() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                *fd,
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
        for fd in self.pending_locals.keys() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                *fd,
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
        self.registered.clear();
        self.pending_locals.clear();
        self.conns.clear();
        self.fd_keys.clear();
        self.rxq.clear();
        self.rst_queue.clear();
    }

    /// Handles whatever the host sockets have ready (never blocks).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("vsock muxer: epoll wait failed: {e}");
                }
                return;
            }
        };
        for ev in events.iter().take(n) {
            let token = ev.data();
            if token == LISTENER_TOKEN {
                self.accept_all();
                continue;
            }
            let Ok(fd) = RawFd::try_from(token) else {
                continue;
            };
            if self.pending_locals.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(key) = self.fd_keys.get(&fd).copied() {
                let set = ev.event_set();
                if let Some(conn) = self.conns.get_mut(&key) {
                    if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                        conn.notify_readable();
                    }
                    if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
                        conn.notify_writable();
                    }
                }
                self.update(key);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connection_count() >= self.max_connections {
                        tracing::warn!(
                            "vsock muxer: {} connections, refusing a host client",
                            self.max_connections
                        );
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let ev = EpollEvent::new(EventSet::IN, fd as u64);
                    if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
                        tracing::warn!("vsock muxer: cannot watch a host client: {e}");
                        continue;
                    }
                    self.pending_locals.insert(
                        fd,
                        PendingLocal {
                            stream,
                            line: Vec::with_capacity(MAX_CONNECT_LINE),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock muxer: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    /// Reads a host client's `CONNECT` line byte by byte (what follows it is stream data).
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(pending) = self.pending_locals.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match pending.stream.read(&mut byte) {
                Ok(0) => break Err("closed before the end of the line"),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&pending.line),
                Ok(_) if pending.line.len() + 1 >= MAX_CONNECT_LINE => break Err("line too long"),
                Ok(_) => pending.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break Err("read failed"),
            }
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd,
            EpollEvent::new(EventSet::empty(), 0),
        );
        let Some(PendingLocal { stream, line }) = self.pending_locals.remove(&fd) else {
            return;
        };
        match done {
            Ok(peer_port) => {
                let Some(local_port) = self.alloc_local_port(peer_port) else {
                    tracing::warn!("vsock muxer: no free local port");
                    return;
                };
                let key = ConnKey {
                    local_port,
                    peer_port,
                };
                tracing::debug!(local_port, peer_port, "vsock muxer: host CONNECT");
                let conn = Connection::new_local(stream, self.guest_cid, local_port, peer_port);
                self.fd_keys.insert(fd, key);
                self.conns.insert(key, conn);
                self.update(key);
            }
            Err(why) => {
                tracing::debug!(
                    line = %String::from_utf8_lossy(&line),
                    "vsock muxer: dropping a host client: {why}"
                );
            }
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.max_connections {
            let port = self.next_local_port;
            self.next_local_port = if port + 1 >= LOCAL_PORT_END {
                LOCAL_PORT_FIRST
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Handles a packet the guest put on the tx queue.
    pub fn send_pkt(&mut self, pkt: Packet) {
        let hdr = pkt.hdr;
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "vsock muxer: dropping a packet with foreign addresses"
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.queue_rst(&hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.send_pkt(&pkt);
            self.update(key);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(&hdr),
            OP_RST => {}
            _ => self.queue_rst(&hdr),
        }
    }

    fn guest_connect(&mut self, hdr: &Header) {
        if self.connection_count() >= self.max_connections {
            tracing::debug!(
                "vsock muxer: {} connections, refusing the guest",
                self.max_connections
            );
            self.queue_rst(hdr);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(
                    port = hdr.dst_port,
                    "vsock muxer: guest connect to {}: {e}",
                    Path::new(&path).display()
                );
                self.queue_rst(hdr);
                return;
            }
        };
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        tracing::debug!(
            port = hdr.dst_port,
            peer = hdr.src_port,
            "vsock muxer: guest connected"
        );
        let conn = Connection::new_peer(stream, self.guest_cid, hdr);
        self.fd_keys.insert(conn.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.update(key);
    }

    fn queue_rst(&mut self, to: &Header) {
        if self.rst_queue.len() >= MAX_RST_QUEUE {
            return;
        }
        self.rst_queue.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: CONN_TX_BUF_SIZE,
            fwd_cnt: 0,
        });
    }

    /// The next packet for the guest, with at most `max_data` payload bytes.
    pub fn recv_pkt(&mut self, max_data: usize) -> Option<Packet> {
        if let Some(hdr) = self.rst_queue.pop_front() {
            return Some(Packet {
                hdr,
                data: Vec::new(),
            });
        }
        while let Some(key) = self.rxq.pop_front() {
            let pkt = self
                .conns
                .get_mut(&key)
                .and_then(|conn| conn.recv_pkt(max_data));
            self.update(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Brings a connection's epoll registration and rx queue membership up to date, and
    /// drops it once it is over.
    fn update(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.as_raw_fd();
        if conn.is_done() {
            self.unregister(fd);
            self.fd_keys.remove(&fd);
            self.conns.remove(&key);
            self.rxq.retain(|k| *k != key);
            tracing::debug!(
                local = key.local_port,
                peer = key.peer_port,
                "vsock muxer: connection removed"
            );
            return;
        }
        if conn.has_pending_rx() && !self.rxq.contains(&key) {
            self.rxq.push_back(key);
        }
        let want = if conn.state() == ConnState::Closed {
            EventSet::empty()
        } else {
            conn.interest()
        };
        let have = self.registered.get(&fd).copied();
        let result = match (have, want.is_empty()) {
            (None, true) => Ok(()),
            (None, false) => {
                self.registered.insert(fd, want);
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(want, fd as u64))
            }
            (Some(_), true) => {
                self.unregister(fd);
                Ok(())
            }
            (Some(h), false) if h == want => Ok(()),
            (Some(_), false) => {
                self.registered.insert(fd, want);
                self.epoll.ctl(
                    ControlOperation::Modify,
                    fd,
                    EpollEvent::new(want, fd as u64),
                )
            }
        };
        if let Err(e) = result {
            tracing::warn!(
                local = key.local_port,
                "vsock muxer: cannot watch a host socket: {e}"
            );
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.reset();
            }
            if !self.rxq.contains(&key) {
                self.rxq.push_back(key);
            }
        }
    }

    fn unregister(&mut self, fd: RawFd) {
        if self.registered.remove(&fd).is_some() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                fd,
                EpollEvent::new(EventSet::empty(), 0),
            );
        }
    }
}

/// Connects to a Unix stream socket without blocking: a listener whose backlog is full is an
/// error (`EAGAIN`), not a wait that would stall every connection of the device.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unusable socket path",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: a plain syscall with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created here and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The family, the path and its terminating NUL (the path is shorter than sun_path).
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes that outlives the call,
    // and `fd` is an open socket.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (keyword in any case, the newline already stripped). Public for the
/// fuzz target: the line comes from any host process that can reach the socket.
pub fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not text")?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(kw), Some(port), None) if kw.eq_ignore_ascii_case("connect") => {
            port.parse().map_err(|_| "bad port")
        }
        _ => Err("not a CONNECT line"),
    }
}

impl AsRawFd for Muxer {
    /// The epoll set of all host sockets: readable when [`Muxer::process_events`] has work.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::Shutdown;
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, Instant};

    use super::super::super::packet::{
        OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RESPONSE, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV,
        SHUTDOWN_SEND,
    };
    use super::*;

    const CID: u64 = 3;
    const TIMEOUT: Duration = Duration::from_secs(5);

    struct Fixture {
        _dir: tempfile::TempDir,
        uds: PathBuf,
        mux: Muxer,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mux = Muxer::new(&uds, CID).unwrap();
        Fixture {
            _dir: dir,
            uds,
            mux,
        }
    }

    /// Waits (poll, with a timeout) until `fd` is readable.
    fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap();
        // SAFETY: one valid pollfd, its count, a finite timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        r > 0
    }

    impl Fixture {
        /// Handles host events until `done` holds for the packets the guest got so far.
        fn pump_until(
            &mut self,
            max_data: usize,
            mut done: impl FnMut(&[Packet]) -> bool,
        ) -> Vec<Packet> {
            let deadline = Instant::now() + TIMEOUT;
            let mut got = Vec::new();
            loop {
                while let Some(p) = self.mux.recv_pkt(max_data) {
                    got.push(p);
                }
                if done(&got) {
                    return got;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "timed out; guest got {:?}", ops(&got));
                if wait_readable(self.mux.as_raw_fd(), left) {
                    self.mux.process_events();
                }
            }
        }

        fn guest(&mut self, op: u16, src: u32, dst: u32, flags: u32, fwd: u32, data: &[u8]) {
            self.mux.send_pkt(Packet {
                hdr: Header {
                    src_cid: CID,
                    dst_cid: HOST_CID,
                    src_port: src,
                    dst_port: dst,
                    len: data.len() as u32,
                    type_: TYPE_STREAM,
                    op,
                    flags,
                    buf_alloc: 64 * 1024,
                    fwd_cnt: fwd,
                },
                data: data.to_vec(),
            });
        }

        /// A host client that sent `CONNECT port` and whose REQUEST reached the guest.
        fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
            let mut c = UnixStream::connect(&self.uds).unwrap();
            c.write_all(format!("connect {port}\n").as_bytes()).unwrap();
            let got = self.pump_until(0, |p| !p.is_empty());
            assert_eq!(ops(&got), [OP_REQUEST]);
            let req = got[0].hdr;
            assert_eq!(
                (req.dst_port, req.dst_cid, req.src_cid),
                (port, CID, HOST_CID)
            );
            assert!(req.src_port >= LOCAL_PORT_FIRST);
            (c, req)
        }
    }

    fn ops(p: &[Packet]) -> Vec<u16> {
        p.iter().map(|p| p.hdr.op).collect()
    }

    fn read_line(s: &mut UnixStream) -> String {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    /// EOF, or a reset when the muxer dropped the client with bytes unread.
    fn assert_closed(s: &mut UnixStream) {
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }

    #[test]
    fn connect_to_a_listening_guest_port_gets_ok() {
        let mut f = fixture();
        let (mut c, req) = f.host_connect(1024);
        f.guest(OP_RESPONSE, 1024, req.src_port, 0, 0, &[]);
        assert_eq!(read_line(&mut c), format!("OK {}", req.src_port));
        assert_eq!(req.src_port, LOCAL_PORT_FIRST);
        // The next client gets the next port.
        let (_c2, req2) = f.host_connect(1024);
        assert_eq!(req2.src_port, LOCAL_PORT_FIRST + 1);
    }

    #[test]
    fn connect_to_nothing_is_closed() {
        let mut f = fixture();
        let (mut c, req) = f.host_connect(4242);
        f.guest(OP_RST, 4242, req.src_port, 0, 0, &[]);
        assert_closed(&mut c);
        assert_eq!(f.mux.connection_count(), 0);
    }

    #[test]
    fn malformed_or_long_connect_lines_are_closed() {
        let mut f = fixture();
        for line in [
            &b"HELLO 5\n"[..],
            b"CONNECT\n",
            b"CONNECT x\n",
            b"CONNECT 1 2\n",
            b"CONNECT 99999999999\n",
            &[b'C'; 100],
        ] {
            let mut c = UnixStream::connect(&f.uds).unwrap();
            c.write_all(line).unwrap();
            let deadline = Instant::now() + TIMEOUT;
            // Serve the muxer until the client sees something (its close).
            while !wait_readable(c.as_raw_fd(), Duration::ZERO) {
                if wait_readable(f.mux.as_raw_fd(), Duration::from_millis(50)) {
                    f.mux.process_events();
                }
                assert!(Instant::now() < deadline, "{line:?} was not refused");
            }
            assert_closed(&mut c);
            assert_eq!(f.mux.connection_count(), 0);
            assert!(!f.mux.has_pending_rx(), "{line:?} reached the guest");
        }
        // Keyword in any case.
        let mut c = UnixStream::connect(&f.uds).unwrap();
        c.write_all(b"CoNnEcT 77\n").unwrap();
        let got = f.pump_until(0, |p| !p.is_empty());
        assert_eq!(got[0].hdr.dst_port, 77);
    }

    #[test]
    fn guest_request_connects_to_the_port_listener_or_gets_rst() {
        let mut f = fixture();
        // Nothing at <uds>_52: RST.
        f.guest(OP_REQUEST, 5000, 52, 0, 0, &[]);
        let got = f.pump_until(0, |p| !p.is_empty());
        assert_eq!(ops(&got), [OP_RST]);
        assert_eq!((got[0].hdr.src_port, got[0].hdr.dst_port), (52, 5000));
        // A listener there: RESPONSE, then data both ways.
        let mut path = f.uds.clone().into_os_string();
        path.push("_52");
        let l = UnixListener::bind(&path).unwrap();
        f.guest(OP_REQUEST, 5001, 52, 0, 0, &[]);
        let got = f.pump_until(0, |p| !p.is_empty());
        assert_eq!(ops(&got), [OP_RESPONSE]);
        let (mut h, _) = l.accept().unwrap();
        f.guest(OP_RW, 5001, 52, 0, 0, b"from guest");
        let mut buf = [0u8; 10];
        h.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"from guest");
        h.write_all(b"from host").unwrap();
        let got = f.pump_until(4096, |p| p.iter().map(|p| p.data.len()).sum::<usize>() == 9);
        assert_eq!(got[0].data, b"from host");
        // Packets for unknown connections get RST; RSTs for them nothing.
        f.guest(OP_RW, 6000, 52, 0, 0, b"?");
        f.guest(OP_RST, 6001, 52, 0, 0, &[]);
        assert_eq!(ops(&f.pump_until(0, |p| !p.is_empty())), [OP_RST]);
        assert!(!f.mux.has_pending_rx());
    }

    #[test]
    fn host_half_close_reaches_the_guest_as_shutdown_send_only() {
        let mut f = fixture();
        let (mut c, req) = f.host_connect(1024);
        let lp = req.src_port;
        f.guest(OP_RESPONSE, 1024, lp, 0, 0, &[]);
        assert_eq!(read_line(&mut c), format!("OK {lp}"));
        c.write_all(b"request").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let got = f.pump_until(4096, |p| p.iter().any(|p| p.hdr.op == OP_SHUTDOWN));
        assert_eq!(ops(&got), [OP_RW, OP_SHUTDOWN]);
        assert_eq!(got[0].data, b"request");
        assert_eq!(
            got[1].hdr.flags, SHUTDOWN_SEND,
            "only SEND: the host still reads"
        );
        assert_eq!(f.mux.connection_count(), 1);
        // The guest answers after the host's half close, then closes.
        f.guest(OP_RW, 1024, lp, 0, 7, b"response");
        let mut buf = [0u8; 8];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"response");
        f.guest(OP_SHUTDOWN, 1024, lp, SHUTDOWN_SEND | SHUTDOWN_RCV, 7, &[]);
        assert_eq!(ops(&f.pump_until(0, |p| !p.is_empty())), [OP_RST]);
        assert_closed(&mut c);
        assert_eq!(f.mux.connection_count(), 0);
    }

    #[test]
    fn guest_shutdown_send_shuts_the_host_write_side() {
        let mut f = fixture();
        let (mut c, req) = f.host_connect(1024);
        let lp = req.src_port;
        f.guest(OP_RESPONSE, 1024, lp, 0, 0, &[]);
        assert_eq!(read_line(&mut c), format!("OK {lp}"));
        f.guest(OP_RW, 1024, lp, 0, 0, b"all");
        f.guest(OP_SHUTDOWN, 1024, lp, SHUTDOWN_SEND, 0, &[]);
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"all");
        // The host can still send.
        c.write_all(b"more").unwrap();
        let p = f.pump_until(4096, |p| !p.is_empty());
        assert_eq!(p[0].data, b"more");
    }

    #[test]
    fn a_slow_guest_stops_the_host_writer() {
        let mut f = fixture();
        let (mut c, req) = f.host_connect(1024);
        let lp = req.src_port;
        // The guest announces 64 KiB and never returns credit.
        f.guest(OP_RESPONSE, 1024, lp, 0, 0, &[]);
        assert_eq!(read_line(&mut c), format!("OK {lp}"));
        c.set_nonblocking(true).unwrap();
        let chunk = vec![9u8; 16 * 1024];
        let mut written = 0usize;
        let mut received = 0usize;
        let deadline = Instant::now() + TIMEOUT;
        // Write until the host socket refuses; deliver to the guest all the while.
        loop {
            match c.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket is full: whatever the muxer can still forward, it does; once
                    // the guest's credit is used up nothing moves any more.
                    f.mux.process_events();
                    let mut more = 0;
                    while let Some(p) = f.mux.recv_pkt(4096) {
                        if p.hdr.op == OP_RW {
                            more += p.data.len();
                        }
                    }
                    received += more;
                    if more == 0 {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
            assert!(
                Instant::now() < deadline,
                "the host writer was never stopped"
            );
        }
        assert_eq!(received, 64 * 1024, "exactly the guest's credit was sent");
        assert!(
            written > received,
            "the rest waits in the host socket, not in the muxer"
        );
        assert!(f.mux.conns.values().all(|c| c.tx_buffered() == 0));
        // Credit returns: data flows again, in order.
        f.guest(OP_CREDIT_UPDATE, 1024, lp, 0, 64 * 1024, &[]);
        let got = f.pump_until(4096, |p| !p.is_empty());
        assert!(got
            .iter()
            .all(|p| p.hdr.op == OP_RW || p.hdr.op == OP_CREDIT_REQUEST));
        assert!(got[0].data.iter().all(|&b| b == 9));
    }

    #[test]
    fn data_both_ways_in_order() {
        let mut f = fixture();
        let (mut c, req) = f.host_connect(1024);
        let lp = req.src_port;
        f.guest(OP_RESPONSE, 1024, lp, 0, 0, &[]);
        assert_eq!(read_line(&mut c), format!("OK {lp}"));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut c = c.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || c.write_all(&data).unwrap())
        };
        // The guest returns credit as it consumes, like Linux does.
        let mut got: Vec<u8> = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while got.len() < data.len() {
            f.mux.process_events();
            let mut progressed = false;
            while let Some(p) = f.mux.recv_pkt(4096) {
                if p.hdr.op == OP_RW {
                    got.extend_from_slice(&p.data);
                    progressed = true;
                }
            }
            if progressed {
                f.guest(OP_CREDIT_UPDATE, 1024, lp, 0, got.len() as u32, &[]);
            } else {
                wait_readable(f.mux.as_raw_fd(), Duration::from_millis(100));
            }
            assert!(Instant::now() < deadline);
        }
        writer.join().unwrap();
        assert_eq!(got, data);
        // Guest → host, in order, in packets.
        for chunk in data.chunks(4096) {
            f.guest(OP_RW, 1024, lp, 0, got.len() as u32, chunk);
            f.mux.process_events();
        }
        let mut back = vec![0u8; data.len()];
        c.set_nonblocking(false).unwrap();
        let reader = {
            let mut c = c.try_clone().unwrap();
            std::thread::spawn(move || {
                c.read_exact(&mut back).unwrap();
                back
            })
        };
        // Flush what the host socket could not take at once.
        let deadline = Instant::now() + TIMEOUT;
        while f.mux.conns.values().any(|c| c.tx_buffered() > 0) {
            wait_readable(f.mux.as_raw_fd(), Duration::from_millis(100));
            f.mux.process_events();
            assert!(Instant::now() < deadline);
        }
        assert_eq!(reader.join().unwrap(), data);
    }

    #[test]
    fn connections_are_bounded() {
        const MAX: usize = 8;
        let mut f = fixture();
        f.mux.max_connections = MAX;
        let mut clients = Vec::new();
        for _ in 0..MAX {
            clients.push(UnixStream::connect(&f.uds).unwrap());
        }
        let deadline = Instant::now() + TIMEOUT;
        while f.mux.connection_count() < MAX {
            f.mux.process_events();
            assert!(Instant::now() < deadline);
        }
        let mut extra = UnixStream::connect(&f.uds).unwrap();
        while !wait_readable(extra.as_raw_fd(), Duration::ZERO) {
            if wait_readable(f.mux.as_raw_fd(), Duration::from_millis(50)) {
                f.mux.process_events();
            }
            assert!(Instant::now() < deadline);
        }
        assert_closed(&mut extra);
        assert_eq!(f.mux.connection_count(), MAX);
        f.guest(OP_REQUEST, 1, 2, 0, 0, &[]);
        assert_eq!(ops(&f.pump_until(0, |p| !p.is_empty())), [OP_RST]);
    }

    #[test]
    fn a_host_listener_with_a_full_backlog_is_refused_without_blocking() {
        let mut f = fixture();
        let mut path = f.uds.clone().into_os_string();
        path.push("_53");
        let _l = UnixListener::bind(&path).unwrap();
        // Fill the (never accepted) backlog.
        let mut queued = Vec::new();
        loop {
            match connect_nonblocking(Path::new(&path)) {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(queued.len() < 10_000);
        }
        f.guest(OP_REQUEST, 7000, 53, 0, 0, &[]);
        assert_eq!(ops(&f.pump_until(0, |p| !p.is_empty())), [OP_RST]);
        let long = Path::new("/").join("x".repeat(200));
        assert!(connect_nonblocking(&long).is_err());
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(
            Muxer::new(&file, CID),
            Err(MuxerError::Listen { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        let sock = dir.path().join("v.sock");
        let stale = UnixListener::bind(&sock).unwrap();
        drop(stale);
        let m = Muxer::new(&sock, CID).unwrap();
        drop(m);
        assert!(!sock.exists());
    }

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Ok(52));
        assert_eq!(parse_connect(b"connect 4294967295"), Ok(u32::MAX));
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"CONNECT").is_err());
        assert!(parse_connect(b"\xff 1").is_err());
    }
}
