//! Guest RAM: one memfd, mapped MAP_SHARED region by region (below and above the 32-bit MMIO
//! gap), so a vhost-user back end (virtiofsd) can map the very same pages from the fd.
//!
//! Owns the creation of the memory and the memfd. Must never register memslots (vm does) and
//! never map guest memory privately.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use crate::arch::x86_64::layout;
use crate::devices::virtio::GuestMemoryMmap;

/// Why guest memory could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {mib} MiB: size is zero or does not fit the address space")]
    BadSize { mib: u64 },
    #[error("memfd_create for guest memory: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("sizing the guest memory memfd to {size:#x} bytes: {source}")]
    Resize {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "mapping guest memory at {addr:#x} ({size:#x} bytes, memfd offset {offset:#x}): {source}"
    )]
    Map {
        addr: u64,
        size: u64,
        offset: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory region at {addr:#x}: {detail}")]
    Region { addr: u64, detail: String },
}

fn memfd(name: &std::ffi::CStr) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid NUL-terminated string; the flags are constants; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Creates `mib` MiB of guest RAM laid out around the MMIO gap, backed by one memfd.
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let size = mib
        .checked_mul(layout::MIB)
        .ok_or(MemoryError::BadSize { mib })?;
    let ranges = layout::ram_ranges(size).ok_or(MemoryError::BadSize { mib })?;
    create_from_ranges(&ranges, size)
}

fn create_from_ranges(
    ranges: &[(GuestAddress, u64)],
    total: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    let file = memfd(c"husk-guest-ram")?;
    file.set_len(total).map_err(|source| MemoryError::Resize {
        size: total,
        source,
    })?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, size) in ranges {
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize { mib: size >> 20 })?;
        let fo = FileOffset::from_arc(file.clone(), offset);
        let mapping = MmapRegion::from_file(fo, len).map_err(|source| MemoryError::Map {
            addr: addr.0,
            size,
            offset,
            source,
        })?;
        let region = GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Region {
            addr: addr.0,
            detail: "wraps around the address space".into(),
        })?;
        regions.push(region);
        offset += size;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Region {
        addr: ranges.first().map_or(0, |r| r.0 .0),
        detail: e.to_string(),
    })
}

/// Whether every region is a shared file mapping (what vhost-user needs).
pub fn is_shareable(mem: &GuestMemoryMmap) -> bool {
    mem.iter()
        .all(|r| r.file_offset().is_some() && r.flags() & libc::MAP_SHARED != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;

    #[test]
    fn memory_is_one_memfd_shared_mapping() {
        let mem = create_guest_memory(16).unwrap();
        assert!(is_shareable(&mem));
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xfeed_u32, GuestAddress(0x1000)).unwrap();
        // The write is visible through the fd, as a vhost-user back end would see it.
        let region = mem.iter().next().unwrap();
        let fo = region.file_offset().unwrap();
        let mut b = [0u8; 4];
        fo.file()
            .read_exact_at(&mut b, fo.start() + 0x1000)
            .unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xfeed);
    }

    #[test]
    fn ranges_above_the_gap_use_later_memfd_offsets() {
        // Two small ranges standing in for "below" and "above" the gap (no 3 GiB allocation).
        let ranges = [
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(layout::MMIO_GAP_END), 0x10_0000),
        ];
        let mem = create_from_ranges(&ranges, 0x20_0000).unwrap();
        let offs: Vec<u64> = mem
            .iter()
            .map(|r| r.file_offset().unwrap().start())
            .collect();
        assert_eq!(offs, vec![0, 0x10_0000]);
        mem.write_obj(7u8, GuestAddress(layout::MMIO_GAP_END))
            .unwrap();
        assert!(mem
            .read_obj::<u8>(GuestAddress(layout::MMIO_GAP_START))
            .is_err());
        assert!(matches!(
            create_guest_memory(0),
            Err(MemoryError::BadSize { .. })
        ));
    }
}
