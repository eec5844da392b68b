//! KVM state: the `/dev/kvm` handle ([`kvm`]), guest RAM ([`memory`]), the VM fd with its
//! irqchip and eventfd registrations ([`vm`]) and the vCPU threads with their exit loop
//! ([`vcpu`]).
//!
//! Everything that issues KVM ioctls lives here (and in `arch` for register contents). Must
//! never know about specific devices: exits are dispatched on the buses.

pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
