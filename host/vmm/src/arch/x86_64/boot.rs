//! The Linux boot protocols, through `linux-loader`: an ELF `vmlinux` (PVH entry when it
//! carries the `XEN_ELFNOTE_PHYS32_ENTRY` note, else the 64-bit boot protocol) or a bzImage,
//! the initramfs (placed as high as possible below the end of low RAM), the command line,
//! and the zero page with its e820 map or the PVH start info with its memory map.
//!
//! Owns what is written into guest memory for the kernel. Must never set registers (it returns
//! the [`Entry`] for the vCPU setup) nor decide the command line's contents (the builder does).

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_END, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
    MPTABLE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::regs::{Entry, EntryMode};
use crate::devices::virtio::GuestMemoryMmap;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// The 64-bit entry of a bzImage's protected-mode kernel (`startup_64`).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;
const PAGE_SIZE: u64 = 0x1000;

/// Why the kernel could not be loaded or its boot information written.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: cannot open: {source}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}: neither a loadable ELF vmlinux ({elf}) nor a bzImage ({bzimage})")]
    LoadKernel {
        path: PathBuf,
        elf: String,
        bzimage: String,
    },
    #[error("kernel {path}: not an x86-64 ELF vmlinux: {detail}")]
    Elf { path: PathBuf, detail: String },
    #[error("kernel {path}: bzImage without a 64-bit entry (boot protocol {version:#x}, xloadflags {xloadflags:#x}; need >= 0x20c with XLF_KERNEL_64)")]
    BzImageNot64 {
        path: PathBuf,
        version: u16,
        xloadflags: u16,
    },
    #[error("initramfs {path}: cannot read: {source}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs {path} ({size} bytes) does not fit between the kernel end {kernel_end:#x} and the end of low RAM {low_end:#x}")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        low_end: u64,
    },
    #[error("initramfs {path}: writing it at guest address {addr:#x}: {source}")]
    WriteInitrd {
        path: PathBuf,
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line at {addr:#x}: {detail}")]
    Cmdline { addr: u64, detail: String },
    #[error("writing the {what} at guest address {addr:#x}: {detail}")]
    BootParams {
        what: &'static str,
        addr: u64,
        detail: String,
    },
}

/// The boot protocol a kernel image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux with a PVH entry note: 32-bit entry, start info in `rbx`.
    ElfPvh,
    /// ELF vmlinux without it: 64-bit entry, zero page in `rsi`.
    Elf64,
    /// bzImage: 64-bit entry at `startup_64`, zero page in `rsi`.
    BzImage,
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// First instruction (guest physical).
    pub entry: u64,
    /// First byte after the kernel image (absolute guest address).
    pub end: u64,
    /// The bzImage setup header, kept for the zero page.
    pub setup_header: Option<setup_header>,
}

/// An initramfs in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// One e820 / PVH memory map range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Loads the kernel at `path`: ELF first, bzImage when the file is not an ELF.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let himem = Some(GuestAddress(HIMEM_START));
    let elf_err = match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => {
            let (format, entry) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (KernelFormat::ElfPvh, addr.0),
                _ => (KernelFormat::Elf64, r.kernel_load.0),
            };
            return Ok(LoadedKernel {
                format,
                entry,
                end: r.kernel_end,
                setup_header: None,
            });
        }
        Err(loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)) => {
            "not an ELF".to_string()
        }
        Err(e) => {
            return Err(BootError::Elf {
                path: path.to_owned(),
                detail: e.to_string(),
            })
        }
    };
    let r = BzImage::load(mem, None, &mut file, himem).map_err(|e| BootError::LoadKernel {
        path: path.to_owned(),
        elf: elf_err,
        bzimage: e.to_string(),
    })?;
    let hdr = r.setup_header.unwrap_or_default();
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < 0x20c || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BzImageNot64 {
            path: path.to_owned(),
            version,
            xloadflags,
        });
    }
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        end: r.kernel_end,
        setup_header: r.setup_header,
    })
}

/// Where an initramfs of `size` bytes goes: page-aligned, as high as possible below
/// `low_end`, above `kernel_end`.
pub fn initrd_address(size: u64, kernel_end: u64, low_end: u64) -> Option<u64> {
    let addr = low_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// The end of the area an initramfs may occupy: the end of low RAM, lowered to the kernel's
/// `initrd_addr_max` when a bzImage header states one.
pub fn initrd_limit(kernel: &LoadedKernel, low_ram_end: u64) -> u64 {
    match kernel.setup_header.map(|h| h.initrd_addr_max) {
        Some(max) if max != 0 => low_ram_end.min(u64::from(max) + 1),
        _ => low_ram_end,
    }
}

/// Reads the initramfs at `path` into guest memory below `low_end`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_end: u64,
) -> Result<Initrd, BootError> {
    let bytes = std::fs::read(path).map_err(|source| BootError::ReadInitrd {
        path: path.to_owned(),
        source,
    })?;
    let size = bytes.len() as u64;
    let addr =
        initrd_address(size, kernel_end, low_end).ok_or_else(|| BootError::InitrdTooLarge {
            path: path.to_owned(),
            size,
            kernel_end,
            low_end,
        })?;
    vm_memory::Bytes::write_slice(mem, &bytes, GuestAddress(addr)).map_err(|source| {
        BootError::WriteInitrd {
            path: path.to_owned(),
            addr,
            source,
        }
    })?;
    Ok(Initrd { addr, size })
}

/// The RAM map for `mem_size` bytes: conventional memory below the EBDA (the MP table sits
/// above it), then RAM from 1 MiB to the MMIO gap, then RAM from 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let ram = |addr, size| E820Entry {
        addr,
        size,
        kind: E820_RAM,
    };
    let mut map = vec![ram(0, MPTABLE_START.min(EBDA_END))];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(ram(HIMEM_START, low_end - HIMEM_START));
    }
    if mem_size > MMIO_GAP_START {
        map.push(ram(MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    map
}

fn params_err(what: &'static str, addr: u64) -> impl FnOnce(String) -> BootError {
    move |detail| BootError::BootParams { what, addr, detail }
}

/// Writes the command line, then the zero page (64-bit protocol) or the PVH start info, and
/// returns where the boot vCPU starts.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
    mem_size: u64,
) -> Result<Entry, BootError> {
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline {
            addr: CMDLINE_START,
            detail: e.to_string(),
        })?
        .as_bytes_with_nul()
        .len();
    if cmdline_len > CMDLINE_MAX_SIZE {
        return Err(BootError::Cmdline {
            addr: CMDLINE_START,
            detail: format!("{cmdline_len} bytes, at most {CMDLINE_MAX_SIZE}"),
        });
    }
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(|e| {
        BootError::Cmdline {
            addr: CMDLINE_START,
            detail: e.to_string(),
        }
    })?;
    let map = e820_map(mem_size);
    match kernel.format {
        KernelFormat::ElfPvh => {
            write_pvh_start_info(mem, &map, initrd)?;
            Ok(Entry {
                mode: EntryMode::Protected32,
                rip: kernel.entry,
                boot_info: PVH_INFO_START,
            })
        }
        KernelFormat::Elf64 | KernelFormat::BzImage => {
            let params = zero_page(kernel.setup_header, &map, initrd, cmdline_len)?;
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(|e| params_err("zero page", ZERO_PAGE_START)(e.to_string()))?;
            Ok(Entry {
                mode: EntryMode::Long64,
                rip: kernel.entry,
                boot_info: ZERO_PAGE_START,
            })
        }
    }
}

/// The zero page for the Linux 64-bit boot protocol.
pub fn zero_page(
    header: Option<setup_header>,
    map: &[E820Entry],
    initrd: Option<Initrd>,
    cmdline_len: usize,
) -> Result<boot_params, BootError> {
    let mut p = boot_params::default();
    if let Some(h) = header {
        p.hdr = h;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some(i) = initrd {
        p.hdr.ramdisk_image = i.addr as u32;
        p.hdr.ramdisk_size = i.size as u32;
    }
    if map.len() > p.e820_table.len() {
        return Err(params_err("zero page", ZERO_PAGE_START)(format!(
            "{} e820 entries, room for {}",
            map.len(),
            p.e820_table.len()
        )));
    }
    for (slot, e) in p.e820_table.iter_mut().zip(map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    p.e820_entries = map.len() as u8;
    Ok(p)
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    map: &[E820Entry],
    initrd: Option<Initrd>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some(i) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: i.addr,
                size: i.size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| params_err("PVH start info", PVH_INFO_START)(e.to_string()))?;
    // The memory map must stay inside RAM; checked by the configurator, asserted here for logs.
    debug_assert!(mem.address_in_range(GuestAddress(PVH_MEMMAP_START)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::MIB;
    use vm_memory::Bytes;

    #[test]
    fn e820_covers_low_and_high_ram_around_the_gap() {
        let small = e820_map(128 * MIB);
        assert_eq!(small.len(), 2);
        assert_eq!((small[0].addr, small[0].size), (0, MPTABLE_START));
        assert_eq!((small[1].addr, small[1].size), (HIMEM_START, 127 * MIB));
        let big = e820_map(4096 * MIB);
        assert_eq!(big.len(), 3);
        assert_eq!(big[1].addr + big[1].size, MMIO_GAP_START);
        assert_eq!((big[2].addr, big[2].size), (MMIO_GAP_END, 1024 * MIB));
        assert!(big.iter().all(|e| e.kind == E820_RAM));
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_above_the_kernel() {
        assert_eq!(
            initrd_address(0x1800, 0x20_0000, 0x800_0000),
            Some(0x7ff_e000)
        );
        assert_eq!(initrd_address(0x800_0000, 0x20_0000, 0x800_0000), None);
        assert_eq!(initrd_address(u64::MAX, 0, 0x800_0000), None);
    }

    #[test]
    fn initrd_limit_honours_the_bzimage_header() {
        let mut k = LoadedKernel {
            format: KernelFormat::BzImage,
            entry: 0,
            end: 0,
            setup_header: Some(setup_header {
                initrd_addr_max: 0x7fff_ffff,
                ..Default::default()
            }),
        };
        assert_eq!(initrd_limit(&k, MMIO_GAP_START), 0x8000_0000);
        assert_eq!(initrd_limit(&k, 256 * MIB), 256 * MIB);
        k.setup_header = None;
        assert_eq!(initrd_limit(&k, MMIO_GAP_START), MMIO_GAP_START);
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let map = e820_map(256 * MIB);
        let p = zero_page(
            None,
            &map,
            Some(Initrd {
                addr: 0x0700_0000,
                size: 42,
            }),
            17,
        )
        .unwrap();
        let (ptr, size, img, rsz, flag, magic, n) = (
            p.hdr.cmd_line_ptr,
            p.hdr.cmdline_size,
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
            p.hdr.boot_flag,
            p.hdr.header,
            p.e820_entries,
        );
        assert_eq!((ptr, size), (CMDLINE_START as u32, 17));
        assert_eq!((img, rsz), (0x0700_0000, 42));
        assert_eq!((flag, magic, n), (0xaa55, 0x5372_6448, 2));
        let e1 = p.e820_table[1];
        let (a, s, t) = (e1.addr, e1.size, e1.r#type);
        assert_eq!((a, s, t), (HIMEM_START, 255 * MIB, E820_RAM));
    }

    #[test]
    fn cmdline_and_pvh_start_info_are_written() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        let kernel = LoadedKernel {
            format: KernelFormat::ElfPvh,
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        let initrd = Initrd {
            addr: 0x300_0000,
            size: 0x1000,
        };
        let entry = write_boot_info(&mem, &kernel, &cmdline, Some(initrd), 64 * MIB).unwrap();
        assert_eq!(entry.mode, EntryMode::Protected32);
        assert_eq!(entry.boot_info, PVH_INFO_START);
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.nr_modules, info.memmap_entries), (1, 2));
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 0x1000));
    }

    #[test]
    fn missing_and_bogus_kernels_name_the_file() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (4 * MIB) as usize)]).unwrap();
        let e = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap();
        let e = load_kernel(&mem, f.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("bzImage"), "{msg}");
    }

    /// Loads the installed guest kernels (vmlinux and bzImage) when they are there (no KVM
    /// needed).
    #[test]
    fn installed_kernels_load_when_present() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (256 * MIB) as usize)]).unwrap();
        for (path, formats) in [
            (
                "/var/lib/husk/kernel/vmlinux",
                &[KernelFormat::ElfPvh, KernelFormat::Elf64][..],
            ),
            ("/var/lib/husk/kernel/bzImage", &[KernelFormat::BzImage][..]),
        ] {
            let path = Path::new(path);
            if !path.exists() {
                eprintln!("not run: {} is absent", path.display());
                continue;
            }
            let k = load_kernel(&mem, path).unwrap();
            assert!(formats.contains(&k.format), "{}: {k:?}", path.display());
            assert!(k.end > HIMEM_START && k.entry >= HIMEM_START, "{k:?}");
            eprintln!(
                "{}: {:?} entry {:#x} end {:#x}",
                path.display(),
                k.format,
                k.entry,
                k.end
            );
        }
    }
}
