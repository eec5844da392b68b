//! A vCPU's register state at its first instruction: 16-bit real mode, 32-bit protected mode
//! (PVH entry) or 64-bit long mode with identity page tables; FPU, boot MSRs and the LAPIC's
//! LINT0/LINT1 wiring (ExtINT, NMI), as Firecracker sets them.
//!
//! Owns the boot GDT/IDT/page tables in guest memory and the register structs. Must never run
//! a vCPU or decide where the kernel is (boot does).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{self, gdt_entry, segment_from_gdt};
use super::layout::{
    BOOT_GDT_OFFSET, BOOT_IDT_OFFSET, BOOT_STACK_POINTER, PDE_COUNT, PDE_START, PDPTE_START,
    PML4_START,
};
use crate::devices::virtio::GuestMemoryMmap;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_MP: u64 = 0x2;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_NE: u64 = 0x20;
const X86_CR0_WP: u64 = 0x1_0000;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// How a vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 16-bit real mode at a physical address below 1 MiB (CS:IP derived from it).
    Real16,
    /// 32-bit protected mode, paging off, flat segments: the PVH entry (`rbx` = start info).
    Protected32,
    /// 64-bit long mode with the boot GDT and identity page tables for 0..4 GiB
    /// (`rsi` = zero page for the Linux 64-bit boot protocol).
    Long64,
}

/// Where a vCPU starts and with what in its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub mode: EntryMode,
    /// Guest physical address of the first instruction.
    pub rip: u64,
    /// `rsi` (zero page, Linux 64-bit protocol) or `rbx` (start info, PVH).
    pub boot_info: u64,
}

/// Why the registers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing the boot {what} at guest address {addr:#x}: {source}")]
    Memory {
        what: &'static str,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("vCPU {vcpu}: {what}: {source}")]
    Kvm {
        vcpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("real-mode entry {addr:#x} is not below 1 MiB")]
    RealModeAddress { addr: u64 },
    #[error("vCPU {vcpu}: the MSR list could not be built")]
    MsrList { vcpu: u8 },
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    val: T,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::Memory { what, addr, source })
}

/// Writes the identity page tables (0..4 GiB in 2 MiB pages) at `PML4_START`.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write(mem, "PML4", PML4_START, PDPTE_START | 0x3)?;
    for pd in 0..PDE_COUNT {
        let pd_addr = PDE_START + pd * 0x1000;
        write(mem, "PDPT", PDPTE_START + pd * 8, pd_addr | 0x3)?;
        for i in 0..512u64 {
            let page = ((pd << 9) | i) << 21;
            write(mem, "page directory", pd_addr + i * 8, page | 0x83)?;
        }
    }
    Ok(())
}

/// Writes `gdt` and an all-zero IDT entry (any interrupt then triple-faults, which KVM reports).
fn write_gdt_idt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, "GDT", BOOT_GDT_OFFSET + i as u64 * 8, *entry)?;
    }
    write(mem, "IDT", BOOT_IDT_OFFSET, 0u64)
}

/// The PVH GDT: null, flat 32-bit code, flat data, TSS.
pub fn pvh_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xffff_ffff),
        gdt_entry(0xc093, 0, 0xffff_ffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

fn set_segments(sregs: &mut kvm_sregs, gdt: &[u64; 4]) {
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_OFFSET;
    sregs.gdt.limit = (size_of_val(gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_OFFSET;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
}

/// Special registers for `mode` starting from KVM's reset state `base`.
pub fn sregs_for(mode: EntryMode, rip: u64, base: kvm_sregs) -> Result<kvm_sregs, RegsError> {
    let mut s = base;
    match mode {
        EntryMode::Real16 => {
            if rip >= 0x10_0000 {
                return Err(RegsError::RealModeAddress { addr: rip });
            }
            let seg_base = rip & 0xf_0000;
            s.cs.base = seg_base;
            s.cs.selector = (seg_base >> 4) as u16;
            for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
                seg.base = 0;
                seg.selector = 0;
            }
            s.cr0 &= !(X86_CR0_PE | X86_CR0_PG);
        }
        EntryMode::Protected32 => {
            set_segments(&mut s, &pvh_gdt());
            s.cr0 = X86_CR0_PE | X86_CR0_ET;
            s.cr4 = 0;
            s.efer = 0;
        }
        EntryMode::Long64 => {
            set_segments(&mut s, &gdt::boot_gdt());
            s.cr3 = PML4_START;
            s.cr4 |= X86_CR4_PAE;
            s.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
            s.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(s)
}

/// General registers for `entry`.
pub fn regs_for(entry: &Entry) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry.mode {
        EntryMode::Real16 => r.rip = entry.rip & 0xffff,
        EntryMode::Protected32 => {
            r.rip = entry.rip;
            r.rbx = entry.boot_info;
        }
        EntryMode::Long64 => {
            r.rip = entry.rip;
            r.rsp = BOOT_STACK_POINTER;
            r.rbp = BOOT_STACK_POINTER;
            r.rsi = entry.boot_info;
        }
    }
    r
}

/// Writes the boot GDT/IDT (and page tables for long mode) that `mode` needs into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    match mode {
        EntryMode::Real16 => Ok(()),
        EntryMode::Protected32 => write_gdt_idt(mem, &pvh_gdt()),
        EntryMode::Long64 => {
            write_gdt_idt(mem, &gdt::boot_gdt())?;
            write_page_tables(mem)
        }
    }
}

fn kvm(vcpu: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { vcpu, what, source }
}

/// Sets sregs, regs, FPU and boot MSRs of `fd` (vCPU `index`) for `entry`. The tables
/// [`write_boot_tables`] writes must be in memory already.
pub fn setup_vcpu_regs(fd: &VcpuFd, index: u8, entry: &Entry) -> Result<(), RegsError> {
    let base = fd.get_sregs().map_err(kvm(index, "KVM_GET_SREGS"))?;
    let sregs = sregs_for(entry.mode, entry.rip, base)?;
    fd.set_sregs(&sregs).map_err(kvm(index, "KVM_SET_SREGS"))?;
    fd.set_regs(&regs_for(entry))
        .map_err(kvm(index, "KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(kvm(index, "KVM_SET_FPU"))?;
    let msrs = Msrs::from_entries(&boot_msrs()).map_err(|_| RegsError::MsrList { vcpu: index })?;
    fd.set_msrs(&msrs).map_err(kvm(index, "KVM_SET_MSRS"))?;
    Ok(())
}

/// The MSRs Linux expects zeroed (syscall/sysenter, TSC) plus fast strings enabled.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], off: usize) -> u32 {
    let b = |i: usize| regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], off: usize, val: u32) {
    for (i, byte) in val.to_le_bytes().into_iter().enumerate() {
        regs[off + i] = byte as std::os::raw::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS leaves them.
pub fn setup_lint(fd: &VcpuFd, index: u8) -> Result<(), RegsError> {
    let mut lapic = fd.get_lapic().map_err(kvm(index, "KVM_GET_LAPIC"))?;
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    fd.set_lapic(&lapic).map_err(kvm(index, "KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::MIB;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (16 * MIB) as usize)]).unwrap()
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let m = mem();
        write_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpt3: u64 = m.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpt3, (PDE_START + 0x3000) | 3);
        // The 2 MiB page holding the MMIO gap start (3 GiB) maps to itself.
        let pde: u64 = m.read_obj(GuestAddress(PDE_START + 0x3000)).unwrap();
        assert_eq!(pde, 0xC000_0000 | 0x83);
        let last: u64 = m
            .read_obj(GuestAddress(PDE_START + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, (0xFFE0_0000) | 0x83);
    }

    #[test]
    fn long_mode_sregs_enable_paging_and_64_bit_code() {
        let s = sregs_for(EntryMode::Long64, 0x10_0000, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cs.l, s.cs.selector, s.ds.selector, s.tr.selector),
            (1, 8, 16, 24)
        );
        assert_eq!(s.gdt.base, BOOT_GDT_OFFSET);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn real_mode_sregs_derive_cs_from_the_address() {
        let s = sregs_for(EntryMode::Real16, 0x1_2345, kvm_sregs::default()).unwrap();
        assert_eq!((s.cs.base, s.cs.selector), (0x1_0000, 0x1000));
        let r = regs_for(&Entry {
            mode: EntryMode::Real16,
            rip: 0x1_2345,
            boot_info: 0,
        });
        assert_eq!(r.rip, 0x2345);
        assert!(sregs_for(EntryMode::Real16, 0x10_0000, kvm_sregs::default()).is_err());
    }

    #[test]
    fn pvh_entry_is_flat_protected_mode_with_start_info_in_rbx() {
        let s = sregs_for(EntryMode::Protected32, 0x100_0000, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!((s.cs.db, s.cs.l, s.cs.limit), (1, 0, 0xffff_ffff));
        let r = regs_for(&Entry {
            mode: EntryMode::Protected32,
            rip: 0x100_0000,
            boot_info: 0x6000,
        });
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, 0x6000, 2));
    }

    #[test]
    fn lint_delivery_modes() {
        assert_eq!(with_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        assert_eq!(with_delivery_mode(0, APIC_MODE_EXTINT), 0x700);
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT1, 0xdead_beef);
        assert_eq!(lapic_reg(&regs, APIC_LVT1), 0xdead_beef);
    }
}
