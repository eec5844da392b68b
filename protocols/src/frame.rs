//! Length-prefixed frames: a big-endian `u32` byte count, then that many bytes of body: JSON
//! here ([`read_frame`], [`write_frame`]), protobuf in [`crate::console`], both through
//! [`read_body`] and [`write_body`].
//!
//! Used by the small control protocols (`husk.init.v1`, `husk.stdio.v1`, `husk.console.v1`). The peer is untrusted: a frame longer
//! than [`MAX_FRAME`] is refused before any allocation, and a truncated frame is an error, not
//! a short read. This module never buffers beyond one frame and never retries.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest frame accepted or produced (64 KiB).
pub const MAX_FRAME: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before the first byte of a frame.
    #[error("peer closed the stream")]
    Closed,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    /// The length prefix exceeds the protocol's limit ([`MAX_FRAME`] unless it says otherwise).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The body is not the JSON the protocol expects.
    #[error("malformed frame body: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The body is not the protobuf message the protocol expects.
    #[error("malformed frame body: {0}")]
    MalformedMessage(#[from] protobuf::Error),
    /// Reading or writing the stream failed.
    #[error("I/O error on frame stream: {0}")]
    Io(#[from] io::Error),
}

/// Serialises `msg` and writes it as one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    write_body(w, &serde_json::to_vec(msg)?)
}

/// Writes `body` as one frame, prefix and body in a single `write_all`, so frames written
/// under one lock never interleave.
pub fn write_body<W: Write>(w: &mut W, body: &[u8]) -> Result<(), FrameError> {
    write_body_max(w, body, MAX_FRAME)
}

/// [`write_body`] for a protocol whose frames may be up to `max` bytes.
pub fn write_body_max<W: Write>(w: &mut W, body: &[u8], max: usize) -> Result<(), FrameError> {
    let too_large = || FrameError::TooLarge {
        len: body.len(),
        max,
    };
    if body.len() > max {
        return Err(too_large());
    }
    let len = u32::try_from(body.len()).map_err(|_| too_large())?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. Returns [`FrameError::Closed`] on a clean end of stream.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(&read_body(r)?)?)
}

/// Reads one frame's body. Returns [`FrameError::Closed`] on a clean end of stream; a length
/// over [`MAX_FRAME`] is refused before anything is allocated.
pub fn read_body<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    read_body_max(r, MAX_FRAME)
}

/// [`read_body`] for a protocol whose frames may be up to `max` bytes.
pub fn read_body_max<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let got = read_full(r, &mut len)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < len.len() {
        return Err(FrameError::Truncated { got, want: 4 });
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(FrameError::Truncated { got, want: len });
    }
    Ok(body)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &vec![1u32, 2, 3]).unwrap();
        assert_eq!(&buf[..4], &7u32.to_be_bytes());
        let back: Vec<u32> = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, vec![1, 2, 3]);
    }

    #[test]
    fn empty_stream_is_closed() {
        let r: Result<u32, _> = read_frame(&mut [].as_slice());
        assert!(matches!(r, Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_length_is_refused_without_reading_body() {
        let bytes = u32::MAX.to_be_bytes();
        let r: Result<u32, _> = read_frame(&mut bytes.as_slice());
        assert!(matches!(r, Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize));
    }

    #[test]
    fn truncated_header_and_body() {
        let r: Result<u32, _> = read_frame(&mut [0u8, 0].as_slice());
        assert!(matches!(r, Err(FrameError::Truncated { got: 2, want: 4 })));
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"123");
        let r: Result<u32, _> = read_frame(&mut bytes.as_slice());
        assert!(matches!(r, Err(FrameError::Truncated { got: 3, want: 10 })));
    }

    #[test]
    fn malformed_body() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{x]");
        let r: Result<u32, _> = read_frame(&mut bytes.as_slice());
        assert!(matches!(r, Err(FrameError::Malformed(_))));
    }
}
