//! How spans travel inside the guest and out of it (ARCHITECTURE.md §5): guest processes send
//! OTLP to husk-tracer on a local Unix socket, and husk-tracer forwards them to the host on
//! vsock port [`crate::ports::TRACE_PORT`] (`<vsock.sock>_10240` on the host).
//!
//! Both hops use the same frames: a big-endian `u32` length, then one OTLP
//! `ExportTraceServiceRequest` in protobuf, at most [`MAX_TRACE_FRAME`] bytes. On the vsock hop
//! the host answers every frame with one [`ACK`] byte once the frame's spans are in its hands,
//! so the tracer knows what it may forget and a VM that shuts down right away loses nothing.
//!
//! Owns the framing, the socket path and the ack. Must never decode OTLP itself (that needs the
//! OTLP types, which live with the code that uses them) nor trust a peer's length.

use std::io::{Read, Write};

use crate::frame::{read_body_max, write_body_max, FrameError};

/// husk-tracer's local socket in the guest (a Unix stream socket).
pub const TRACER_SOCKET: &str = "/run/husk/tracer.sock";

/// Largest frame on either hop (256 KiB): a batch bigger than this is split by its sender.
/// Small on purpose: protobuf decodes to much more memory than it takes on the wire (an empty
/// span is 2 bytes encoded and some 250 decoded), so the limit bounds what one hostile frame
/// costs the host to decode (tens of MiB) while a batch of husk's spans (a few hundred bytes
/// each) still fits hundreds.
pub const MAX_TRACE_FRAME: usize = 256 * 1024;

/// The host's answer to one forwarded frame: received and handed on.
pub const ACK: u8 = 0x06;

/// Writes one encoded `ExportTraceServiceRequest` as a frame.
pub fn write_trace_frame<W: Write>(w: &mut W, request: &[u8]) -> Result<(), FrameError> {
    write_body_max(w, request, MAX_TRACE_FRAME)
}

/// Reads one frame's encoded `ExportTraceServiceRequest`; [`FrameError::Closed`] on a clean end
/// of stream, [`FrameError::TooLarge`] before any allocation for a length over the limit.
pub fn read_trace_frame<R: Read>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    read_body_max(r, MAX_TRACE_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_the_limit_holds_both_ways() {
        let mut buf = Vec::new();
        write_trace_frame(&mut buf, b"otlp").expect("write");
        write_trace_frame(&mut buf, &[]).expect("write an empty request");
        let mut r = buf.as_slice();
        assert_eq!(read_trace_frame(&mut r).expect("first"), b"otlp");
        assert_eq!(read_trace_frame(&mut r).expect("second"), b"");
        assert!(matches!(read_trace_frame(&mut r), Err(FrameError::Closed)));

        let big = vec![0u8; MAX_TRACE_FRAME + 1];
        assert!(matches!(
            write_trace_frame(&mut Vec::new(), &big),
            Err(FrameError::TooLarge {
                max: MAX_TRACE_FRAME,
                ..
            })
        ));
        let prefix = ((MAX_TRACE_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_trace_frame(&mut prefix.as_slice()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_frame_cut_short_is_an_error() {
        let mut buf = Vec::new();
        write_trace_frame(&mut buf, b"spans").expect("write");
        buf.truncate(6);
        assert!(matches!(
            read_trace_frame(&mut buf.as_slice()),
            Err(FrameError::Truncated { got: 2, want: 5 })
        ));
    }
}
