//! Pseudo devices that exist for the VMM's own measurements: the boot timer
//! ([`boot_timer`]).
//!
//! They never touch KVM and never affect the guest beyond answering its accesses.

pub mod boot_timer;
