//! The virtio-mmio transport (virtio 1.2 §4.2.2, version 2 register block): one 4 KiB window
//! per device on the MMIO bus, announced to Linux with `virtio_mmio.device=4K@<base>:<irq>`.
//!
//! STUB: the API below is the contract with the builder; the register block is to be written.
//! Owns the register state machine and queue configuration; must never process a queue's
//! buffers (that is the model's job) nor touch KVM (the builder registers
//! [`MmioTransport::queue_events`] as ioeventfds at `base + QUEUE_NOTIFY` with the queue index as
//! datamatch, and [`MmioTransport::irq_event`] as an irqfd).

use std::io;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::virtio::{GuestMemoryMmap, VirtioDevice};

/// Size of one device's register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are registered).
pub const QUEUE_NOTIFY: u64 = 0x50;

/// One virtio device behind a virtio-mmio register block.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queue_events: Vec<EventFd>,
    irq_event: EventFd,
}

impl MmioTransport {
    /// Wraps `device`; creates one kick eventfd per queue and the interrupt eventfd.
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> io::Result<Self> {
        let queue_events = device
            .queue_max_sizes()
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            queue_events,
            irq_event: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The kick eventfds, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Signalled (as an irqfd) whenever the device raises its interrupt.
    pub fn irq_event(&self) -> &EventFd {
        &self.irq_event
    }

    /// The wrapped model.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Stops the model (VM stop); the guest sees nothing.
    pub fn shutdown(&mut self) {
        self.device.reset();
    }

    #[allow(dead_code)]
    fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}
