//! Why the tracer could not listen, read a client, or hand a batch to the host.
//!
//! Owns the error type that crosses module boundaries. Must never decide what happens next
//! (closing a client, reconnecting): the module that gets the error does.

use std::io;
use std::path::PathBuf;

use husk_protocols::frame::FrameError;

/// A failure of one of the tracer's parts.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The local socket could not be set up.
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    /// A client's frame is oversized or cut short.
    #[error("bad frame from a client: {0}")]
    Frame(#[from] FrameError),
    /// A client's frame is not an OTLP `ExportTraceServiceRequest`.
    #[error("malformed OTLP request from a client: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Reading a client's socket failed.
    #[error("reading a client: {0}")]
    Client(io::Error),
    /// The host's trace port could not be reached.
    #[error("cannot reach the host at {uplink}: {source}")]
    Connect { uplink: String, source: io::Error },
    /// Writing a batch to the host failed.
    #[error("sending a batch to the host: {0}")]
    Send(FrameError),
    /// Waiting for the host's acknowledgement failed (timeout or a broken connection).
    #[error("waiting for the host's acknowledgement: {0}")]
    Ack(io::Error),
    /// The host closed the connection instead of acknowledging.
    #[error("the host closed the connection before acknowledging the batch")]
    NoAck,
    /// The host answered something other than the ack byte.
    #[error("the host answered {0:#04x}, not the ack byte")]
    BadAck(u8),
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: io::Error,
    },
}
