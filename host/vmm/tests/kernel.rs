//! The kernel boot path through real KVM, up to the guest's first instructions: the installed
//! vmlinux (PVH entry) and bzImage (64-bit boot protocol) are loaded with the initramfs, the
//! command line (with a virtio device's `virtio_mmio.device=` entry) and the PVH start info or
//! zero page land in guest memory, the vCPU starts, and the VM pauses and stops cleanly. Runs
//! on `kvm_pvm` too, where the kernel itself cannot get far; whether Linux actually boots is
//! `boot.rs`'s job.

mod common;

use std::path::Path;

use common::*;
use husk_vmm::arch::x86_64::layout::{
    CMDLINE_START, PVH_INFO_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use husk_vmm::builder::{BootSource, SerialOutput, VmBuilder, VmSpec};
use husk_vmm::vmm::{ExitReason, Vmm};
use vm_memory::{Bytes, GuestAddress};

const VMLINUX: &str = "/var/lib/husk/kernel/vmlinux";
const BZIMAGE: &str = "/var/lib/husk/kernel/bzImage";
const INITRD: &str = "/var/lib/husk/images/default.cpio";

fn present(test: &str) -> bool {
    if !kvm_present(test) {
        return false;
    }
    for p in [VMLINUX, BZIMAGE, INITRD] {
        if !Path::new(p).exists() {
            say(&format!("{test}: not run: {p} is absent (run husk setup)"));
            return false;
        }
    }
    true
}

fn build(kernel: &str) -> Vmm {
    let spec = VmSpec {
        vcpus: 2,
        mem_mib: 128,
        boot: BootSource::Kernel {
            kernel: kernel.into(),
            initrd: Some(INITRD.into()),
            cmdline_extra: "quiet".into(),
        },
        serial: SerialOutput::Discard,
        boot_timer: true,
        seccomp: husk_vmm::seccomp::Enforcement::Kill,
    };
    let mut b = VmBuilder::new(spec);
    b.add_virtio(Box::new(DummyVirtio::default()));
    let mut vmm = b.build().expect("kernel VM builds");
    assert!(eventually(GUEST_TIMEOUT, || vmm
        .time_to_first_run()
        .is_some()));
    // Freeze the guest before looking at its memory.
    vmm.pause().expect("the VM pauses");
    vmm
}

fn read_cstr(vmm: &Vmm, addr: u64) -> String {
    let mut buf = vec![0u8; 4096];
    vmm.guest_memory()
        .read_slice(&mut buf, GuestAddress(addr))
        .expect("guest memory readable");
    let end = buf.iter().position(|&b| b == 0).expect("NUL-terminated");
    String::from_utf8(buf[..end].to_vec()).expect("UTF-8")
}

fn read_u32(vmm: &Vmm, addr: u64) -> u32 {
    vmm.guest_memory()
        .read_obj(GuestAddress(addr))
        .expect("guest memory readable")
}

fn read_u64(vmm: &Vmm, addr: u64) -> u64 {
    vmm.guest_memory()
        .read_obj(GuestAddress(addr))
        .expect("guest memory readable")
}

fn assert_initrd_at(vmm: &Vmm, addr: u64, size: u64) {
    let want = std::fs::read(INITRD).expect("initramfs readable");
    assert_eq!(size, want.len() as u64);
    let mut head = vec![0u8; 512];
    vmm.guest_memory()
        .read_slice(&mut head, GuestAddress(addr))
        .expect("guest memory readable");
    assert_eq!(head, want[..512], "initramfs bytes at {addr:#x}");
    assert!(addr + size <= 128 << 20, "initramfs below the end of RAM");
}

fn stop(mut vmm: Vmm) {
    let r = vmm.stop();
    // The reason is Stopped unless the (emulated, on kvm_pvm) kernel got to fail first.
    if r != ExitReason::Stopped {
        say(&format!("kernel VM ended before stop: {r}"));
    }
    assert_eq!(vmm.running_vcpus(), 0);
}

#[test]
fn vmlinux_boots_through_pvh_with_start_info_cmdline_and_initrd() {
    if !present("vmlinux_boots_through_pvh_with_start_info_cmdline_and_initrd") {
        return;
    }
    let vmm = build(VMLINUX);
    let cmdline = read_cstr(&vmm, CMDLINE_START);
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    assert!(
        cmdline.ends_with("quiet virtio_mmio.device=4K@0xc0001000:5"),
        "{cmdline}"
    );
    // hvm_start_info: magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr.
    assert_eq!(read_u32(&vmm, PVH_INFO_START), 0x336e_c578);
    assert_eq!(read_u32(&vmm, PVH_INFO_START + 12), 1);
    assert_eq!(read_u64(&vmm, PVH_INFO_START + 16), PVH_MODLIST_START);
    assert_eq!(read_u64(&vmm, PVH_INFO_START + 24), CMDLINE_START);
    let (addr, size) = (
        read_u64(&vmm, PVH_MODLIST_START),
        read_u64(&vmm, PVH_MODLIST_START + 8),
    );
    assert_initrd_at(&vmm, addr, size);
    stop(vmm);
}

#[test]
fn bzimage_boots_through_the_zero_page() {
    if !present("bzimage_boots_through_the_zero_page") {
        return;
    }
    let vmm = build(BZIMAGE);
    let zp = ZERO_PAGE_START;
    let mem = vmm.guest_memory();
    let flag: u16 = mem.read_obj(GuestAddress(zp + 0x1fe)).unwrap();
    assert_eq!(flag, 0xaa55);
    assert_eq!(read_u32(&vmm, zp + 0x202), 0x5372_6448, "HdrS");
    assert_eq!(u64::from(read_u32(&vmm, zp + 0x228)), CMDLINE_START);
    let e820_entries: u8 = mem.read_obj(GuestAddress(zp + 0x1e8)).unwrap();
    assert_eq!(e820_entries, 2);
    let (addr, size) = (read_u32(&vmm, zp + 0x218), read_u32(&vmm, zp + 0x21c));
    assert_initrd_at(&vmm, u64::from(addr), u64::from(size));
    assert!(read_cstr(&vmm, CMDLINE_START).contains("virtio_mmio.device=4K@0xc0001000:5"));
    stop(vmm);
}
