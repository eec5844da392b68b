//! virtio transports: how a driver finds, configures and kicks a device model. Only
//! virtio-mmio here (no PCI, as in Firecracker); the vhost-user transport for QEMU lives in
//! [`crate::vhost_user`]. [`worker`] is the event thread the models run on behind virtio-mmio.

pub mod mmio;
pub mod worker;
