//! The loop a request/response device (block, rng) runs over one queue: pop every available
//! chain, let the device handle it, put it on the used ring, re-check after re-enabling
//! notifications, and say whether the driver must be notified.
//!
//! Owns the ring bookkeeping only. Must never look inside a chain (the handler does) and must
//! never spin: a pass that finds nothing while the driver's index claims more (a bogus
//! available index) ends the loop.

use tracing::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};

use crate::devices::virtio::GuestMemoryMmap;

/// Why a queue could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("{device} queue {queue}: cannot return chain {head} to the used ring: {detail}")]
    UsedRing {
        device: &'static str,
        queue: u16,
        head: u16,
        detail: String,
    },
    #[error("{device} queue {queue}: the rings are unusable: {detail}")]
    Ring {
        device: &'static str,
        queue: u16,
        detail: String,
    },
}

/// Serves every available chain of `queue` (index `queue_index` of `device`, for errors and
/// logs) with `handle`, which gets the chain's head and descriptors and returns the used
/// length (bytes written to the guest; 0 for a dropped chain). True when the driver must be
/// notified.
pub fn serve(
    device: &'static str,
    queue: &mut Queue,
    queue_index: u16,
    mem: &GuestMemoryMmap,
    mut handle: impl FnMut(u16, &[Descriptor]) -> u32,
) -> Result<bool, RingError> {
    let ring = |e: virtio_queue::Error| RingError::Ring {
        device,
        queue: queue_index,
        detail: e.to_string(),
    };
    let mut used_any = false;
    loop {
        queue.disable_notification(mem).map_err(ring)?;
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            let head = chain.head_index();
            if head >= queue.size() {
                // No used element can name it: consume it and go on.
                debug!(
                    device,
                    queue = queue_index,
                    head,
                    "chain head past the queue, skipped"
                );
                continue;
            }
            let descs: Vec<Descriptor> = chain.collect();
            let len = handle(head, &descs);
            queue
                .add_used(mem, head, len)
                .map_err(|e| RingError::UsedRing {
                    device,
                    queue: queue_index,
                    head,
                    detail: e.to_string(),
                })?;
            used_any = true;
        }
        // Re-check after re-enabling: a chain added in between would otherwise wait for the
        // next kick. A pass that found nothing while the driver's index claims more means a
        // bogus available index: stop rather than spin.
        let more = queue.enable_notification(mem).map_err(ring)?;
        if !more || !popped {
            break;
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(ring)
}
