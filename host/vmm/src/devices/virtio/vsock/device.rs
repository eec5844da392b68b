//! The vsock [`VirtioDevice`] for the builtin VMM (virtio-mmio): device id 19, queues rx, tx
//! and event, config space `guest_cid` (le u64), feature VERSION_1.
//!
//! Owns the model between activations: the host listener exists from [`Vsock::new`] on, so
//! host clients may connect before the guest driver is up (their REQUEST waits for rx
//! buffers). Must never leave a worker behind: [`VirtioDevice::reset`] and drop join it.

use std::path::Path;

use super::event_handler::Worker;
use super::model::VsockModel;
use super::unix::MuxerError;
use super::{NUM_QUEUES, QUEUE_SIZE};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

const DEVICE: &str = "vsock";

/// virtio-vsock over the hybrid Unix-socket muxer.
#[derive(Debug)]
pub struct Vsock {
    guest_cid: u64,
    acked_features: u64,
    queue_sizes: [u16; NUM_QUEUES],
    /// Present while not activated.
    model: Option<VsockModel>,
    worker: Option<Worker>,
}

impl Vsock {
    /// A device for guest `guest_cid` whose muxer listens on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        Ok(Self {
            guest_cid,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            model: Some(VsockModel::new(uds_path, guest_cid)?),
            worker: None,
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(mut model) => {
                    model.reset();
                    self.model = Some(model);
                }
                None => tracing::error!("vsock: the worker thread panicked"),
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        DEVICE
    }

    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked & self.device_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::Backend {
                device: DEVICE,
                detail: "already activated".into(),
            });
        }
        let model = self.model.take().ok_or_else(|| ActivateError::Backend {
            device: DEVICE,
            detail: "the device model was lost (a previous worker panicked)".into(),
        })?;
        match Worker::spawn(model, ctx) {
            Ok(worker) => {
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                self.model = e.model.map(|m| *m);
                Err(e.error)
            }
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }

    fn is_activated(&self) -> bool {
        self.worker.is_some()
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::time::Duration;

    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::super::packet::tests::{desc, test_mem};
    use super::super::packet::{Header, HEADER_SIZE, OP_REQUEST};
    use super::*;
    use crate::devices::virtio::Interrupt;

    /// Counts used-queue signals on an eventfd the test can wait on.
    #[derive(Debug)]
    struct TestInterrupt(EventFd);

    impl Interrupt for TestInterrupt {
        fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
            self.0.write(1)
        }
        fn signal_config_change(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_readable(fd: i32, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap();
        // SAFETY: one valid pollfd, its count, a finite timeout.
        unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
    }

    #[test]
    fn describes_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Vsock::new(42, &dir.path().join("v.sock")).unwrap();
        assert_eq!(d.device_type(), TYPE_VSOCK);
        assert_eq!(d.queue_max_sizes().len(), 3);
        assert_eq!(d.device_features(), 1 << VIRTIO_F_VERSION_1);
        let mut cfg = [0u8; 8];
        d.read_config(0, &mut cfg);
        assert_eq!(u64::from_le_bytes(cfg), 42);
        d.set_acked_features(u64::MAX);
        assert_eq!(d.acked_features(), 1 << VIRTIO_F_VERSION_1);
        assert!(!d.is_activated());
    }

    #[test]
    fn worker_serves_the_queues_and_reset_joins_it() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mem = test_mem();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x4000), 16);
        let ev = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        rx.add_desc_chains(&[desc(0x20000, 4096, true)], 0).unwrap();
        let mut d = Vsock::new(3, &uds).unwrap();
        // Wrong queue count: refused, the device stays usable.
        let irq = Arc::new(TestInterrupt(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let bad = ActivateContext {
            mem: mem.clone(),
            queues: vec![rx.create_queue::<Queue>().unwrap()],
            queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            interrupt: irq.clone(),
            seccomp: crate::seccomp::Enforcement::Kill,
        };
        assert!(matches!(
            d.activate(bad),
            Err(ActivateError::QueueCount {
                expected: 3,
                got: 1,
                ..
            })
        ));
        let kicks: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![
                rx.create_queue().unwrap(),
                tx.create_queue().unwrap(),
                ev.create_queue().unwrap(),
            ],
            queue_events: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            interrupt: irq.clone(),
            seccomp: crate::seccomp::Enforcement::Kill,
        };
        d.activate(ctx).unwrap();
        assert!(d.is_activated());
        // A host client's CONNECT reaches the guest's rx buffer, with an interrupt.
        let mut c = UnixStream::connect(&uds).unwrap();
        c.write_all(b"CONNECT 1024\n").unwrap();
        assert!(
            wait_readable(irq.0.as_raw_fd(), Duration::from_secs(5)),
            "no interrupt"
        );
        let mut raw = [0u8; HEADER_SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x20000)).unwrap();
        let req = Header::from_bytes(&raw);
        assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 1024, 3));
        // Reset stops and joins the worker; the listener stays for the next activation.
        d.reset();
        assert!(!d.is_activated());
        // The worker handed the model back, so its thread has returned (and closed its
        // epoll set and stop eventfd clone).
        assert!(uds.exists());
        // A second activation works (the model came back), and drop joins that worker too.
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![
                rx.create_queue().unwrap(),
                tx.create_queue().unwrap(),
                ev.create_queue().unwrap(),
            ],
            queue_events: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            interrupt: irq,
            seccomp: crate::seccomp::Enforcement::Kill,
        };
        d.activate(ctx).unwrap();
        drop(c);
        drop(d);
        drop(kicks);
        assert!(!uds.exists(), "the listener socket goes with the device");
    }
}
