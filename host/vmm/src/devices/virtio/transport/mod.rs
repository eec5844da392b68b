//! virtio transports: how a driver finds, configures and kicks a device model. Only
//! virtio-mmio here (no PCI, as in Firecracker); the vhost-user transport for QEMU lives in
//! [`crate::vhost_user`].

pub mod mmio;
