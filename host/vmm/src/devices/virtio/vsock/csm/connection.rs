//! One vsock stream connection between a guest port and a host Unix stream.
//!
//! Credit flow control (virtio 1.2 §5.10.6.3): each side announces `buf_alloc` (its receive
//! buffer) and `fwd_cnt` (bytes it has consumed) in every packet; a sender may have at most
//! `peer_buf_alloc - (sent - peer_fwd_cnt)` bytes in flight. Here:
//! - guest → host: data the host socket cannot take right now waits in `tx_buf`, which never
//!   grows past the [`CONN_TX_BUF_SIZE`] we announce; a guest that ignores credit is reset.
//! - host → guest: the host socket is read only when the guest has credit and an rx buffer is
//!   there to take the bytes, so a guest that stops returning credit stops the host writer
//!   (through the socket's own buffer) instead of growing memory here.
//!
//! Half close: the host shutting its write side (EOF on read) reaches the guest as
//! SHUTDOWN(SEND) and the guest may go on sending; a guest SHUTDOWN(SEND) shuts the host
//! socket's write side once `tx_buf` is flushed; SHUTDOWN(RCV) from the guest shuts the host
//! socket's read side. When neither direction can carry data any more the connection is
//! reset (RST to the guest) and the host socket closed.
//!
//! Must never block, never panic on a guest header and never buffer more than
//! [`CONN_TX_BUF_SIZE`] bytes.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::super::packet::{
    Header, Packet, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::super::{HOST_CID, MAX_PKT_BUF_SIZE};

/// The receive buffer the host side announces to the guest (`buf_alloc`): the most guest data
/// one connection may hold while the host socket is not taking it.
pub const CONN_TX_BUF_SIZE: u32 = 256 * 1024;

/// Forwarded bytes after which the guest is sent a credit update without asking.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_TX_BUF_SIZE / 4;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent (or pending), waiting for the guest's RESPONSE.
    LocalInit,
    /// Both sides connected (possibly half closed).
    Established,
    /// Reset or fully closed; removed once its last packet is out.
    Closed,
}

/// One connection; see the module docs.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: ConnState,

    // Control packets owed to the guest.
    pending_request: bool,
    pending_response: bool,
    pending_shutdown: bool,
    pending_credit_update: bool,
    pending_credit_request: bool,
    pending_rst: bool,

    /// Host socket readable (last seen through epoll, cleared on `WouldBlock`).
    data_ready: bool,

    // guest → host.
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    // host → guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_request_sent: bool,

    /// The host shut its write side (we read EOF).
    host_eof: bool,
    /// We shut the host socket's write side (after a guest SHUTDOWN(SEND)).
    host_write_shut: bool,
    guest_send_shut: bool,
    guest_rcv_shut: bool,
}

impl Connection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state: ConnState::LocalInit,
            pending_request: false,
            pending_response: false,
            pending_shutdown: false,
            pending_credit_update: false,
            pending_credit_request: false,
            pending_rst: false,
            data_ready: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_request_sent: false,
            host_eof: false,
            host_write_shut: false,
            guest_send_shut: false,
            guest_rcv_shut: false,
        }
    }

    /// A host-initiated connection (after `CONNECT <peer_port>`): a REQUEST to the guest is
    /// pending. `stream` must be non-blocking.
    pub fn new_local(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port);
        c.pending_request = true;
        c
    }

    /// A guest-initiated connection (the guest's REQUEST `req` was accepted by a host
    /// listener): a RESPONSE to the guest is pending. `stream` must be non-blocking.
    pub fn new_peer(stream: UnixStream, guest_cid: u64, req: &Header) -> Self {
        let mut c = Self::new(stream, guest_cid, req.dst_port, req.src_port);
        c.state = ConnState::Established;
        c.pending_response = true;
        c.update_peer_credit(req);
        c
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    /// Bytes of guest data waiting for the host socket.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// How many bytes the guest can take now (its credit to us).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the connection is over and may be dropped (nothing more to tell the guest).
    pub fn is_done(&self) -> bool {
        self.state == ConnState::Closed && !self.has_pending_rx()
    }

    /// Whether the host socket should be read (now or once epoll says it is readable).
    fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.pending_rst
            && !self.host_eof
            && !self.guest_rcv_shut
            && self.peer_credit() > 0
    }

    /// Whether [`Self::recv_pkt`] has something for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending_rst
            || self.pending_request
            || self.pending_response
            || self.pending_shutdown
            || self.pending_credit_update
            || self.pending_credit_request
            || (self.data_ready && self.wants_read())
    }

    /// The epoll events to watch on the host socket (empty: do not watch it at all, so a
    /// hung-up socket cannot spin the event loop).
    pub fn interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.state == ConnState::Closed {
            return ev;
        }
        if self.wants_read() && !self.data_ready {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    /// The host socket is readable (or hung up).
    pub fn notify_readable(&mut self) {
        self.data_ready = true;
    }

    /// The host socket is writable (or hung up): flush what the guest sent.
    pub fn notify_writable(&mut self) {
        self.flush_tx();
        self.check_close();
    }

    /// Aborts the connection: RST to the guest, host socket closed once it is out.
    pub fn reset(&mut self) {
        if self.state != ConnState::Closed {
            self.pending_rst = true;
        }
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        let before = self.peer_credit();
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if before == 0 && self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
    }

    /// Handles a packet the guest sent on this connection.
    pub fn send_pkt(&mut self, pkt: &Packet) {
        if self.state == ConnState::Closed {
            return;
        }
        let hdr = &pkt.hdr;
        if self.pending_rst && hdr.op != OP_RST {
            // Being reset: nothing the guest says matters any more.
            return;
        }
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (_, OP_RST) => {
                tracing::debug!(
                    local = self.local_port,
                    peer = self.peer_port,
                    "vsock: guest reset the connection"
                );
                self.close_now();
            }
            (ConnState::LocalInit, OP_RESPONSE) => {
                let reply = format!("OK {}\n", self.local_port);
                // A fresh socket's buffer takes the 14 bytes at once; anything else means the
                // host client is gone.
                match self.stream.write(reply.as_bytes()) {
                    Ok(n) if n == reply.len() => self.state = ConnState::Established,
                    _ => self.reset(),
                }
            }
            (ConnState::Established, OP_RW) => self.guest_data(&pkt.data),
            (ConnState::Established, OP_SHUTDOWN) => self.guest_shutdown(hdr.flags),
            (ConnState::Established, OP_CREDIT_UPDATE) => {}
            (ConnState::Established, OP_CREDIT_REQUEST) => self.pending_credit_update = true,
            (state, op) => {
                tracing::debug!(
                    local = self.local_port,
                    peer = self.peer_port,
                    ?state,
                    op,
                    "vsock: unexpected packet, resetting the connection"
                );
                self.reset();
            }
        }
        self.check_close();
    }

    fn guest_data(&mut self, data: &[u8]) {
        if self.guest_send_shut {
            // Data after the guest said it would send no more.
            self.reset();
            return;
        }
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.forwarded(n);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(local = self.local_port, "vsock: host write failed: {e}");
                    self.reset();
                    return;
                }
            }
        }
        if rest.is_empty() {
            return;
        }
        if self.tx_buf.len() + rest.len() > CONN_TX_BUF_SIZE as usize {
            tracing::debug!(
                local = self.local_port,
                peer = self.peer_port,
                "vsock: guest sent past its credit, resetting the connection"
            );
            self.reset();
            return;
        }
        self.tx_buf.extend(rest);
    }

    fn forwarded(&mut self, n: usize) {
        // n ≤ one write's length ≤ CONN_TX_BUF_SIZE, so it fits in u32.
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
    }

    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(local = self.local_port, "vsock: host write failed: {e}");
                    self.tx_buf.clear();
                    self.reset();
                    return;
                }
            }
        }
    }

    fn guest_shutdown(&mut self, flags: u32) {
        if flags & SHUTDOWN_SEND != 0 {
            self.guest_send_shut = true;
        }
        if flags & SHUTDOWN_RCV != 0 && !self.guest_rcv_shut {
            self.guest_rcv_shut = true;
            // The host's writes now fail instead of piling up for a reader that is gone.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
    }

    /// Shuts the host write side once the guest is done sending, and resets the connection
    /// once no direction can carry data.
    fn check_close(&mut self) {
        if self.state != ConnState::Established || self.pending_rst {
            return;
        }
        let guest_to_host_done = self.guest_send_shut && self.tx_buf.is_empty();
        if guest_to_host_done && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        let host_to_guest_done = self.host_eof || self.guest_rcv_shut;
        if guest_to_host_done && host_to_guest_done {
            tracing::debug!(
                local = self.local_port,
                peer = self.peer_port,
                "vsock: both directions closed"
            );
            self.pending_rst = true;
        }
    }

    fn close_now(&mut self) {
        self.state = ConnState::Closed;
        self.pending_request = false;
        self.pending_response = false;
        self.pending_shutdown = false;
        self.pending_credit_update = false;
        self.pending_credit_request = false;
        self.pending_rst = false;
        self.data_ready = false;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn packet(&mut self, op: u16, flags: u32, data: Vec<u8>) -> Packet {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending_credit_update = false;
        Packet {
            hdr: Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: self.local_port,
                dst_port: self.peer_port,
                // At most MAX_PKT_BUF_SIZE (see recv_pkt).
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags,
                buf_alloc: CONN_TX_BUF_SIZE,
                fwd_cnt: self.fwd_cnt.0,
            },
            data,
        }
    }

    /// The next packet for the guest, with at most `max_data` payload bytes.
    pub fn recv_pkt(&mut self, max_data: usize) -> Option<Packet> {
        if self.pending_rst {
            let pkt = self.packet(OP_RST, 0, Vec::new());
            self.close_now();
            return Some(pkt);
        }
        if self.state == ConnState::Closed {
            return None;
        }
        if self.pending_request {
            self.pending_request = false;
            return Some(self.packet(OP_REQUEST, 0, Vec::new()));
        }
        if self.pending_response {
            self.pending_response = false;
            return Some(self.packet(OP_RESPONSE, 0, Vec::new()));
        }
        if self.data_ready && self.wants_read() && max_data > 0 {
            if let Some(pkt) = self.read_host(max_data) {
                return Some(pkt);
            }
            if self.pending_rst {
                return self.recv_pkt(max_data);
            }
        }
        if self.pending_shutdown {
            self.pending_shutdown = false;
            let pkt = self.packet(OP_SHUTDOWN, SHUTDOWN_SEND, Vec::new());
            return Some(pkt);
        }
        if self.pending_credit_update {
            return Some(self.packet(OP_CREDIT_UPDATE, 0, Vec::new()));
        }
        if self.pending_credit_request {
            self.pending_credit_request = false;
            return Some(self.packet(OP_CREDIT_REQUEST, 0, Vec::new()));
        }
        // A reset decided above (close after EOF) goes out right away.
        if self.pending_rst {
            return self.recv_pkt(max_data);
        }
        None
    }

    /// Reads host data for the guest: an RW packet, or `None` after EOF (SHUTDOWN queued),
    /// `WouldBlock` or an error (RST queued).
    fn read_host(&mut self, max_data: usize) -> Option<Packet> {
        let want = max_data
            .min(self.peer_credit() as usize)
            .min(MAX_PKT_BUF_SIZE as usize);
        let mut buf = vec![0u8; want];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.data_ready = false;
                    self.host_eof = true;
                    if !self.guest_rcv_shut {
                        self.pending_shutdown = true;
                    }
                    self.check_close();
                    return None;
                }
                Ok(n) => {
                    buf.truncate(n);
                    // n ≤ MAX_PKT_BUF_SIZE.
                    self.rx_cnt += Wrapping(n as u32);
                    if self.peer_credit() == 0 && !self.credit_request_sent {
                        self.credit_request_sent = true;
                        self.pending_credit_request = true;
                    }
                    return Some(self.packet(OP_RW, 0, buf));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.data_ready = false;
                    return None;
                }
                Err(e) => {
                    tracing::debug!(local = self.local_port, "vsock: host read failed: {e}");
                    self.data_ready = false;
                    self.reset();
                    return None;
                }
            }
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_CID: u64 = 3;
    const LOCAL: u32 = 1 << 30;
    const PEER: u32 = 1024;

    fn guest_pkt(op: u16, flags: u32, buf_alloc: u32, fwd_cnt: u32, data: &[u8]) -> Packet {
        Packet {
            hdr: Header {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port: PEER,
                dst_port: LOCAL,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                flags,
                buf_alloc,
                fwd_cnt,
            },
            data: data.to_vec(),
        }
    }

    /// A guest-initiated connection already past RESPONSE, and the host end of its socket.
    fn established(guest_buf: u32) -> (Connection, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut req = guest_pkt(OP_REQUEST, 0, guest_buf, 0, &[]).hdr;
        req.dst_port = LOCAL;
        let mut c = Connection::new_peer(ours, GUEST_CID, &req);
        let p = c.recv_pkt(4096).unwrap();
        assert_eq!(p.hdr.op, OP_RESPONSE);
        assert_eq!(p.hdr.buf_alloc, CONN_TX_BUF_SIZE);
        assert_eq!((p.hdr.src_port, p.hdr.dst_port), (LOCAL, PEER));
        (c, host)
    }

    /// Everything the connection has for the guest right now.
    fn drain(c: &mut Connection, max: usize) -> Vec<Packet> {
        let mut v = Vec::new();
        while c.has_pending_rx() {
            match c.recv_pkt(max) {
                Some(p) => v.push(p),
                None => break,
            }
        }
        v
    }

    fn ops(pkts: &[Packet]) -> Vec<u16> {
        pkts.iter().map(|p| p.hdr.op).collect()
    }

    #[test]
    fn host_initiated_handshake_and_refusal() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::new_local(ours, GUEST_CID, LOCAL, PEER);
        assert_eq!(c.recv_pkt(0).unwrap().hdr.op, OP_REQUEST);
        assert!(!c.has_pending_rx());
        c.send_pkt(&guest_pkt(OP_RESPONSE, 0, 4096, 0, &[]));
        assert_eq!(c.state(), ConnState::Established);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");

        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::new_local(ours, GUEST_CID, LOCAL, PEER);
        c.recv_pkt(0).unwrap();
        c.send_pkt(&guest_pkt(OP_RST, 0, 0, 0, &[]));
        assert!(c.is_done());
        let mut buf = [0u8; 4];
        assert_eq!(
            host.read(&mut buf).unwrap(),
            0,
            "refused: the client sees EOF"
        );
    }

    #[test]
    fn data_before_response_resets() {
        let (ours, _host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::new_local(ours, GUEST_CID, LOCAL, PEER);
        c.recv_pkt(0).unwrap();
        c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, b"x"));
        assert_eq!(ops(&drain(&mut c, 100)), [OP_RST]);
        assert!(c.is_done());
    }

    #[test]
    fn host_to_guest_respects_credit() {
        let (mut c, mut host) = established(10);
        host.write_all(&[7u8; 25]).unwrap();
        c.notify_readable();
        let pkts = drain(&mut c, 4096);
        // 10 bytes of credit: one RW of 10, then a credit request, then nothing.
        assert_eq!(ops(&pkts), [OP_RW, OP_CREDIT_REQUEST]);
        assert_eq!(pkts[0].data.len(), 10);
        assert_eq!(c.peer_credit(), 0);
        assert!(
            c.interest().is_empty(),
            "no credit: the host socket is not watched"
        );
        // The guest consumed 4 bytes: 4 more may go, limited by the rx buffer (3).
        c.send_pkt(&guest_pkt(OP_CREDIT_UPDATE, 0, 10, 4, &[]));
        assert!(
            c.has_pending_rx(),
            "credit is back: the unread host data is due"
        );
        let pkts = drain(&mut c, 3);
        assert_eq!(ops(&pkts), [OP_RW, OP_RW, OP_CREDIT_REQUEST]);
        assert_eq!(pkts[0].data.len() + pkts[1].data.len(), 4);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_to_host_is_bounded_and_credited() {
        let (mut c, mut host) = established(4096);
        c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, b"hello"));
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Fill the host socket until writes would block, then keep sending within credit.
        let chunk = vec![1u8; MAX_PKT_BUF_SIZE as usize];
        let mut sent = 5usize;
        while c.tx_buffered() == 0 {
            c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, &chunk));
            sent += chunk.len();
        }
        assert!(c.interest().contains(EventSet::OUT));
        // Credit announced to the guest: every packet carries buf_alloc and fwd_cnt.
        let upd = drain(&mut c, 0);
        assert!(ops(&upd).iter().all(|&o| o == OP_CREDIT_UPDATE));
        // Past the announced buffer: reset, and the buffer never grew past it.
        let mut reset = false;
        for _ in 0..(CONN_TX_BUF_SIZE / MAX_PKT_BUF_SIZE + 2) {
            c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, &chunk));
            assert!(c.tx_buffered() <= CONN_TX_BUF_SIZE as usize);
            if c.pending_rst {
                reset = true;
                break;
            }
        }
        assert!(reset, "a guest ignoring credit is reset");
        assert!(sent > 0);
    }

    #[test]
    fn credit_update_after_flush() {
        let (mut c, host) = established(4096);
        let chunk = vec![1u8; MAX_PKT_BUF_SIZE as usize];
        while c.tx_buffered() < CREDIT_UPDATE_THRESHOLD as usize {
            c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, &chunk));
        }
        let _ = drain(&mut c, 0);
        // The host drains its socket; the flush forwards the buffer and credits the guest.
        host.set_nonblocking(true).unwrap();
        let mut sink = vec![0u8; 1 << 20];
        let mut h = &host;
        while c.tx_buffered() > 0 {
            while h.read(&mut sink).is_ok() {}
            c.notify_writable();
        }
        let pkts = drain(&mut c, 0);
        assert_eq!(ops(&pkts), [OP_CREDIT_UPDATE]);
        assert_eq!(pkts[0].hdr.fwd_cnt, c.fwd_cnt.0);
        // A credit request is answered.
        c.send_pkt(&guest_pkt(OP_CREDIT_REQUEST, 0, 4096, 0, &[]));
        assert_eq!(ops(&drain(&mut c, 0)), [OP_CREDIT_UPDATE]);
    }

    #[test]
    fn host_half_close_is_shutdown_send_only() {
        let (mut c, mut host) = established(4096);
        host.write_all(b"req").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        c.notify_readable();
        let pkts = drain(&mut c, 4096);
        assert_eq!(ops(&pkts), [OP_RW, OP_SHUTDOWN]);
        assert_eq!(pkts[0].data, b"req");
        assert_eq!(pkts[1].hdr.flags, SHUTDOWN_SEND);
        assert_eq!(c.state(), ConnState::Established);
        // The guest keeps sending; the host still reads it.
        c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 3, b"reply"));
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"reply");
        // The guest finishes: the host sees EOF and the connection closes with RST.
        c.send_pkt(&guest_pkt(OP_SHUTDOWN, SHUTDOWN_SEND, 4096, 3, &[]));
        assert_eq!(ops(&drain(&mut c, 4096)), [OP_RST]);
        assert!(c.is_done());
        assert_eq!(host.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn guest_half_close_shuts_the_host_write_side() {
        let (mut c, mut host) = established(4096);
        c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, b"bye"));
        c.send_pkt(&guest_pkt(OP_SHUTDOWN, SHUTDOWN_SEND, 4096, 0, &[]));
        assert!(
            drain(&mut c, 4096).is_empty(),
            "no RST: the host may still send"
        );
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
        host.write_all(b"answer").unwrap();
        c.notify_readable();
        let pkts = drain(&mut c, 4096);
        assert_eq!(ops(&pkts), [OP_RW]);
        assert_eq!(pkts[0].data, b"answer");
        drop(host);
        c.notify_readable();
        assert_eq!(ops(&drain(&mut c, 4096)), [OP_RST]);
        assert!(c.is_done());
    }

    #[test]
    fn guest_full_shutdown_and_rst_paths() {
        // SHUTDOWN with both flags: RST back, host socket closed.
        let (mut c, mut host) = established(4096);
        c.send_pkt(&guest_pkt(
            OP_SHUTDOWN,
            SHUTDOWN_SEND | SHUTDOWN_RCV,
            4096,
            0,
            &[],
        ));
        assert_eq!(ops(&drain(&mut c, 4096)), [OP_RST]);
        let mut buf = [0u8; 1];
        assert_eq!(host.read(&mut buf).unwrap(), 0);
        // RST from the guest: nothing back.
        let (mut c, _host) = established(4096);
        c.send_pkt(&guest_pkt(OP_RST, 0, 0, 0, &[]));
        assert!(drain(&mut c, 4096).is_empty());
        assert!(c.is_done());
        // Data after SHUTDOWN(SEND): reset.
        let (mut c, _host) = established(4096);
        c.send_pkt(&guest_pkt(OP_SHUTDOWN, SHUTDOWN_SEND, 4096, 0, &[]));
        c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, b"late"));
        assert_eq!(ops(&drain(&mut c, 4096)), [OP_RST]);
        // The host going away entirely: writes fail, RST.
        let (mut c, host) = established(4096);
        drop(host);
        c.send_pkt(&guest_pkt(OP_RW, 0, 4096, 0, b"x"));
        assert_eq!(ops(&drain(&mut c, 4096)), [OP_RST]);
    }
}
