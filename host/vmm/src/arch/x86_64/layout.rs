//! The x86-64 guest physical address map (Firecracker's): low-memory boot structures, the
//! 32-bit MMIO gap `[0xC000_0000, 4 GiB)` where device windows live, and RAM below and above it.
//!
//! Owns constants and the arithmetic on them. Must never touch guest memory or KVM.

use vm_memory::GuestAddress;

/// Where the GDT is written for 64-bit entry.
pub const BOOT_GDT_OFFSET: u64 = 0x500;
/// Where the (empty) IDT is written for 64-bit entry.
pub const BOOT_IDT_OFFSET: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (used instead of the zero page; the two boot protocols are exclusive).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, then [`PDE_COUNT`] page directories of 2 MiB pages.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Page directories mapped at entry: 4 × 1 GiB, i.e. identity 0..4 GiB (the MMIO gap included,
/// so early code and test guests reach device windows).
pub const PDE_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// The MP table sits in the last KiB of conventional memory (the EBDA).
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of conventional memory (start of the VGA hole); e820 reports RAM below it.
pub const EBDA_END: u64 = 0xa0000;
/// Where kernels are loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap: device windows, then KVM's TSS and identity map near its top.
pub const MMIO_GAP_START: u64 = 0xC000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;
/// Device windows are handed out from here, one 4 KiB slot each.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Upper end (exclusive) of the device window area, well below the KVM private pages.
pub const MMIO_SLOTS_END: u64 = 0xD000_0000;
/// Firecracker's boot timer lives in the first MMIO slot.
pub const BOOT_TIMER_ADDRESS: u64 = MMIO_GAP_START;
/// KVM's three-page TSS region and one-page identity map (Intel real-mode emulation).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy devices.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_PORT_SIZE: u64 = 8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const I8042_PORT_SIZE: u64 = 5;
/// Interrupt lines handed to virtio devices: 5 up to the last IOAPIC pin.
pub const IRQ_BASE: u32 = 5;
pub const IRQ_MAX: u32 = 23;

/// Bytes in one MiB.
pub const MIB: u64 = 1 << 20;

// The layout's invariants, checked at compile time: boot structures don't overlap, and device
// windows stay clear of KVM's private pages.
const _: () = {
    assert!(PML4_START < PDPTE_START && PDPTE_START < PDE_START);
    assert!(PDE_START + PDE_COUNT * 0x1000 <= CMDLINE_START);
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= MPTABLE_START);
    assert!(MPTABLE_START < EBDA_END && EBDA_END < HIMEM_START);
    assert!(PVH_INFO_START < PVH_MODLIST_START && PVH_MODLIST_START < PVH_MEMMAP_START);
    assert!(MMIO_SLOTS_END <= KVM_IDENTITY_MAP_ADDRESS);
    assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 <= KVM_TSS_ADDRESS);
    assert!(KVM_TSS_ADDRESS + 3 * 0x1000 <= MMIO_GAP_END);
    assert!(BOOT_TIMER_ADDRESS == MMIO_GAP_START);
};

/// RAM ranges for `size` bytes of guest memory: one range below the MMIO gap, and the rest
/// (if any) from 4 GiB up. `None` when `size` is zero or would overflow the address space.
pub fn ram_ranges(size: u64) -> Option<Vec<(GuestAddress, u64)>> {
    if size == 0 {
        return None;
    }
    if size <= MMIO_GAP_START {
        return Some(vec![(GuestAddress(0), size)]);
    }
    let above = size - MMIO_GAP_START;
    MMIO_GAP_END.checked_add(above)?;
    Some(vec![
        (GuestAddress(0), MMIO_GAP_START),
        (GuestAddress(MMIO_GAP_END), above),
    ])
}

/// The highest guest address usable for boot payloads below 4 GiB (the initramfs goes under
/// it): the end of the low RAM range.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_below_the_gap() {
        assert_eq!(
            ram_ranges(128 * MIB),
            Some(vec![(GuestAddress(0), 128 * MIB)])
        );
        assert_eq!(
            ram_ranges(MMIO_GAP_START),
            Some(vec![(GuestAddress(0), MMIO_GAP_START)])
        );
        assert_eq!(ram_ranges(0), None);
    }

    #[test]
    fn large_memory_splits_around_the_gap() {
        let r = ram_ranges(4096 * MIB).unwrap();
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), 1024 * MIB)
            ]
        );
        assert_eq!(ram_ranges(u64::MAX), None);
        assert_eq!(low_ram_end(4096 * MIB), MMIO_GAP_START);
        assert_eq!(low_ram_end(64 * MIB), 64 * MIB);
    }
}
