//! A dynamically linked program's shared-library closure, for the debug image's tools
//! (`strace`, `lsof`, …), found from the ELF files themselves: `PT_INTERP` names the loader,
//! `PT_DYNAMIC` gives `DT_NEEDED`, `DT_RPATH`/`DT_RUNPATH` and `DT_SONAME`; each needed library
//! is looked up where the guest's loader will look for it, and its own needs in turn.
//!
//! The image has no `/etc/ld.so.cache`, so the guest's loader searches the object's
//! `DT_RPATH` (when it has no `DT_RUNPATH`) and the program's, then its `DT_RUNPATH`, then its
//! system directories ([`SYSTEM_DIRS`]); a library is placed in the image at the path where it
//! was found on the host (`/lib/x86_64-linux-gnu/libc.so.6`), the loader at its `PT_INTERP` path.
//!
//! Owns ELF dynamic-section parsing (every offset from the file is bounds-checked, as in
//! [`crate::elf`]) and that search order. Must never run the program, its loader or `ldd`, and
//! never write anything: it only reads the files it resolves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Component, Path, PathBuf};

use crate::elf::{program_headers, u16_at, u32_at, u64_at, ElfError, PT_INTERP};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// The system search path of Debian's x86-64 loader (`ld.so --help`), which is all it searches
/// in the guest, where there is no `ld.so.cache`. (`/lib64` is not one: only the loader itself
/// lives there.)
pub const SYSTEM_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// What the dynamic linker reads from one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynInfo {
    /// `PT_INTERP`: the loader's absolute path; none for a static program or most libraries.
    pub interp: Option<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` entries (unexpanded).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries (unexpanded).
    pub runpath: Vec<String>,
}

/// One file of a closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Absolute path in the image: where the guest's loader will look for it.
    pub image_path: String,
    /// The host file it was read from, symlinks followed.
    pub source: PathBuf,
    /// Its contents.
    pub data: Vec<u8>,
}

/// Everything a program needs besides itself to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// The loader (`PT_INTERP`); none for a static program.
    pub interp: Option<Object>,
    /// The shared libraries, sorted by image path.
    pub libs: Vec<Object>,
}

impl Closure {
    /// Whether the program needs nothing (it is statically linked).
    pub fn is_empty(&self) -> bool {
        self.interp.is_none() && self.libs.is_empty()
    }

    /// The loader, then the libraries.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.interp.iter().chain(&self.libs)
    }
}

/// Why a closure could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DynlibError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Elf { path: PathBuf, source: ElfError },
    #[error("shared library {name}, needed by {needed_by}, is not in {searched}{other_arch} (install the Debian package that ships it: `apt-file search {name}` names it)")]
    Missing {
        name: String,
        needed_by: PathBuf,
        searched: String,
        other_arch: String,
    },
    #[error("{needed_by} names {name:?} by a relative path, which has no place in the image")]
    Relative { name: String, needed_by: PathBuf },
    #[error("{path}: path is not UTF-8")]
    NotUtf8 { path: PathBuf },
}

/// `len` bytes at `off`, both from the file.
fn slice(b: &[u8], off: u64, len: u64) -> Result<&[u8], ElfError> {
    let off = usize::try_from(off).map_err(|_| ElfError::Malformed)?;
    let len = usize::try_from(len).map_err(|_| ElfError::Malformed)?;
    let end = off.checked_add(len).ok_or(ElfError::Malformed)?;
    b.get(off..end).ok_or(ElfError::Malformed)
}

/// `base + add`, both from the file.
fn at(base: usize, add: usize) -> Result<usize, ElfError> {
    base.checked_add(add).ok_or(ElfError::Malformed)
}

/// The NUL-terminated UTF-8 string at the start of `b`.
fn c_str(b: &[u8]) -> Result<String, ElfError> {
    let end = b.iter().position(|&c| c == 0).ok_or(ElfError::Malformed)?;
    let s = std::str::from_utf8(&b[..end]).map_err(|_| ElfError::Malformed)?;
    if s.is_empty() {
        return Err(ElfError::Malformed);
    }
    Ok(s.to_owned())
}

/// Reads the loader, needed libraries and search paths of a 64-bit little-endian x86-64
/// executable or shared object.
pub fn parse(b: &[u8]) -> Result<DynInfo, ElfError> {
    let headers = program_headers(b)?;
    if !matches!(u16_at(b, 16)?, ET_EXEC | ET_DYN) {
        return Err(ElfError::WrongArch);
    }
    let mut info = DynInfo::default();
    // (vaddr, offset, filesz) of each PT_LOAD, to find the string table in the file.
    let mut loads = Vec::new();
    let mut dynamic = None;
    for off in headers {
        let p_type = u32_at(b, off)?;
        let p_offset = u64_at(b, at(off, 8)?)?;
        let p_vaddr = u64_at(b, at(off, 16)?)?;
        let p_filesz = u64_at(b, at(off, 32)?)?;
        match p_type {
            PT_LOAD => loads.push((p_vaddr, p_offset, p_filesz)),
            PT_DYNAMIC => dynamic = Some((p_offset, p_filesz)),
            PT_INTERP => {
                let path = c_str(slice(b, p_offset, p_filesz)?)?;
                if !path.starts_with('/') {
                    return Err(ElfError::Malformed);
                }
                info.interp = Some(path);
            }
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(info);
    };
    let table = slice(b, dyn_off, dyn_size)?;
    let (mut strtab, mut strsz) = (None, None);
    let (mut needed, mut soname, mut rpath, mut runpath) = (Vec::new(), None, None, None);
    for entry in table.chunks_exact(16) {
        let tag = u64_at(entry, 0)?;
        let val = u64_at(entry, 8)?;
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_SONAME => soname = Some(val),
            DT_RPATH => rpath = Some(val),
            DT_RUNPATH => runpath = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() && soname.is_none() && rpath.is_none() && runpath.is_none() {
        return Ok(info);
    }
    // DT_STRTAB is an address: find the loaded segment that holds it.
    let addr = strtab.ok_or(ElfError::Malformed)?;
    let file_off = loads
        .iter()
        .find(|&&(vaddr, _, filesz)| addr >= vaddr && addr - vaddr < filesz)
        .and_then(|&(vaddr, offset, _)| offset.checked_add(addr - vaddr))
        .ok_or(ElfError::Malformed)?;
    let strings = slice(b, file_off, strsz.ok_or(ElfError::Malformed)?)?;
    let string = |off: u64| -> Result<String, ElfError> {
        let off = usize::try_from(off).map_err(|_| ElfError::Malformed)?;
        c_str(strings.get(off..).ok_or(ElfError::Malformed)?)
    };
    let paths = |off: u64| -> Result<Vec<String>, ElfError> {
        Ok(string(off)?
            .split(':')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect())
    };
    info.needed = needed.into_iter().map(string).collect::<Result<_, _>>()?;
    info.soname = soname.map(string).transpose()?;
    info.rpath = rpath.map(paths).transpose()?.unwrap_or_default();
    info.runpath = runpath.map(paths).transpose()?.unwrap_or_default();
    Ok(info)
}

/// `path` with `.` and `..` resolved lexically, as a UTF-8 string.
fn lexical(path: &Path) -> Result<String, DynlibError> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(|| DynlibError::NotUtf8 {
                path: path.to_owned(),
            })?),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// One object whose needs are still to be resolved.
struct Pending {
    /// Where it was found on the host (what `$ORIGIN` expands from).
    path: PathBuf,
    info: DynInfo,
}

/// Resolves closures against a list of system directories.
#[derive(Debug, Clone)]
pub struct Resolver {
    dirs: Vec<PathBuf>,
}

impl Default for Resolver {
    /// The guest loader's own system directories ([`SYSTEM_DIRS`]).
    fn default() -> Self {
        Self::new(SYSTEM_DIRS.iter().map(PathBuf::from).collect())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, DynlibError> {
    std::fs::read(path).map_err(|source| DynlibError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Resolver {
    /// A resolver that searches `dirs` after an object's own `DT_RPATH`/`DT_RUNPATH`.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self { dirs }
    }

    /// The loader and every shared library that `program` (whose contents are `data`) needs,
    /// transitively. A static program has an empty closure.
    pub fn closure(&self, program: &Path, data: &[u8]) -> Result<Closure, DynlibError> {
        let elf = |path: &Path| {
            let path = path.to_owned();
            move |source| DynlibError::Elf { path, source }
        };
        let info = parse(data).map_err(elf(program))?;
        let Some(interp_path) = info.interp.clone() else {
            // Nothing loads a static program's DT_NEEDED (a static PIE has none).
            return Ok(Closure::default());
        };
        let interp_data = read(Path::new(&interp_path))?;
        let interp_info = parse(&interp_data).map_err(elf(Path::new(&interp_path)))?;
        // The loader satisfies a DT_NEEDED of its own name (libc needs ld-linux-x86-64.so.2).
        let mut loaded: BTreeSet<String> = interp_info.soname.into_iter().collect();
        if let Some(base) = Path::new(&interp_path).file_name().and_then(|n| n.to_str()) {
            loaded.insert(base.to_owned());
        }
        let interp = Object {
            image_path: lexical(Path::new(&interp_path))?,
            source: canonical(Path::new(&interp_path)),
            data: interp_data,
        };
        // The program's DT_RPATH applies to every object it loads (unless it has a RUNPATH).
        let exe_rpath = if info.runpath.is_empty() {
            expand(&info.rpath, program)
        } else {
            Vec::new()
        };
        let mut libs: BTreeMap<String, Object> = BTreeMap::new();
        let mut queue = VecDeque::from([Pending {
            path: program.to_owned(),
            info,
        }]);
        while let Some(obj) = queue.pop_front() {
            let mut dirs = Vec::new();
            if obj.info.runpath.is_empty() {
                dirs.extend(expand(&obj.info.rpath, &obj.path));
                dirs.extend(exe_rpath.iter().cloned());
            } else {
                dirs.extend(expand(&obj.info.runpath, &obj.path));
            }
            dirs.extend(self.dirs.iter().cloned());
            for name in &obj.info.needed {
                if loaded.contains(name) {
                    continue;
                }
                let (found, data, info) = if name.starts_with('/') {
                    let path = PathBuf::from(name);
                    let data = read(&path)?;
                    let info = parse(&data).map_err(elf(&path))?;
                    (path, data, info)
                } else if name.contains('/') {
                    return Err(DynlibError::Relative {
                        name: name.clone(),
                        needed_by: obj.path.clone(),
                    });
                } else {
                    search(name, &dirs, &obj.path)?
                };
                loaded.insert(name.clone());
                let image_path = lexical(&found)?;
                if libs.contains_key(&image_path) {
                    continue;
                }
                if let Some(soname) = &info.soname {
                    loaded.insert(soname.clone());
                }
                libs.insert(
                    image_path.clone(),
                    Object {
                        image_path,
                        source: canonical(&found),
                        data,
                    },
                );
                queue.push_back(Pending { path: found, info });
            }
        }
        Ok(Closure {
            interp: Some(interp),
            libs: libs.into_values().collect(),
        })
    }
}

/// The real file behind `path`, for reports; `path` itself if that cannot be found.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Search-path entries with `$ORIGIN` expanded to `object`'s directory. Entries with other
/// dynamic tokens (`$LIB`, `$PLATFORM`) or relative ones (to the working directory at run
/// time) are left out: they name no fixed place.
fn expand(entries: &[String], object: &Path) -> Vec<PathBuf> {
    let origin = object.parent().and_then(Path::to_str).unwrap_or("/");
    entries
        .iter()
        .map(|e| e.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
        .filter(|e| e.starts_with('/') && !e.contains('$'))
        .map(PathBuf::from)
        .collect()
}

/// The first x86-64 `name` in `dirs`, as the loader finds it: files for another architecture
/// are passed over.
fn search(
    name: &str,
    dirs: &[PathBuf],
    needed_by: &Path,
) -> Result<(PathBuf, Vec<u8>, DynInfo), DynlibError> {
    let mut other_arch = Vec::new();
    for dir in dirs {
        let candidate = dir.join(name);
        if !candidate.is_file() {
            continue;
        }
        let data = read(&candidate)?;
        match parse(&data) {
            Ok(info) => return Ok((candidate, data, info)),
            Err(ElfError::WrongArch) => other_arch.push(candidate.display().to_string()),
            Err(source) => {
                return Err(DynlibError::Elf {
                    path: candidate,
                    source,
                })
            }
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(DynlibError::Missing {
        name: name.to_owned(),
        needed_by: needed_by.to_owned(),
        searched: searched.join(", "),
        other_arch: if other_arch.is_empty() {
            String::new()
        } else {
            format!(
                " (only for another architecture: {})",
                other_arch.join(", ")
            )
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::EM_X86_64;

    const STRACE: &str = "/usr/bin/strace";

    fn strace() -> Vec<u8> {
        std::fs::read(STRACE).expect("strace is installed (apt-get install strace)")
    }

    #[test]
    fn strace_needs_libc_and_the_loader() {
        let closure = Resolver::default()
            .closure(Path::new(STRACE), &strace())
            .unwrap();
        let interp = closure.interp.as_ref().unwrap();
        assert_eq!(interp.image_path, "/lib64/ld-linux-x86-64.so.2");
        assert!(interp.data.starts_with(b"\x7fELF"));
        let paths: Vec<&str> = closure.libs.iter().map(|o| o.image_path.as_str()).collect();
        assert!(
            paths.contains(&"/lib/x86_64-linux-gnu/libc.so.6"),
            "{paths:?}"
        );
        // libunwind's own needs are followed too (liblzma, at least on Debian 12).
        assert!(
            paths.iter().any(|p| p.contains("libunwind-ptrace")),
            "{paths:?}"
        );
        // The loader is not copied twice, although libc names it in DT_NEEDED.
        assert!(!paths.iter().any(|p| p.ends_with("ld-linux-x86-64.so.2")));
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "deterministic order");
    }

    #[test]
    fn a_static_binary_needs_nothing() {
        let data = std::fs::read("/bin/busybox").unwrap();
        let closure = Resolver::default()
            .closure(Path::new("/bin/busybox"), &data)
            .unwrap();
        assert!(closure.is_empty());
    }

    #[test]
    fn malformed_elf_is_an_error_not_a_panic() {
        let data = strace();
        assert_eq!(parse(b""), Err(ElfError::NotElf));
        assert_eq!(parse(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        // Truncations: the headers, the program headers, and everything else in steps.
        for len in (0..data.len())
            .step_by(7)
            .take(2048)
            .chain((0..data.len()).step_by(997))
        {
            let r = parse(&data[..len]);
            assert!(r.is_err() || len > 64 + 56, "prefix {len}: {r:?}");
        }
        // The whole file minus its tail: the dynamic section or its strings are cut off.
        assert!(parse(&data[..data.len() / 2]).is_err());
        // Hostile values in each header and program header word.
        let phoff = 64;
        for off in (16..64).chain(phoff..phoff + 13 * 56).step_by(4) {
            for v in [0u32, 1, 0x7fff_ffff, u32::MAX] {
                let mut m = data.clone();
                m[off..off + 4].copy_from_slice(&v.to_le_bytes());
                let _ = parse(&m);
            }
        }
        let mut arm = data.clone();
        arm[18..20].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(parse(&arm), Err(ElfError::WrongArch));
        let err = Resolver::default()
            .closure(Path::new("/x/arm"), &arm)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/x/arm") && err.contains("x86-64"), "{err}");
    }

    #[test]
    fn a_missing_library_is_named_with_who_needs_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = Resolver::new(vec![empty.path().to_owned()])
            .closure(Path::new(STRACE), &strace())
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DynlibError::Missing { .. }), "{msg}");
        assert!(msg.contains("libunwind-ptrace.so.0"), "{msg}");
        assert!(msg.contains(STRACE), "{msg}");
        assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    }

    /// A minimal x86-64 ELF: one PT_LOAD over the whole file, a PT_INTERP, a PT_DYNAMIC.
    fn tiny_elf(interp: &str, needed: &[&str], runpath: Option<&str>) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let off = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            off
        };
        let mut dynamic: Vec<(u64, u64)> = needed.iter().map(|n| (DT_NEEDED, add(n))).collect();
        if let Some(r) = runpath {
            dynamic.push((DT_RUNPATH, add(r)));
        }
        let interp_off = 64 + 3 * 56;
        let dyn_off = interp_off + interp.len() + 1;
        let str_off = dyn_off + (dynamic.len() + 3) * 16;
        dynamic.push((DT_STRTAB, str_off as u64));
        dynamic.push((DT_STRSZ, strtab.len() as u64));
        dynamic.push((DT_NULL, 0));
        let total = (str_off + strtab.len()) as u64;
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&3u16.to_le_bytes());
        let mut ph = |kind: u32, off: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&kind.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&off.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend(p);
        };
        ph(PT_LOAD, 0, total);
        ph(PT_INTERP, interp_off as u64, interp.len() as u64 + 1);
        ph(PT_DYNAMIC, dyn_off as u64, (dynamic.len() * 16) as u64);
        b.extend(interp.as_bytes());
        b.push(0);
        for (tag, val) in dynamic {
            b.extend(tag.to_le_bytes());
            b.extend(val.to_le_bytes());
        }
        b.extend(strtab);
        assert_eq!(b.len() as u64, total);
        b
    }

    #[test]
    fn runpath_origin_and_recursion() {
        let root = tempfile::tempdir().unwrap();
        let (bin, lib) = (root.path().join("bin"), root.path().join("lib"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let loader = "/lib64/ld-linux-x86-64.so.2";
        let prog = tiny_elf(loader, &["liba.so.1"], Some("$ORIGIN/../lib"));
        std::fs::write(bin.join("prog"), &prog).unwrap();
        // liba needs libb, found through the resolver's own directories.
        std::fs::write(lib.join("liba.so.1"), tiny_elf("/x", &["libb.so.2"], None)).unwrap();
        let sys = root.path().join("sys");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("libb.so.2"), tiny_elf("/x", &[], None)).unwrap();
        let info = parse(&prog).unwrap();
        assert_eq!(info.interp.as_deref(), Some(loader));
        assert_eq!(info.needed, ["liba.so.1"]);
        assert_eq!(info.runpath, ["$ORIGIN/../lib"]);
        let closure = Resolver::new(vec![sys.clone()])
            .closure(&bin.join("prog"), &prog)
            .unwrap();
        let paths: Vec<String> = closure.libs.iter().map(|o| o.image_path.clone()).collect();
        let r = root.path().display();
        assert_eq!(
            paths,
            [format!("{r}/lib/liba.so.1"), format!("{r}/sys/libb.so.2")]
        );
        // A string table offset past its end is malformed.
        let mut bad = prog.clone();
        let n = bad.len();
        bad[n - 1] = b'x';
        assert_eq!(parse(&bad), Err(ElfError::Malformed));
    }
}
