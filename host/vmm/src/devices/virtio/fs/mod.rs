//! virtio-fs (virtio 1.2 §5.11, device type 26) for the builtin VMM, as a vhost-user front end
//! to an external `virtiofsd`: the guest's queues are served by virtiofsd directly, in shared
//! (memfd-backed) guest memory; this model only forwards the setup.
//!
//! [`device`] holds the [`Fs`] model: config space (tag + number of request queues), and on
//! activation the vhost-user handshake (owner, features, protocol features, memory table, and
//! for each queue its size, addresses, base, kick and call eventfds, then enable). The kick
//! eventfd is the transport's own (so with the builder's ioeventfd a guest kick goes straight
//! to virtiofsd); the call eventfds are watched by a worker thread that forwards them to
//! `Interrupt::signal_used_queue`.
//!
//! Must never touch the guest's FUSE traffic, and must never hand virtiofsd memory it cannot
//! map: a guest memory region without a file descriptor fails activation with a clear error.

pub mod device;

pub use device::{Fs, FsError};

/// Length of the tag field in config space (`struct virtio_fs_config`).
pub const TAG_LEN: usize = 36;
/// The largest (and offered) size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// The most request queues a device may have (the hiprio queue comes on top).
pub const MAX_REQUEST_QUEUES: u32 = 16;
