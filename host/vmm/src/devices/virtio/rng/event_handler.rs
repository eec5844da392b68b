//! What the rng model's worker thread does on a kick: drain the queue through [`RngCore`] and
//! raise the used-buffer interrupt when the driver wants one.
//!
//! Owns the activated queue and guest memory for the worker's lifetime; must never fill a
//! buffer itself.

use std::sync::Arc;

use tracing::warn;
use virtio_queue::Queue;

use super::RngCore;
use crate::devices::virtio::transport::worker::EventHandler;
use crate::devices::virtio::{GuestMemoryMmap, Interrupt};

/// The request queue's index.
const REQUEST_QUEUE: u16 = 0;

/// The worker-side state of an activated rng device.
#[derive(Debug)]
pub struct RngHandler {
    core: RngCore,
    queue: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
}

impl RngHandler {
    pub fn new(queue: Queue, mem: GuestMemoryMmap, interrupt: Arc<dyn Interrupt>) -> Self {
        Self {
            core: RngCore,
            queue,
            mem,
            interrupt,
        }
    }
}

impl EventHandler for RngHandler {
    fn handle(&mut self, _index: usize) {
        match self
            .core
            .process_queue(&mut self.queue, REQUEST_QUEUE, &self.mem)
        {
            Ok(true) => {
                if let Err(e) = self.interrupt.signal_used_queue(REQUEST_QUEUE) {
                    warn!(
                        device = "rng",
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
