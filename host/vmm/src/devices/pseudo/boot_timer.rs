//! Firecracker's boot timer: an MMIO device at the first slot of the MMIO gap. When the guest
//! writes the magic byte 123 at offset 0 (its init does so just before exec'ing the real init),
//! the time since the VM build started is recorded once, logged once, and made available to
//! the owner through a [`BootTimeHandle`].
//!
//! Owns the measurement. Must never block the vCPU or react to anything but the magic write.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::devices::bus::BusDevice;

/// The byte the guest writes at offset 0 when it has booted.
pub const MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE: u8 = 123;
/// Size of the device's window.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;

/// How long the guest took to boot, from the start of the VM build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTime {
    pub wall: Duration,
    /// Process CPU time spent meanwhile (VMM and vCPU threads), when the clock is readable.
    pub cpu: Option<Duration>,
}

/// The owner's view of the measurement; clones share it.
#[derive(Debug, Clone, Default)]
pub struct BootTimeHandle(Arc<OnceLock<BootTime>>);

impl BootTimeHandle {
    /// The boot time, once the guest has signalled it.
    pub fn get(&self) -> Option<BootTime> {
        self.0.get().copied()
    }
}

/// CPU time this process has used so far.
pub fn process_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// The boot timer device.
#[derive(Debug)]
pub struct BootTimer {
    start: Instant,
    start_cpu: Option<Duration>,
    result: BootTimeHandle,
}

impl BootTimer {
    /// A timer measuring from `start` (wall) and `start_cpu` (process CPU time).
    pub fn new(start: Instant, start_cpu: Option<Duration>) -> Self {
        Self {
            start,
            start_cpu,
            result: BootTimeHandle::default(),
        }
    }

    /// Where the owner reads the result.
    pub fn handle(&self) -> BootTimeHandle {
        self.result.clone()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE) {
            return;
        }
        let wall = self.start.elapsed();
        let cpu = match (process_cpu_time(), self.start_cpu) {
            (Some(now), Some(then)) => now.checked_sub(then),
            _ => None,
        };
        if self.result.0.set(BootTime { wall, cpu }).is_ok() {
            tracing::info!(
                wall_us = wall.as_micros() as u64,
                cpu_us = cpu.map(|c| c.as_micros() as u64),
                "guest boot time"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_records_once() {
        let start = Instant::now();
        let mut t = BootTimer::new(start, process_cpu_time());
        let h = t.handle();
        t.write(0, &[1]);
        t.write(1, &[MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE]);
        t.write(0, &[]);
        assert_eq!(h.get(), None);
        t.write(0, &[MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE]);
        let first = h.get().unwrap();
        assert!(first.wall <= start.elapsed());
        assert!(first.cpu.is_some());
        t.write(0, &[MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE]);
        assert_eq!(h.get(), Some(first), "the first signal wins");
        let mut d = [9u8; 4];
        t.read(0, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
