//! x86-64: the guest physical memory layout, GDT/page tables/registers for 64-bit entry, the MP
//! table, CPUID filtering and the Linux boot protocol (ELF vmlinux with PVH or 64-bit entry,
//! bzImage).
//!
//! Owns what the guest sees of the machine before its first instruction. Must never run a vCPU
//! nor hold device state: everything here writes guest memory or fills KVM register structs.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
