//! Segment descriptors: encoding GDT entries and the matching `kvm_segment`s for KVM_SET_SREGS.
//!
//! Owns the bit layout of a descriptor. Must never write guest memory (regs does that).

use kvm_bindings::kvm_segment;

/// Flags of the boot GDT entries (access byte in bits 0-7, flags nibble in bits 12-15).
pub const CODE64_FLAGS: u16 = 0xa09b;
pub const DATA_FLAGS: u16 = 0xc093;
pub const TSS_FLAGS: u16 = 0x808b;

/// The boot GDT: null, 64-bit code (selector 0x8), data (0x10), TSS (0x18).
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// Encodes one descriptor from its flags, base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0x0000_f0ff) << 40)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The `kvm_segment` a descriptor at GDT index `index` loads into a segment register.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_round_trips() {
        let e = gdt_entry(CODE64_FLAGS, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = segment_from_gdt(e, 1);
        assert_eq!(s.selector, 8);
        assert_eq!(
            (s.type_, s.present, s.dpl, s.s, s.l, s.g, s.db),
            (0xb, 1, 0, 1, 1, 1, 0)
        );
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.base, 0);
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let d = segment_from_gdt(gdt_entry(DATA_FLAGS, 0, 0xfffff), 2);
        assert_eq!((d.selector, d.type_, d.db, d.l), (16, 3, 1, 0));
        let t = segment_from_gdt(gdt_entry(TSS_FLAGS, 0x1234_5678, 0xfff), 3);
        assert_eq!((t.type_, t.base, t.g), (0xb, 0x1234_5678, 1));
        assert_eq!(t.limit, 0xff_ffff);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
