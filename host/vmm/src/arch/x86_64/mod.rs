//! x86-64: guest memory layout, GDT/page tables/registers for 64-bit entry, MP table,
//! CPUID filtering and the Linux boot protocol (owned by the KVM work; stub).
