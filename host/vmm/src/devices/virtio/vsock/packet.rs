//! The virtio-vsock packet: its 44-byte little-endian header (virtio 1.2 §5.10.6) and moving
//! packets between descriptor chains and host buffers.
//!
//! Owns every guest-memory access of the vsock device. Chains are walked with
//! `virtio_queue`'s [`Reader`]/[`Writer`], which bound-check every descriptor against guest
//! memory, stop at loops and accept a header split across any number of descriptors. Must never
//! trust the header's `len`: it is checked against [`MAX_PKT_BUF_SIZE`] and against what the
//! chain really holds before a byte is copied.

use std::io::{self, Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use super::MAX_PKT_BUF_SIZE;
use crate::devices::virtio::GuestMemoryMmap;

/// Size of the packet header.
pub const HEADER_SIZE: usize = 44;

/// The only socket type virtio-vsock streams use.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (virtio 1.2 §5.10.6).
pub const OP_REQUEST: u16 = 1;
/// Accepts a connection request.
pub const OP_RESPONSE: u16 = 2;
/// Resets (refuses or aborts) a connection.
pub const OP_RST: u16 = 3;
/// Announces that the sender will no longer receive and/or send (see the flags).
pub const OP_SHUTDOWN: u16 = 4;
/// Carries stream data.
pub const OP_RW: u16 = 5;
/// Announces the sender's buffer space.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Asks the peer for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Why a descriptor chain did not hold a usable packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("vsock {queue} chain (head {head}): bad descriptor chain: {source}")]
    Chain {
        queue: &'static str,
        head: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("vsock tx chain (head {head}): {got} readable bytes, less than the {HEADER_SIZE}-byte header")]
    ShortHeader { head: u16, got: usize },
    #[error("vsock tx chain (head {head}): header claims {len} payload bytes, more than {MAX_PKT_BUF_SIZE}")]
    TooLong { head: u16, len: u32 },
    #[error(
        "vsock tx chain (head {head}): header claims {len} payload bytes, the chain holds {avail}"
    )]
    Truncated { head: u16, len: u32, avail: usize },
    #[error("vsock rx chain (head {head}): {got} writable bytes, a packet needs {need}")]
    RxTooSmall { head: u16, got: usize, need: usize },
    #[error("vsock {queue} chain (head {head}): copying guest memory: {source}")]
    Io {
        queue: &'static str,
        head: u16,
        #[source]
        source: io::Error,
    },
}

/// The packet header, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le_u32(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le_u16(b: &[u8; HEADER_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the wire format.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the wire format.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet on the host side: its header and its payload (`hdr.len == data.len()` for packets
/// built by the device).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packet {
    pub hdr: Header,
    pub data: Vec<u8>,
}

/// Reads the packet a driver put on the tx queue. The payload is copied (at most
/// [`MAX_PKT_BUF_SIZE`] bytes); the chain may be returned to the driver right after.
pub fn read_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Packet, PacketError> {
    let head = chain.head_index();
    let mut reader: Reader<'_, ()> = chain.reader(mem).map_err(|source| PacketError::Chain {
        queue: "tx",
        head,
        source,
    })?;
    let avail = reader.available_bytes();
    if avail < HEADER_SIZE {
        return Err(PacketError::ShortHeader { head, got: avail });
    }
    let mut raw = [0u8; HEADER_SIZE];
    reader
        .read_exact(&mut raw)
        .map_err(|source| PacketError::Io {
            queue: "tx",
            head,
            source,
        })?;
    let hdr = Header::from_bytes(&raw);
    if hdr.len > MAX_PKT_BUF_SIZE {
        return Err(PacketError::TooLong { head, len: hdr.len });
    }
    let avail = reader.available_bytes();
    // `len` ≤ 64 KiB, so it fits in usize everywhere.
    let len = hdr.len as usize;
    if len > avail {
        return Err(PacketError::Truncated {
            head,
            len: hdr.len,
            avail,
        });
    }
    let mut data = vec![0u8; len];
    reader
        .read_exact(&mut data)
        .map_err(|source| PacketError::Io {
            queue: "tx",
            head,
            source,
        })?;
    Ok(Packet { hdr, data })
}

/// A buffer the driver posted on the rx queue, ready to take one packet.
pub struct RxBuffer<'a> {
    head: u16,
    writer: Writer<'a, ()>,
}

impl std::fmt::Debug for RxBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBuffer")
            .field("head", &self.head)
            .field("writable", &self.writer.available_bytes())
            .finish()
    }
}

impl<'a> RxBuffer<'a> {
    /// Wraps an rx chain; fails if its writable part cannot hold even a header.
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let head = chain.head_index();
        let writer = chain.writer(mem).map_err(|source| PacketError::Chain {
            queue: "rx",
            head,
            source,
        })?;
        let got = writer.available_bytes();
        if got < HEADER_SIZE {
            return Err(PacketError::RxTooSmall {
                head,
                got,
                need: HEADER_SIZE,
            });
        }
        Ok(Self { head, writer })
    }

    /// How many payload bytes fit after the header (at most [`MAX_PKT_BUF_SIZE`]).
    pub fn data_capacity(&self) -> usize {
        let room = self.writer.available_bytes().saturating_sub(HEADER_SIZE);
        room.min(MAX_PKT_BUF_SIZE as usize)
    }

    /// Writes `pkt` (header with `len` set to the payload size, then the payload); returns
    /// the number of bytes written, for the used ring.
    pub fn write(mut self, pkt: &Packet) -> Result<u32, PacketError> {
        let need = HEADER_SIZE + pkt.data.len();
        if pkt.data.len() > self.data_capacity() {
            return Err(PacketError::RxTooSmall {
                head: self.head,
                got: self.writer.available_bytes(),
                need,
            });
        }
        let mut hdr = pkt.hdr;
        // Bounded by data_capacity() ≤ MAX_PKT_BUF_SIZE above.
        hdr.len = pkt.data.len() as u32;
        let io_err = |source| PacketError::Io {
            queue: "rx",
            head: self.head,
            source,
        };
        self.writer.write_all(&hdr.to_bytes()).map_err(io_err)?;
        self.writer.write_all(&pkt.data).map_err(io_err)?;
        Ok(need as u32)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    pub(crate) const MEM_SIZE: usize = 0x40_0000;

    pub(crate) fn test_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    pub(crate) fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn sample_header(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 1024,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    /// Puts `descs` as one chain on a fresh queue and runs `read_tx` on it.
    fn read_chain(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Packet, PacketError> {
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        read_tx(mem, chain)
    }

    #[test]
    fn header_round_trips() {
        let h = sample_header(5);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[30], OP_RW as u8);
    }

    #[test]
    fn reads_a_packet_with_the_header_split_across_descriptors() {
        let mem = test_mem();
        let mut bytes = sample_header(5).to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        // 10 + 30 + 9 bytes: the header spans three descriptors, the payload two.
        mem.write_slice(&bytes[..10], GuestAddress(0x10000))
            .unwrap();
        mem.write_slice(&bytes[10..40], GuestAddress(0x20000))
            .unwrap();
        mem.write_slice(&bytes[40..], GuestAddress(0x30000))
            .unwrap();
        let pkt = read_chain(
            &mem,
            &[
                desc(0x10000, 10, false),
                desc(0x20000, 30, false),
                desc(0x30000, 9, false),
            ],
        )
        .unwrap();
        assert_eq!(pkt.hdr, sample_header(5));
        assert_eq!(pkt.data, b"hello");
    }

    #[test]
    fn hostile_tx_chains_are_errors() {
        let mem = test_mem();
        mem.write_slice(&sample_header(5).to_bytes(), GuestAddress(0x10000))
            .unwrap();
        // Out of guest memory.
        let e = read_chain(&mem, &[desc(MEM_SIZE as u64 - 8, 64, false)]).unwrap_err();
        assert!(matches!(e, PacketError::Chain { .. }), "{e}");
        let e = read_chain(&mem, &[desc(u64::MAX - 3, 64, false)]).unwrap_err();
        assert!(matches!(e, PacketError::Chain { .. }), "{e}");
        // Zero length.
        let e = read_chain(&mem, &[desc(0x10000, 0, false)]).unwrap_err();
        assert!(matches!(e, PacketError::ShortHeader { got: 0, .. }), "{e}");
        // Write-only where the device must read: nothing readable.
        let e = read_chain(&mem, &[desc(0x10000, 64, true)]).unwrap_err();
        assert!(matches!(e, PacketError::ShortHeader { got: 0, .. }), "{e}");
        // Header claims more payload than the chain holds.
        let e = read_chain(&mem, &[desc(0x10000, 46, false)]).unwrap_err();
        assert!(
            matches!(
                e,
                PacketError::Truncated {
                    len: 5,
                    avail: 2,
                    ..
                }
            ),
            "{e}"
        );
        // Oversized length in the header.
        mem.write_slice(
            &sample_header(MAX_PKT_BUF_SIZE + 1).to_bytes(),
            GuestAddress(0x10000),
        )
        .unwrap();
        let e = read_chain(&mem, &[desc(0x10000, 0x20000, false)]).unwrap_err();
        assert!(matches!(e, PacketError::TooLong { .. }), "{e}");
        mem.write_slice(&sample_header(u32::MAX).to_bytes(), GuestAddress(0x10000))
            .unwrap();
        let e = read_chain(&mem, &[desc(0x10000, u32::MAX, false)]).unwrap_err();
        assert!(
            matches!(e, PacketError::TooLong { .. } | PacketError::Chain { .. }),
            "{e}"
        );
    }

    #[test]
    fn a_descriptor_loop_ends_the_walk() {
        let mem = test_mem();
        mem.write_slice(&sample_header(0).to_bytes()[..20], GuestAddress(0x10000))
            .unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // 0 → 1 → 0 → ...: each holds 20 bytes, so only a walk without end would find 44.
        let next = VRING_DESC_F_NEXT as u16;
        let looped = [
            RawDescriptor::from(SplitDescriptor::new(0x10000, 20, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x10000, 20, next, 0)),
        ];
        vq.add_desc_chains(&looped, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        // The walk stops at the queue size: either too short or a chain error, never a hang.
        let r = read_tx(&mem, chain);
        assert!(r.is_err() || r.is_ok_and(|p| p.data.is_empty()));
    }

    #[test]
    fn rx_buffers_are_checked() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        // Read-only where the device must write.
        let chain = vq.build_desc_chain(&[desc(0x10000, 4096, false)]).unwrap();
        let e = RxBuffer::new(&mem, chain).unwrap_err();
        assert!(matches!(e, PacketError::RxTooSmall { got: 0, .. }), "{e}");
        // Too small for a header.
        let chain = vq.build_desc_chain(&[desc(0x10000, 40, true)]).unwrap();
        assert!(RxBuffer::new(&mem, chain).is_err());
        // Out of range.
        let chain = vq
            .build_desc_chain(&[desc(MEM_SIZE as u64 - 4, 4096, true)])
            .unwrap();
        assert!(RxBuffer::new(&mem, chain).is_err());
        // A header split over two descriptors, payload limited by capacity.
        let chain = vq
            .build_desc_chain(&[desc(0x10000, 30, true), desc(0x20000, 20, true)])
            .unwrap();
        let buf = RxBuffer::new(&mem, chain).unwrap();
        assert_eq!(buf.data_capacity(), 6);
        let pkt = Packet {
            hdr: sample_header(0),
            data: b"abcdef".to_vec(),
        };
        assert_eq!(buf.write(&pkt).unwrap(), 50);
        let mut raw = [0u8; HEADER_SIZE];
        mem.read_slice(&mut raw[..30], GuestAddress(0x10000))
            .unwrap();
        mem.read_slice(&mut raw[30..], GuestAddress(0x20000))
            .unwrap();
        assert_eq!(Header::from_bytes(&raw), sample_header(6));
        let chain = vq.build_desc_chain(&[desc(0x10000, 48, true)]).unwrap();
        let buf = RxBuffer::new(&mem, chain).unwrap();
        assert!(matches!(
            buf.write(&pkt).unwrap_err(),
            PacketError::RxTooSmall { .. }
        ));
    }
}
