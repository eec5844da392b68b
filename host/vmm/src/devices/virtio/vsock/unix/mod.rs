//! The hybrid vsock back end over AF_UNIX (Firecracker's protocol): host-initiated streams
//! arrive on `uds_path` with `CONNECT <port>\n`; guest-initiated streams to port P go to the
//! host listener at `<uds_path>_<P>`.
//!
//! Owns the host sockets and the mapping between them and guest ports. Must never read or
//! write guest memory (it deals in decoded packets) and never block.

mod muxer;

pub use muxer::{parse_connect, Muxer, MuxerError, MAX_CONNECTIONS, MAX_CONNECT_LINE};
