//! Checks the kernel and initramfs before any process starts, so a missing or corrupt file is
//! reported as such instead of as a silent or confusing VM failure.
//!
//! Owns recognising an x86-64 `vmlinux` with a PVH entry note, a bzImage, and an initramfs.
//! Reads at most the headers it needs; every offset is bounds-checked.

use std::io::Read;
use std::path::Path;

use crate::error::VmError;

/// The kernel formats husk boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF with a PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
    PvhElf,
    /// Compressed bzImage (Linux boot protocol).
    BzImage,
}

const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_NOTE: u32 = 4;

/// Longest header region read from a kernel file (headers and notes are a few KiB).
const MAX_REGION: usize = 1 << 20;

/// Random access to a kernel image: a byte slice in tests, the file itself at boot, so that a
/// 20 MiB vmlinux is checked by reading a few KiB.
pub trait Region {
    /// `len` bytes at `off`, or `None` if the image is shorter.
    fn region(&self, off: u64, len: usize) -> Option<Vec<u8>>;
}

impl Region for [u8] {
    fn region(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        let off = usize::try_from(off).ok()?;
        self.get(off..off.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

impl Region for std::fs::File {
    fn region(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len.min(MAX_REGION)];
        self.read_exact_at(&mut buf, off).ok()?;
        (buf.len() == len).then_some(buf)
    }
}

fn rd<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Recognises a kernel image.
pub fn kernel_format<R: Region + ?Sized>(img: &R) -> Result<KernelFormat, String> {
    let b = img
        .region(0, 0x210)
        .or_else(|| img.region(0, 64))
        .ok_or("too short to be a kernel")?;
    if b.starts_with(b"\x7fELF") {
        if b.get(4) != Some(&2) || rd::<2>(&b, 18).map(u16::from_le_bytes) != Some(62) {
            return Err("ELF, but not x86-64".into());
        }
        return if has_pvh_note(img, &b).ok_or("truncated ELF headers")? {
            Ok(KernelFormat::PvhElf)
        } else {
            Err("ELF without a PVH entry note; build with CONFIG_PVH=y".into())
        };
    }
    if rd::<4>(&b, 0x202) == Some(*b"HdrS") {
        let version = rd::<2>(&b, 0x206).map(u16::from_le_bytes).unwrap_or(0);
        return if version >= 0x0206 {
            Ok(KernelFormat::BzImage)
        } else {
            Err(format!("boot protocol {version:#x} is older than 2.06"))
        };
    }
    Err("neither an ELF vmlinux nor a bzImage".into())
}

fn has_pvh_note<R: Region + ?Sized>(img: &R, ehdr: &[u8]) -> Option<bool> {
    let phoff = u64::from_le_bytes(rd(ehdr, 32)?);
    let phentsize = usize::from(u16::from_le_bytes(rd(ehdr, 54)?));
    let phnum = usize::from(u16::from_le_bytes(rd(ehdr, 56)?));
    if phentsize < 56 {
        return None;
    }
    let phdrs = img.region(phoff, phentsize.checked_mul(phnum)?)?;
    for ph in phdrs.chunks_exact(phentsize) {
        if u32::from_le_bytes(rd(ph, 0)?) != PT_NOTE {
            continue;
        }
        let off = u64::from_le_bytes(rd(ph, 8)?);
        let size = usize::try_from(u64::from_le_bytes(rd(ph, 32)?)).ok()?;
        let notes = img.region(off, size.min(MAX_REGION))?;
        let mut p = 0;
        while p + 12 <= notes.len() {
            let namesz = u32::from_le_bytes(rd(&notes, p)?) as usize;
            let descsz = u32::from_le_bytes(rd(&notes, p + 4)?) as usize;
            let kind = u32::from_le_bytes(rd(&notes, p + 8)?);
            let name = notes.get(p + 12..(p + 12).checked_add(namesz)?)?;
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                return Some(true);
            }
            p = p.checked_add(12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4)?;
        }
    }
    Some(false)
}

/// Checks the kernel at `path`.
pub fn check_kernel(path: &Path) -> Result<KernelFormat, VmError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VmError::KernelMissing { path: path.into() })
        }
        Err(e) => {
            return Err(VmError::KernelInvalid {
                path: path.into(),
                why: e.to_string(),
            })
        }
    };
    kernel_format(&file).map_err(|why| VmError::KernelInvalid {
        path: path.into(),
        why,
    })
}

/// Checks that `path` starts like an initramfs (newc cpio, or a compressed one).
pub fn check_initrd(path: &Path) -> Result<(), VmError> {
    let mut head = [0u8; 6];
    let n = match std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VmError::ImageMissing { path: path.into() })
        }
        Err(e) => {
            return Err(VmError::ImageInvalid {
                path: path.into(),
                why: e.to_string(),
            })
        }
    };
    let head = &head[..n];
    let known: [&[u8]; 4] = [
        b"070701",
        b"\x1f\x8b",
        b"\x02\x21\x4c\x18",
        b"\x28\xb5\x2f\xfd",
    ];
    if known.iter().any(|m| head.starts_with(m)) {
        Ok(())
    } else {
        Err(VmError::ImageInvalid {
            path: path.into(),
            why: "no cpio, gzip, lz4 or zstd magic".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(kernel_format(&b"garbage"[..]).is_err());
        assert!(kernel_format(&b"\x7fELF\x02\x01"[..]).is_err());
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        assert_eq!(kernel_format(&bz[..]), Ok(KernelFormat::BzImage));
        bz[0x206..0x208].copy_from_slice(&0x0200u16.to_le_bytes());
        assert!(kernel_format(&bz[..]).is_err());
    }

    #[test]
    fn elf_with_hostile_program_headers_does_not_panic() {
        let mut elf = [0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        elf[32..40].copy_from_slice(&u64::MAX.to_le_bytes()); // phoff far away
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(kernel_format(&elf[..]).is_err());
    }

    #[test]
    fn missing_files_name_the_fix() {
        let e = check_kernel(Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel/build.sh"), "{e}");
        let e = check_initrd(Path::new("/nonexistent/x.cpio"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("husk image build"), "{e}");
    }
}
