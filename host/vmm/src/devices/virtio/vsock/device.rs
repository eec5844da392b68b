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
                self.model = e.model;
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
