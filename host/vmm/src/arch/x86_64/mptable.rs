//! The Intel MultiProcessor table (spec 1.4) Linux reads to find the vCPUs, the IOAPIC and
//! the ISA interrupt wiring: a floating pointer at [`MPTABLE_START`] followed by the
//! configuration table, both inside the EBDA.
//!
//! Owns the byte encoding and its bounds (the table must end below [`EBDA_END`]). Must never
//! write anywhere else in guest memory.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{EBDA_END, IRQ_MAX, MPTABLE_START};
use crate::devices::virtio::GuestMemoryMmap;

const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const MPC_SPEC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Stepping/model/family of the processor entries (family 6), and FPU|APIC feature flags.
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const CPU_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{cpus} vCPUs do not fit in the MP table (at most {max})")]
    TooManyCpus { cpus: u8, max: u8 },
    #[error("the MP table needs at least one vCPU")]
    NoCpus,
    #[error("writing the MP table at guest address {addr:#x} ({len} bytes): {source}")]
    Memory {
        addr: u64,
        len: usize,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Bytes a table for `cpus` vCPUs takes.
fn table_size(cpus: usize) -> usize {
    let irqs = IRQ_MAX as usize + 1;
    FLOATING_SIZE + HEADER_SIZE + cpus * CPU_ENTRY_SIZE + SMALL_ENTRY_SIZE * (2 + irqs + 2)
}

/// The most vCPUs whose table fits below the end of the EBDA.
pub fn max_cpus() -> u8 {
    let room = (EBDA_END - MPTABLE_START) as usize;
    let fixed = table_size(0);
    u8::try_from((room - fixed) / CPU_ENTRY_SIZE).unwrap_or(u8::MAX)
}

/// The whole MP area (floating pointer, then the configuration table) for `cpus` vCPUs.
pub fn mptable_bytes(cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    let max = max_cpus();
    if cpus > max {
        return Err(MptableError::TooManyCpus { cpus, max });
    }
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // The IOAPIC.
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    // ISA IRQ n → IOAPIC pin n.
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 ExtINT, LINT1 NMI, on every local APIC.
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_SIZE + entries.len();
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, below
    header.extend_from_slice(b"HUSK    ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_SIZE + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&((MPTABLE_START as u32) + FLOATING_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    debug_assert_eq!(out.len(), table_size(usize::from(cpus)));
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = mptable_bytes(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|source| MptableError::Memory {
            addr: MPTABLE_START,
            len: bytes.len(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        let b = mptable_bytes(2).unwrap();
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(sum(&b[..16]), 0);
        let phys = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(u64::from(phys), MPTABLE_START + 16);
        let t = &b[16..];
        assert_eq!(&t[0..4], b"PCMP");
        let len = u16::from_le_bytes([t[4], t[5]]) as usize;
        assert_eq!(len, t.len());
        assert_eq!(sum(t), 0);
        // 2 cpus, bus, ioapic, 24 irqs, 2 local interrupts.
        assert_eq!(u16::from_le_bytes([t[34], t[35]]), 2 + 1 + 1 + 24 + 2);
    }

    #[test]
    fn processor_entries_mark_the_boot_cpu() {
        let b = mptable_bytes(3).unwrap();
        let cpus = &b[16 + HEADER_SIZE..];
        for id in 0..3 {
            let e = &cpus[id * CPU_ENTRY_SIZE..];
            assert_eq!((e[0], e[1]), (0, id as u8));
            assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, id == 0);
        }
        // IOAPIC id follows the cpus.
        let ioapic = &cpus[3 * CPU_ENTRY_SIZE + 8..];
        assert_eq!((ioapic[0], ioapic[1]), (2, 4));
    }

    #[test]
    fn bounds_are_checked() {
        let max = max_cpus();
        assert!(max >= 32, "room for {max} vCPUs");
        let b = mptable_bytes(max).unwrap();
        assert!(MPTABLE_START + b.len() as u64 <= EBDA_END);
        assert!(matches!(
            mptable_bytes(max + 1),
            Err(MptableError::TooManyCpus { .. })
        ));
        assert!(matches!(mptable_bytes(0), Err(MptableError::NoCpus)));
    }

    #[test]
    fn written_into_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 1).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&small, 1),
            Err(MptableError::Memory { .. })
        ));
    }
}
