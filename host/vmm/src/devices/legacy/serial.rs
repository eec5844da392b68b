//! The 8250 UART at 0x3f8 (IRQ 4), vm-superio's model on the port bus: what the guest writes
//! goes to any `Write` (a log file, a pty), and its interrupt line is an eventfd the builder
//! registers as an irqfd.
//!
//! Owns the port-bus adaptation only. Must never block the vCPU on a slow reader beyond the
//! write itself, and never interpret what the guest prints.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// Where serial output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// The guest's serial console.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, SerialOut>,
    write_errors: u64,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("write_errors", &self.write_errors)
            .finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger::new(irq), out),
            write_errors: 0,
        }
    }

    /// The interrupt eventfd (registered as an irqfd on [`crate::arch::x86_64::layout::SERIAL_IRQ`]).
    pub fn irq_event(&self) -> &EventFd {
        self.serial.interrupt_evt().event()
    }

    /// Queues bytes for the guest to read (console input); returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.serial.write(off, value) {
            self.write_errors += 1;
            if self.write_errors == 1 {
                tracing::warn!(error = ?e, "serial: output failed; further failures are counted silently");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_writer() {
        let out = Shared::default();
        let mut s = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(out.clone()),
        );
        s.write(0, b"H");
        s.write(0, b"i");
        assert_eq!(&*out.0.lock().unwrap(), b"Hi");
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn input_raises_the_interrupt_when_enabled() {
        let mut s = SerialDevice::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(std::io::sink()),
        );
        // IER: data-available interrupt.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert_eq!(s.irq_event().read().unwrap(), 1);
        let mut d = [0u8];
        s.read(0, &mut d);
        assert_eq!(d, *b"x");
        // Out-of-range offsets are ignored, not panics.
        s.write(u64::MAX, &[1]);
        s.read(u64::MAX, &mut d);
    }
}
