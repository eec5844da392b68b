//! Legacy port-IO devices: the 8250 serial console ([`serial`]) and the i8042 keyboard
//! controller, kept for its CPU-reset command ([`i8042`]).
//!
//! Devices here never touch KVM: their interrupt and reset lines are eventfds the builder
//! registers (irqfd) or the running VM waits on.

pub mod i8042;
pub mod serial;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An eventfd as a vm-superio interrupt/reset line.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The eventfd behind it.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
