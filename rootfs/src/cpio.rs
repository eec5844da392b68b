//! A writer for the cpio "newc" format the Linux kernel unpacks as an initramfs.
//!
//! Owns the byte layout only: headers, names, 4-byte padding, the trailer. Deterministic by
//! construction: inode numbers are assigned in write order, owner is root, mtime is fixed.

use std::io::{self, Write};

/// The fixed modification time of every entry (the epoch), for reproducible images.
pub const MTIME: u32 = 0;

/// What an entry is, with the file-type bits it carries in `c_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

impl Kind {
    fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev { .. } => 0o020000,
        }
    }
}

/// Streams entries into a newc archive.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// Appends one entry. `path` has no leading slash (`bin/sh`); `perm` is the permission bits.
    pub fn entry(&mut self, path: &str, perm: u32, kind: &Kind) -> io::Result<()> {
        let data: &[u8] = match kind {
            Kind::File(d) => d,
            Kind::Symlink(t) => t.as_bytes(),
            Kind::Dir | Kind::CharDev { .. } => &[],
        };
        let (rmajor, rminor) = match kind {
            Kind::CharDev { major, minor } => (*major, *minor),
            _ => (0, 0),
        };
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: over 4 GiB"))
        })?;
        let nlink = if matches!(kind, Kind::Dir) { 2 } else { 1 };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(
            ino,
            kind.type_bits() | (perm & 0o7777),
            nlink,
            size,
            rmajor,
            rminor,
            path,
        )?;
        self.put(data)?;
        self.pad()
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rmajor: u32,
        rminor: u32,
        name: &str,
    ) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, 0, nlink, MTIME, size, 0, 0, rmajor, rminor, namesize, 0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(0, 0, 1, 0, 0, 0, "TRAILER!!!")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut w = Writer::new(Vec::new());
        w.entry("init", 0o755, &Kind::File(b"hello".to_vec()))
            .unwrap();
        let out = w.finish().unwrap();
        let s = String::from_utf8_lossy(&out);
        assert!(s.starts_with("070701"));
        // mode 0o100755 = 0x81ed, size 5, namesize 5 ("init\0").
        assert_eq!(&s[14..22], "000081ed");
        assert_eq!(&s[54..62], "00000005");
        assert_eq!(&s[94..102], "00000005");
        // header (110) + name (5) → 115, padded to 116; data 5 → 121, padded to 124.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..121], b"hello");
        assert_eq!(&out[124..130], b"070701");
        assert!(s.contains("TRAILER!!!"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn device_numbers_are_encoded() {
        let mut w = Writer::new(Vec::new());
        w.entry("dev/console", 0o600, &Kind::CharDev { major: 5, minor: 1 })
            .unwrap();
        let out = w.finish().unwrap();
        let s = String::from_utf8_lossy(&out);
        assert_eq!(&s[14..22], "00002180");
        assert_eq!(&s[78..86], "00000005");
        assert_eq!(&s[86..94], "00000001");
    }
}
