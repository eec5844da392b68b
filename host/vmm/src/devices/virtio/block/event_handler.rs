//! What the block model's worker thread does when the driver kicks the request queue: drain it
//! through the shared [`BlockCore`] and raise the used-buffer interrupt when the driver wants
//! one.
//!
//! Owns the activated queue and the guest memory for the worker's lifetime. Must never parse a
//! request itself (that is [`BlockCore`]'s job, shared with the vhost-user back end).

use std::sync::{Arc, Mutex};

use tracing::warn;
use virtio_queue::Queue;

use super::BlockCore;
use crate::devices::virtio::transport::worker::EventHandler;
use crate::devices::virtio::{GuestMemoryMmap, Interrupt};

/// The request queue's index.
const REQUEST_QUEUE: u16 = 0;

/// The worker-side state of an activated block device.
#[derive(Debug)]
pub struct BlockHandler {
    core: Arc<Mutex<BlockCore>>,
    queue: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
}

impl BlockHandler {
    pub fn new(
        core: Arc<Mutex<BlockCore>>,
        queue: Queue,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
    ) -> Self {
        Self {
            core,
            queue,
            mem,
            interrupt,
        }
    }
}

impl EventHandler for BlockHandler {
    fn handle(&mut self, _index: usize) {
        // A poisoned lock means an earlier request panicked; the disk state is still valid.
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        match core.process_queue(&mut self.queue, REQUEST_QUEUE, &self.mem) {
            Ok(true) => {
                if let Err(e) = self.interrupt.signal_used_queue(REQUEST_QUEUE) {
                    warn!(
                        device = "block",
                        queue = REQUEST_QUEUE,
                        "cannot raise the interrupt: {e}"
                    );
                }
            }
            Ok(false) => {}
            Err(e) => warn!("{e}"),
        }
    }
}
