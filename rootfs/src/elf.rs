//! Checks that an input binary can run in the guest image, which has no libc or loader: an
//! x86-64 ELF executable with no `PT_INTERP` (statically linked).
//!
//! Owns reading ELF headers from a byte slice; every offset is bounds-checked.

/// Why a binary cannot go into the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian x86-64 executable")]
    WrongArch,
    #[error("truncated or malformed ELF headers")]
    Malformed,
    #[error("dynamically linked (has an ELF interpreter); the guest image has no libc")]
    Dynamic,
}

pub(crate) const PT_INTERP: u32 = 3;
pub(crate) const EM_X86_64: u16 = 62;

/// `N` bytes at `off`; offsets come from the file, so the sum may overflow.
pub(crate) fn bytes_at<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], ElfError> {
    let end = off.checked_add(N).ok_or(ElfError::Malformed)?;
    b.get(off..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::Malformed)
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    bytes_at(b, off).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    bytes_at(b, off).map(u32::from_le_bytes)
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    bytes_at(b, off).map(u64::from_le_bytes)
}

/// The file offset of every program header of a 64-bit little-endian x86-64 ELF file, each
/// checked to lie inside the file's address arithmetic (not yet inside the file: reading it
/// is bounds-checked).
pub(crate) fn program_headers(b: &[u8]) -> Result<Vec<usize>, ElfError> {
    if b.get(..4) != Some(b"\x7fELF") {
        return Err(ElfError::NotElf);
    }
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) || u16_at(b, 18)? != EM_X86_64 {
        return Err(ElfError::WrongArch);
    }
    let phoff = usize::try_from(u64_at(b, 32)?).map_err(|_| ElfError::Malformed)?;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    if phentsize < 56 {
        return Err(ElfError::Malformed);
    }
    (0..phnum)
        .map(|i| {
            phentsize
                .checked_mul(i)
                .and_then(|o| o.checked_add(phoff))
                .ok_or(ElfError::Malformed)
        })
        .collect()
}

/// Accepts a statically linked x86-64 ELF executable.
pub fn check_static_x86_64(b: &[u8]) -> Result<(), ElfError> {
    for off in program_headers(b)? {
        if u32_at(b, off)? == PT_INTERP {
            return Err(ElfError::Dynamic);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_dynamic() {
        assert_eq!(check_static_x86_64(b"hello"), Err(ElfError::NotElf));
        assert_eq!(check_static_x86_64(b"\x7fELF"), Err(ElfError::WrongArch));
        // The test binary itself is a dynamically linked x86-64 executable.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(check_static_x86_64(&me), Err(ElfError::Dynamic));
        // A truncated header is malformed, never a panic.
        assert!(check_static_x86_64(&me[..40]).is_err());
        // Program headers claimed at the very end of the address space (found by fuzzing).
        let mut hostile = me[..64].to_vec();
        hostile[32..40].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
        assert_eq!(check_static_x86_64(&hostile), Err(ElfError::Malformed));
    }
}
