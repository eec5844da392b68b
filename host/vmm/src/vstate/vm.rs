//! The VM fd: memslots for guest RAM, the in-kernel irqchip (PIC + IOAPIC + LAPICs), PIT2,
//! KVM's TSS and identity-map pages, and the irqfd/ioeventfd registrations devices are wired
//! with.
//!
//! Owns VM-wide KVM state. Must never run vCPUs and never own devices: it only registers their
//! eventfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::Kvm;
use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::devices::virtio::GuestMemoryMmap;

/// Why a VM-level KVM call failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM: {0}")]
    Create(#[source] kvm_ioctls::Error),
    #[error(
        "KVM_SET_USER_MEMORY_REGION slot {slot} at guest {addr:#x} ({size:#x} bytes): {source}"
    )]
    Memslot {
        slot: u32,
        addr: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IRQFD for GSI {gsi}: {source}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_IOEVENTFD at {addr:?} (datamatch {datamatch:?}): {source}")]
    Ioeventfd {
        addr: IoEventAddress,
        datamatch: Option<u32>,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    irqchip: bool,
}

impl Vm {
    /// `KVM_CREATE_VM`.
    pub fn new(kvm: &Kvm) -> Result<Self, VmError> {
        let fd = kvm.fd().create_vm().map_err(VmError::Create)?;
        Ok(Self { fd, irqchip: false })
    }

    /// The rust-vmm handle.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Whether [`Self::setup_irqchip`] ran.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// Registers every region of `mem` as a memslot (slot = region index). Do this before
    /// [`Self::setup_irqchip`]: memslot updates are much slower once an irqchip exists.
    ///
    /// The mappings must outlive the VM: the caller keeps `mem` alive at least as long as this
    /// `Vm` and every vCPU.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let addr = region.start_addr().0;
            let size = region.len();
            let r = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: addr,
                memory_size: size,
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `size` bytes owned by `mem`, which the
            // caller keeps alive for the VM's lifetime (documented above); slots don't overlap
            // because the regions of a GuestMemoryMmap don't.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::Memslot {
                slot,
                addr,
                size,
                source,
            })?;
        }
        Ok(())
    }

    /// KVM's TSS and identity-map pages (in the MMIO gap), the in-kernel irqchip and PIT2.
    pub fn setup_irqchip(&mut self) -> Result<(), VmError> {
        let setup = |what| move |source| VmError::Setup { what, source };
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(setup("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(setup("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(setup("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(setup("KVM_CREATE_PIT2"))?;
        self.irqchip = true;
        Ok(())
    }

    /// Routes `evt` to interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// Signals `evt` instead of exiting when the guest writes `addr` (only the value
    /// `datamatch`, when given, as a 4-byte write).
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u32>,
    ) -> Result<(), VmError> {
        let r = match datamatch {
            Some(v) => self.fd.register_ioevent(evt, &addr, v),
            None => self.fd.register_ioevent(evt, &addr, NoDatamatch),
        };
        r.map_err(|source| VmError::Ioeventfd {
            addr,
            datamatch,
            source,
        })
    }
}
