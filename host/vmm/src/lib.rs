//! husk's embedded KVM VMM (crate `husk-vmm`): guest memory, vCPUs, the Linux boot protocol,
//! and Firecracker's device set (serial, i8042, a boot timer, virtio-mmio vsock, block, rng and a
//! vhost-user front end for virtio-fs).
//!
//! One device code, two transports: each virtio device model (`devices::virtio::<dev>`) works on
//! `virtio_queue::Queue`s in guest memory and signals through [`devices::virtio::Interrupt`].
//! The builtin VMM drives the models through its virtio-mmio transport; the `qemu` back end
//! drives the very same models as vhost-user back ends ([`vhost_user`], binary
//! `husk-vhost-user`).
//!
//! The guest is untrusted: every address, length and index read from guest memory or a device
//! register is checked, and a malformed request ends in an error or a dropped request, never a
//! panic. This crate must never speak the agent protocol or know about containers.

pub mod arch;
pub mod builder;
pub mod devices;
pub mod seccomp;
pub mod vhost_user;
pub mod vmm;
pub mod vstate;
