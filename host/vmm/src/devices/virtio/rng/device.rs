//! The virtio-rng request engine ([`RngCore`]) and model ([`Rng`]).
//!
//! [`RngCore`] drains a `virtio_queue::Queue`: each chain must be all device-writable and
//! inside guest memory; it is filled front to back with up to
//! [`MAX_BYTES_PER_REQUEST`] bytes from `getrandom(2)`. Must never block on entropy for long
//! (getrandom without flags only blocks before the host's pool is initialised) and never
//! write anything but the chain's own writable buffers.

use std::io;
use tracing::{debug, warn};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryBackend};

use super::{MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
use crate::devices::virtio::chains::{self, RingError};
use crate::devices::virtio::transport::worker::{self, Worker};
use crate::devices::virtio::{
    ActivateContext, ActivateError, GuestMemoryMmap, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1,
};

/// The model's name in logs and errors.
const NAME: &str = "rng";

/// Why a queue could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// Why one chain was returned unfilled.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("chain ends with NEXT set (a loop, a bad index or an unreadable descriptor)")]
    Truncated,
    #[error("descriptor {addr:#x}+{len} is device-readable")]
    Readable { addr: u64, len: u32 },
    #[error("descriptor {addr:#x}+{len} is outside guest memory")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("getrandom failed")]
    Random(#[source] io::Error),
    #[error("cannot write {len} bytes at {addr:#x}")]
    Write { addr: u64, len: usize },
}

/// The rng request engine (stateless; a type so both transports could share it).
#[derive(Debug, Default)]
pub struct RngCore;

impl RngCore {
    /// Serves every available chain of `queue`; true when the driver must be notified.
    pub fn process_queue(
        &mut self,
        queue: &mut Queue,
        queue_index: u16,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, RngError> {
        Ok(chains::serve(
            NAME,
            queue,
            queue_index,
            mem,
            |head, descs| match fill(descs, mem) {
                Ok(n) => n,
                Err(e) => {
                    if matches!(e, ChainError::Random(_)) {
                        warn!(device = NAME, queue = queue_index, head, "{e}");
                    } else {
                        debug!(device = NAME, queue = queue_index, head, "bad chain: {e}");
                    }
                    0
                }
            },
        )?)
    }
}

/// Checks the whole chain, then fills it; the bytes written.
fn fill(descs: &[Descriptor], mem: &GuestMemoryMmap) -> Result<u32, ChainError> {
    if descs.last().is_some_and(|d| d.has_next()) {
        return Err(ChainError::Truncated);
    }
    for d in descs {
        let (addr, len) = (d.addr().0, d.len());
        if !d.is_write_only() {
            return Err(ChainError::Readable { addr, len });
        }
        if !mem.check_range(d.addr(), len as usize) {
            return Err(ChainError::OutOfMemory { addr, len });
        }
    }
    let mut budget = MAX_BYTES_PER_REQUEST;
    let mut buf = Vec::new();
    let mut written = 0u32;
    for d in descs {
        let n = budget.min(d.len() as usize);
        if n == 0 {
            continue;
        }
        buf.resize(n, 0);
        getrandom(&mut buf).map_err(ChainError::Random)?;
        mem.write_slice(&buf, d.addr())
            .map_err(|_| ChainError::Write {
                addr: d.addr().0,
                len: n,
            })?;
        budget -= n;
        written += n as u32;
    }
    Ok(written)
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes for the whole call;
        // getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// The virtio-rng model for the mmio transport.
#[derive(Debug, Default)]
pub struct Rng {
    acked: u64,
    worker: Option<Worker>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        NAME
    }

    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked = acked & self.device_features();
    }

    /// virtio-rng has no config space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let worker = worker::spawn_request_queue(NAME, ctx, |queue, index, mem| {
            RngCore.process_queue(queue, index, mem)
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
        self.acked = 0;
    }

    fn is_activated(&self) -> bool {
        self.worker.is_some()
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::block::testing::{test_mem, TestQueue, DATA, MEM_SIZE};

    #[test]
    fn fills_writable_buffers_up_to_the_bound() {
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        tq.push_chain(&[(DATA, 64, true), (DATA + 0x100, 32, true)]);
        // Bigger than the bound: only the first MAX bytes are filled.
        let big = (MAX_BYTES_PER_REQUEST + 4096) as u32;
        tq.push_chain(&[(DATA + 0x1000, big, true)]);
        let mut q = tq.queue();
        assert!(RngCore.process_queue(&mut q, 0, &mem).unwrap());
        assert_eq!(tq.used(0), (0, 96));
        assert_eq!(tq.used(1), (2, MAX_BYTES_PER_REQUEST as u32));
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_ne!(got, [0; 64], "64 random bytes are not all zero");
        let mut tail = [0u8; 4096];
        let end = DATA + 0x1000 + MAX_BYTES_PER_REQUEST as u64;
        mem.read_slice(&mut tail, GuestAddress(end)).unwrap();
        assert_eq!(tail, [0; 4096]);
    }

    #[test]
    fn hostile_chains_are_returned_unfilled() {
        let mem = test_mem();
        let mut tq = TestQueue::new(&mem);
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        // A readable descriptor.
        tq.push_chain(&[(DATA, 16, true), (DATA + 0x100, 16, false)]);
        // Outside guest memory, and straddling its end.
        tq.push_chain(&[(MEM_SIZE + 0x1000, 16, true)]);
        tq.push_chain(&[(MEM_SIZE - 8, 16, true)]);
        tq.push_chain(&[(u64::MAX - 3, 16, true)]);
        // A loop.
        tq.raw(5, DATA, 16, write | next, 6);
        tq.raw(6, DATA + 0x10, 16, write | next, 5);
        tq.push_head(5);
        // A zero-length buffer is fine, it gets nothing.
        tq.raw(7, DATA + 0x200, 0, write, 0);
        tq.push_head(7);
        let mut q = tq.queue();
        assert!(RngCore.process_queue(&mut q, 0, &mem).unwrap());
        let used: Vec<_> = (0..6).map(|n| tq.used(n)).collect();
        assert_eq!(used, vec![(0, 0), (2, 0), (3, 0), (4, 0), (5, 0), (7, 0)]);
        let mut untouched = [0u8; 0x210];
        mem.read_slice(&mut untouched, GuestAddress(DATA)).unwrap();
        assert_eq!(untouched, [0; 0x210]);
    }

    #[test]
    fn serves_a_request_through_the_mmio_transport() {
        use std::time::Duration;

        use crate::devices::bus::BusDevice;
        use crate::devices::virtio::block::testing::{bring_up, wait_readable};
        use crate::devices::virtio::transport::mmio::{MmioTransport, QUEUE_NOTIFY};

        let mem = test_mem();
        let mut t = MmioTransport::new(mem.clone(), Box::new(Rng::new())).unwrap();
        let mut tq = TestQueue::new(&mem);
        bring_up(&mut t, &tq);
        assert!(t.device().is_activated());
        tq.push_chain(&[(DATA, 32, true)]);
        t.write(QUEUE_NOTIFY, &0u32.to_le_bytes());
        assert!(wait_readable(t.irq_event(), Duration::from_secs(10)));
        assert_eq!(tq.used(0), (0, 32));
        t.write(0x70, &0u32.to_le_bytes());
        assert!(!t.device().is_activated());
    }

    #[test]
    fn model_advertises_type_4_with_one_queue() {
        let rng = Rng::new();
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
        assert_eq!(rng.device_features(), 1 << VIRTIO_F_VERSION_1);
    }
}
