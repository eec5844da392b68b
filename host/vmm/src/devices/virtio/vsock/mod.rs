//! virtio-vsock (device id 19) with Firecracker's hybrid AF_UNIX muxer.
//!
//! Layout (Firecracker's split):
//! - [`packet`]: the 44-byte virtio-vsock header and moving packets between descriptor chains
//!   and host buffers; the only code that reads or writes guest memory for vsock.
//! - [`csm`]: one stream connection's state machine (handshake, credit flow control, half
//!   close, reset).
//! - [`unix`]: the muxer between guest vsock ports and host Unix sockets (`CONNECT <port>\n`
//!   on `uds_path`, guest connections to `<uds_path>_<port>`).
//! - [`model`]: the queue-processing core (tx queue → muxer, muxer → rx queue) shared by both
//!   transports: the virtio-mmio worker ([`event_handler`]) and the vhost-user back end
//!   ([`crate::vhost_user::vsock`]).
//! - [`device`]: the [`crate::devices::virtio::VirtioDevice`] for the builtin VMM.
//!
//! Owns everything between the guest's vsock queues and host Unix sockets. Must never trust a
//! header field: lengths, ports and ops are validated, a misbehaving guest connection is reset,
//! and no guest action can make the host buffer more than a fixed amount per connection.

pub mod csm;
pub mod device;
pub mod event_handler;
pub mod model;
pub mod packet;
pub mod unix;

pub use device::Vsock;
pub use model::VsockModel;

/// The host's context id (well-known, virtio 1.2 §5.10).
pub const HOST_CID: u64 = 2;

/// Queue indices (virtio 1.2 §5.10.2).
pub const RX_QUEUE: u16 = 0;
/// The driver → device queue.
pub const TX_QUEUE: u16 = 1;
/// The event queue (transport reset events); husk never posts to it.
pub const EVENT_QUEUE: u16 = 2;
/// Number of queues the device has.
pub const NUM_QUEUES: usize = 3;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Largest payload one packet may carry (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_BUF_SIZE: u32 = 64 * 1024;
