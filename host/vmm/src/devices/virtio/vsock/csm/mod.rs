//! The connection state machine: one guest vsock stream tied to one host Unix stream.
//!
//! Owns the stream protocol of a single connection (virtio 1.2 §5.10.6.3-6): handshake,
//! credit-based flow control, half close in either direction and reset. Must never touch a
//! queue or guest memory (the muxer hands it decoded packets) and never block on the host
//! socket (it is non-blocking; what the host cannot take yet waits in a bounded buffer).

mod connection;

pub use connection::{ConnState, Connection, CONN_TX_BUF_SIZE, CREDIT_UPDATE_THRESHOLD};
