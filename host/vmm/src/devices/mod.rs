//! Every device the VMM emulates, one folder each: `legacy/` (8250 serial, i8042), `pseudo/`
//! (boot timer), `virtio/` (models, the mmio transport). [`bus`] routes guest port and MMIO
//! accesses to them.
//!
//! Devices must never touch KVM: the builder registers their eventfds (ioeventfd, irqfd) with
//! the VM, so every device runs and is tested without `/dev/kvm`.

pub mod bus;
pub mod legacy;
pub mod pseudo;
pub mod virtio;
