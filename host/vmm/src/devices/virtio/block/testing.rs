//! Test-only driver side of a split virtqueue in test memory (on top of
//! `virtio_queue::mock::MockSplitQueue`), shared by the block and rng tests: place arbitrary,
//! possibly hostile, descriptors and chains, make them available, read the used ring back.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{FileOffset, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::devices::virtio::transport::mmio::MmioTransport;
use crate::devices::virtio::GuestMemoryMmap;

/// The test queue's size.
pub const QSIZE: u16 = 16;
/// Test guest memory size (2 MiB at 0).
pub const MEM_SIZE: u64 = 0x20_0000;
/// Where tests put their buffers.
pub const DATA: u64 = 0x10_0000;

/// Guest memory backed by a memfd (what vhost-user peers need), `size` bytes at 0.
pub fn memfd_mem(size: usize) -> GuestMemoryMmap {
    // SAFETY: a NUL-terminated name and valid flags; the returned fd is checked.
    let fd = unsafe { libc::memfd_create(c"husk-test-mem".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor this function owns from here on.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files(&[(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// One descriptor: address, length, device-writable.
pub type D = (u64, u32, bool);

pub struct TestQueue<'a> {
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    next_desc: u16,
    avail: u16,
}

impl<'a> TestQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        Self {
            vq: MockSplitQueue::new(mem, QSIZE),
            next_desc: 0,
            avail: 0,
        }
    }

    /// Writes descriptor `index` as is (flags and next included).
    pub fn raw(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Descriptor::new(addr, len, flags, next);
        self.vq
            .desc_table()
            .store(index, RawDescriptor::from(d))
            .unwrap();
    }

    /// Makes `head` available.
    pub fn push_head(&mut self, head: u16) {
        let avail = self.vq.avail();
        avail
            .ring()
            .ref_at(usize::from(self.avail % QSIZE))
            .unwrap()
            .store(head);
        self.avail = self.avail.wrapping_add(1);
        avail.idx().store(self.avail);
    }

    /// Adds a well-linked chain and makes it available; returns its head.
    pub fn push_chain(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let index = head + i as u16;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.raw(index, addr, len, flags, index + 1);
        }
        self.next_desc += descs.len() as u16;
        self.push_head(head);
        head
    }

    pub fn queue(&self) -> Queue {
        self.vq.create_queue().unwrap()
    }

    pub fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// The `n`th used element: (head, length).
    pub fn used(&self, n: u16) -> (u32, u32) {
        let e = self
            .vq
            .used()
            .ring()
            .ref_at(usize::from(n % QSIZE))
            .unwrap()
            .load();
        (e.id(), e.len())
    }
}

/// Waits until `fd` is readable, at most `timeout`; true if it is.
pub fn wait_readable(fd: &EventFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and the count is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n == 1
}

/// Drives `t` through the status handshake (virtio 1 only) with queue 0 placed where `tq`
/// has it, up to DRIVER_OK.
pub fn bring_up(t: &mut MmioTransport, tq: &TestQueue) {
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
    };
    use virtio_bindings::virtio_mmio::*;
    use virtio_queue::QueueT;

    let wr = |t: &mut MmioTransport, reg: u32, v: u32| t.write(u64::from(reg), &v.to_le_bytes());
    let q = tq.queue();
    wr(t, VIRTIO_MMIO_STATUS, ACK);
    wr(t, VIRTIO_MMIO_STATUS, ACK | DRIVER);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(t, VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
    wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
    wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table() as u32);
    wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_ring() as u32);
    wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, q.used_ring() as u32);
    wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    wr(
        t,
        VIRTIO_MMIO_STATUS,
        ACK | DRIVER | FEATURES_OK | DRIVER_OK,
    );
}
