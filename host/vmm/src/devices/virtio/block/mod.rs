//! virtio-blk (virtio 1.2 §5.2) over a raw image file: read-only or read-write, IN / OUT /
//! FLUSH / GET_ID, capacity in 512-byte sectors.
//!
//! Split: [`request`] parses one descriptor chain into a checked request; [`device`] owns the
//! disk ([`BlockCore`]: executes requests and drains a `virtio_queue::Queue`, shared with the
//! vhost-user back end in `crate::vhost_user::block`) and the [`Block`] model for the mmio
//! transport, whose worker is the shared request-queue worker
//! (`transport::worker::spawn_request_queue`).
//!
//! Must never trust a descriptor: a request whose status byte cannot be written is dropped
//! (returned to the guest with a used length of 0), any other malformed request completes with
//! VIRTIO_BLK_S_IOERR (or UNSUPP for an unknown type); nothing the guest writes can make it
//! panic or touch memory outside guest RAM or bytes outside the image.

pub mod device;
pub mod request;

pub use device::{Block, BlockCore, BlockError};

/// The sector size of the virtio-blk protocol (capacity and request sectors count these).
pub const SECTOR_SIZE: u64 = 512;
/// The largest (and offered) size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID serial (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

#[cfg(test)]
pub(crate) mod testing;
