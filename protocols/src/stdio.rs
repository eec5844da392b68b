//! `husk.stdio.v1`: one vsock stream per standard stream of a guest process.
//!
//! The host connects to guest port [`STDIO_PORT`], sends one [`crate::frame`] frame with a
//! [`StreamOpen`], reads a [`StreamReply`], and from then on the connection carries raw bytes:
//! host → guest for stdin, guest → host for stdout and stderr. The agent closes an output
//! stream after the last byte; WaitProcess answers only after that. Streams attach between
//! CreateContainer and StartContainer; a stream not attached reads as empty / is discarded.

use serde::{Deserialize, Serialize};

/// Protocol name sent in every [`StreamOpen`].
pub const PROTOCOL: &str = "husk.stdio.v1";

/// Guest vsock port the agent serves stdio streams on.
pub const STDIO_PORT: u32 = crate::ports::STDIO_PORT_BASE;

/// Which standard stream a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

/// The first frame on a stdio connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    pub protocol: String,
    pub container_id: String,
    /// Empty for the container's init process.
    #[serde(default)]
    pub exec_id: String,
    pub stream: StreamKind,
    /// W3C `traceparent` of the host span that opened the stream (tracing on), so the agent's
    /// stream span joins the same trace; absent from an untraced or older host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The agent's answer; on an error the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReply {
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_frame, write_frame};

    #[test]
    fn open_round_trips() {
        let open = StreamOpen {
            protocol: PROTOCOL.into(),
            container_id: "c1".into(),
            exec_id: String::new(),
            stream: StreamKind::Stdout,
            traceparent: None,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &open).unwrap();
        assert_eq!(
            read_frame::<_, StreamOpen>(&mut buf.as_slice()).unwrap(),
            open
        );
        assert!(String::from_utf8_lossy(&buf).contains(r#""stream":"stdout""#));
    }
}
