//! The virtio device models and the contract between a model and its transport.
//!
//! A model (`vsock/`, `block/`, `rng/`, `fs/`) owns a device's behaviour: its features, config
//! space and what it does with the buffers on its queues. A transport owns how the guest finds
//! and configures it: `transport::mmio` for the builtin VMM, [`crate::vhost_user`] for QEMU.
//! Both hand a model the same things on activation ([`ActivateContext`]): guest memory, the
//! negotiated `virtio_queue::Queue`s, one kick eventfd per queue and an [`Interrupt`].
//!
//! Models must never touch KVM or MMIO registers, and must never trust a descriptor: every
//! chain is walked through `virtio_queue` (which bounds-checks addresses against guest memory
//! and rejects loops) and every length a model reads is checked before use.
//!
//! net (tap) gets its own folder here with the same split (device, event handling) when the
//! builtin back end takes over pod networking from QEMU.

pub mod block;
pub mod chains;
pub mod fs;
pub mod rng;
pub mod transport;
pub mod vsock;

use std::fmt;
use std::io;
use std::sync::Arc;

use virtio_queue::Queue;

use crate::seccomp::Enforcement;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as the VMM maps it (no dirty bitmap).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// virtio device ids (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bit every husk device offers: virtio 1.x (no legacy interface).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// How a model tells the driver that something happened.
pub trait Interrupt: Send + Sync + fmt::Debug {
    /// Buffers were added to the used ring of `queue`.
    fn signal_used_queue(&self, queue: u16) -> io::Result<()>;
    /// The device's config space changed.
    fn signal_config_change(&self) -> io::Result<()>;
}

/// What a model gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    /// The queues the driver set up, in index order, ready.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled when the driver kicks it.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<dyn Interrupt>,
    /// How the device's worker threads confine themselves ([`crate::seccomp`]).
    pub seccomp: Enforcement,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("{device}: expected {expected} queues, the driver set up {got}")]
    QueueCount {
        device: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{device}: {what}")]
    Io {
        device: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{device}: {detail}")]
    Backend {
        device: &'static str,
        detail: String,
    },
}

/// A virtio device model, as a transport sees it.
pub trait VirtioDevice: Send + fmt::Debug {
    /// Short name for logs and errors (`vsock`, `block`).
    fn name(&self) -> &'static str;
    /// The virtio device id (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers.
    fn device_features(&self) -> u64;
    /// The features the driver accepted (a subset of [`Self::device_features`]).
    fn set_acked_features(&mut self, acked: u64);
    /// Reads device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues (typically on a worker thread of its own).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving and forgets the queues (driver reset or VM stop); joins any worker.
    fn reset(&mut self);
    /// Whether [`Self::activate`] succeeded and no reset followed.
    fn is_activated(&self) -> bool;
}

/// Copies `data[offset..]` of a config space into `out`, zero past its end (never panics).
pub fn read_config_bytes(config: &[u8], offset: u64, out: &mut [u8]) {
    out.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(out.len());
        out[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
