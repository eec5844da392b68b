//! `husk.console.v1`: an operator's session in a running guest (proto/console.proto).
//!
//! Re-exports the generated messages and encodes them as frames ([`crate::frame`]: a
//! big-endian `u32` byte count, then one protobuf message). Both peers are untrusted by each
//! other: a frame longer than [`MAX_FRAME`] is refused before any allocation, a truncated one
//! is an error. This module never buffers beyond one frame and never retries.

use std::io::{Read, Write};

pub use crate::frame::{FrameError, MAX_FRAME};

pub use crate::generated::console::error::Kind as ErrorKind;
pub use crate::generated::console::*;

/// Protocol package name, sent in `Open.protocol` and `Started.protocol`.
pub const PROTOCOL: &str = "husk.console.v1";

/// The major version this build speaks (the `v1` of [`PROTOCOL`]).
pub const MAJOR: u32 = 1;

/// Largest output or input chunk one `Data` frame carries.
pub const MAX_DATA: usize = 32 * 1024;

/// Most sessions one guest serves at once; more are refused with `BUSY`.
pub const MAX_SESSIONS: usize = 64;

/// The major version a protocol name carries (`husk.console.v1` → 1), if it is a console one.
pub fn major_of(protocol: &str) -> Option<u32> {
    protocol.strip_prefix("husk.console.v")?.parse().ok()
}

/// Writes `msg` as one frame with a single `write_all`, so frames written under one lock
/// never interleave.
pub fn write_frame<W: Write, M: protobuf::Message>(w: &mut W, msg: &M) -> Result<(), FrameError> {
    crate::frame::write_body(w, &msg.write_to_bytes()?)
}

/// Reads one frame and decodes it. Returns [`FrameError::Closed`] on a clean end of stream.
pub fn read_frame<R: Read, M: protobuf::Message>(r: &mut R) -> Result<M, FrameError> {
    Ok(M::parse_from_bytes(&crate::frame::read_body(r)?)?)
}

/// A client frame carrying `frame`.
pub fn client(frame: client_frame::Frame) -> ClientFrame {
    let mut f = ClientFrame::new();
    f.frame = Some(frame);
    f
}

/// A server frame carrying `frame`.
pub fn server(frame: server_frame::Frame) -> ServerFrame {
    let mut f = ServerFrame::new();
    f.frame = Some(frame);
    f
}

/// A `Data` message with `bytes`.
pub fn data(bytes: &[u8]) -> Data {
    let mut d = Data::new();
    d.data = bytes.to_vec();
    d
}

/// The `error` frame a server sends when a session cannot start or fails.
pub fn error_frame(kind: ErrorKind, message: impl Into<String>) -> ServerFrame {
    let mut e = Error::new();
    e.kind = kind.into();
    e.message = message.into();
    server(server_frame::Frame::Error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut open = Open::new();
        open.protocol = PROTOCOL.into();
        open.args = vec!["sh".into(), "-c".into(), "echo hi".into()];
        open.tty = true;
        let mut buf = Vec::new();
        write_frame(&mut buf, &client(client_frame::Frame::Open(open.clone()))).unwrap();
        write_frame(&mut buf, &server(server_frame::Frame::Stdout(data(b"out")))).unwrap();
        let mut r = buf.as_slice();
        let f: ClientFrame = read_frame(&mut r).unwrap();
        assert_eq!(f.frame, Some(client_frame::Frame::Open(open)));
        let f: ServerFrame = read_frame(&mut r).unwrap();
        assert_eq!(f.frame, Some(server_frame::Frame::Stdout(data(b"out"))));
        assert!(matches!(
            read_frame::<_, ServerFrame>(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn hostile_frames_are_refused() {
        let big = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut big.as_slice()),
            Err(FrameError::TooLarge { .. })
        ));
        let mut short = 10u32.to_be_bytes().to_vec();
        short.extend_from_slice(b"abc");
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut short.as_slice()),
            Err(FrameError::Truncated { got: 3, want: 10 })
        ));
        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut junk.as_slice()),
            Err(FrameError::MalformedMessage(_))
        ));
        let huge = server(server_frame::Frame::Stdout(data(&vec![0; MAX_FRAME])));
        assert!(matches!(
            write_frame(&mut Vec::new(), &huge),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn majors() {
        assert_eq!(major_of(PROTOCOL), Some(MAJOR));
        assert_eq!(major_of("husk.console.v2"), Some(2));
        assert_eq!(major_of("husk.agent.v1"), None);
    }
}
