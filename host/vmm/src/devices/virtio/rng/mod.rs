//! virtio-rng (virtio 1.2 §5.4, device type 4): one request queue whose device-writable
//! buffers the device fills with bytes from the host kernel's `getrandom(2)`.
//!
//! Split as for block: [`device`] holds [`RngCore`] (drains a `virtio_queue::Queue`, at most
//! [`MAX_BYTES_PER_REQUEST`] per chain) and the [`Rng`] model for the mmio transport, served by
//! the shared request-queue worker (`transport::worker::spawn_request_queue`).
//!
//! Must never write a device-readable buffer or outside guest memory: a chain with a readable
//! descriptor, a broken link or a buffer outside guest RAM is returned unfilled (used length 0).

pub mod device;

pub use device::{Rng, RngCore, RngError};

/// The largest (and offered) size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most random bytes one chain gets (the driver asks again for more).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
