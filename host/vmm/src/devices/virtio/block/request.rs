//! Parsing one virtio-blk descriptor chain (virtio 1.2 §5.2.6) into a checked [`Request`]:
//! a device-readable header of at least 16 bytes (type, reserved, sector), data descriptors
//! whose direction matches the type, and a device-writable status descriptor last.
//!
//! Owns the shape checks only (directions, sizes, sector arithmetic against the capacity,
//! every buffer inside guest memory). Must never do IO nor write guest memory.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use super::SECTOR_SIZE;
use crate::devices::virtio::GuestMemoryMmap;

/// The request header (`struct virtio_blk_outhdr`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RequestHeader {
    pub request_type: u32,
    pub reserved: u32,
    pub sector: u64,
}

// SAFETY: plain integers, no padding (4 + 4 + 8 bytes, 8-aligned), any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// Size of the request header in guest memory.
pub const HEADER_LEN: u32 = size_of::<RequestHeader>() as u32;

/// What the driver asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Read the serial id.
    GetId,
    /// Anything else (answered with VIRTIO_BLK_S_UNSUPP).
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// One data buffer in guest memory (checked to lie inside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A checked request, ready to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_type: RequestType,
    pub sector: u64,
    pub data: Vec<Segment>,
    /// Sum of the data lengths.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a valid request. Those marked "dropped" leave no writable status byte
/// and are returned with a used length of 0; the others complete with an error status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Dropped.
    #[error(
        "chain at head {head} ends with NEXT set (a loop, a bad index or an unreadable descriptor)"
    )]
    ChainTruncated { head: u16 },
    /// Dropped.
    #[error(
        "chain at head {head} has {count} descriptors, at least a header and a status are needed"
    )]
    TooFewDescriptors { head: u16, count: usize },
    /// Dropped.
    #[error(
        "status descriptor {addr:#x}+{len} is not device-writable, empty or outside guest memory"
    )]
    BadStatus { addr: u64, len: u32 },
    #[error("header descriptor {addr:#x}+{len} is device-writable, shorter than {HEADER_LEN} bytes or unreadable")]
    BadHeader { addr: u64, len: u32 },
    #[error(
        "data descriptor {addr:#x}+{len} has the wrong direction for a {request_type:?} request"
    )]
    DataDirection {
        addr: u64,
        len: u32,
        request_type: RequestType,
    },
    #[error("data descriptor {addr:#x}+{len} is empty or outside guest memory")]
    BadSegment { addr: u64, len: u32 },
    #[error("data length {len} is not a multiple of {SECTOR_SIZE}")]
    Unaligned { len: u64 },
    #[error("sectors {sector}+{count} end past the disk's {capacity} sectors")]
    PastEnd {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("{request_type:?} request carries {count} data descriptors, none expected")]
    UnexpectedData {
        request_type: RequestType,
        count: usize,
    },
    #[error("{request_type:?} request without a data descriptor")]
    NoData { request_type: RequestType },
}

impl RequestError {
    /// Whether the request can still be answered with a status byte.
    pub fn is_dropped(&self) -> bool {
        matches!(
            self,
            Self::ChainTruncated { .. } | Self::TooFewDescriptors { .. } | Self::BadStatus { .. }
        )
    }
}

/// The outcome of parsing: a request, or an error and (when writable) the status address.
#[derive(Debug)]
pub struct Parsed {
    pub result: Result<Request, RequestError>,
    pub status: Option<GuestAddress>,
}

/// Parses the descriptors of the chain headed by `head` (as yielded by its iterator) against
/// a disk of `capacity` sectors.
pub fn parse(head: u16, descs: &[Descriptor], mem: &GuestMemoryMmap, capacity: u64) -> Parsed {
    let fail = |e, status| Parsed {
        result: Err(e),
        status,
    };
    let (Some(first), Some(last)) = (descs.first(), descs.last()) else {
        return fail(RequestError::TooFewDescriptors { head, count: 0 }, None);
    };
    if last.has_next() {
        return fail(RequestError::ChainTruncated { head }, None);
    }
    if descs.len() < 2 {
        return fail(
            RequestError::TooFewDescriptors {
                head,
                count: descs.len(),
            },
            None,
        );
    }
    // The status is the last byte of the last (device-writable) descriptor.
    let status = (last.is_write_only() && last.len() >= 1)
        .then(|| last.addr().checked_add(u64::from(last.len()) - 1))
        .flatten()
        .filter(|&a| mem.check_range(a, 1));
    let Some(status) = status else {
        return fail(
            RequestError::BadStatus {
                addr: last.addr().0,
                len: last.len(),
            },
            None,
        );
    };
    let result = parse_body(first, &descs[1..descs.len() - 1], mem, capacity, status);
    Parsed {
        result,
        status: Some(status),
    }
}

fn parse_body(
    first: &Descriptor,
    data_descs: &[Descriptor],
    mem: &GuestMemoryMmap,
    capacity: u64,
    status: GuestAddress,
) -> Result<Request, RequestError> {
    let bad_header = RequestError::BadHeader {
        addr: first.addr().0,
        len: first.len(),
    };
    if first.is_write_only() || first.len() < HEADER_LEN {
        return Err(bad_header);
    }
    let header: RequestHeader = mem.read_obj(first.addr()).map_err(|_| bad_header)?;
    let request_type = RequestType::from(u32::from_le(header.request_type));
    let sector = u64::from_le(header.sector);

    let mut data = Vec::with_capacity(data_descs.len());
    let mut data_len = 0u64;
    for d in data_descs {
        let (addr, len) = (d.addr(), d.len());
        let wants_write = match request_type {
            RequestType::In | RequestType::GetId => true,
            RequestType::Out => false,
            RequestType::Flush | RequestType::Unsupported(_) => d.is_write_only(),
        };
        if d.is_write_only() != wants_write {
            return Err(RequestError::DataDirection {
                addr: addr.0,
                len,
                request_type,
            });
        }
        if len == 0 || !mem.check_range(addr, len as usize) {
            return Err(RequestError::BadSegment { addr: addr.0, len });
        }
        data_len += u64::from(len);
        data.push(Segment { addr, len });
    }
    match request_type {
        RequestType::In | RequestType::Out => {
            if data.is_empty() {
                return Err(RequestError::NoData { request_type });
            }
            if data_len % SECTOR_SIZE != 0 {
                return Err(RequestError::Unaligned { len: data_len });
            }
            let count = data_len / SECTOR_SIZE;
            if sector.checked_add(count).is_none_or(|end| end > capacity) {
                return Err(RequestError::PastEnd {
                    sector,
                    count,
                    capacity,
                });
            }
        }
        RequestType::GetId => {
            if data.is_empty() {
                return Err(RequestError::NoData { request_type });
            }
        }
        RequestType::Flush => {
            if !data.is_empty() {
                return Err(RequestError::UnexpectedData {
                    request_type,
                    count: data.len(),
                });
            }
        }
        RequestType::Unsupported(_) => {}
    }
    Ok(Request {
        request_type,
        sector,
        data,
        data_len,
        status,
    })
}
