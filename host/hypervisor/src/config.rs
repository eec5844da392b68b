//! What a VM is booted with: kernel, image, size, command line and where its files go.
//!
//! Owns the configuration values and their defaults. Must never start anything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// Where per-VM sockets live by default (removed when the VM ends).
pub const DEFAULT_RUN_ROOT: &str = "/run/husk/vms";

/// Where per-VM logs are kept by default.
pub const DEFAULT_LOG_ROOT: &str = "/var/log/husk/vms";

/// A host directory shared into the guest with virtio-fs; the guest mounts it with
/// `mount -t virtiofs <tag> <dir>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub host_dir: PathBuf,
    pub read_only: bool,
}

/// Longest virtio-fs tag (the device's config field is 36 bytes).
pub const MAX_TAG: usize = 36;

impl Share {
    /// Checks the tag: 1..=36 bytes of `[A-Za-z0-9_-]` (it also names a socket file).
    pub fn validate(&self) -> Result<(), String> {
        let ok = !self.tag.is_empty()
            && self.tag.len() <= MAX_TAG
            && self
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "virtio-fs tag {:?} must be 1-{MAX_TAG} of [A-Za-z0-9_-]",
                self.tag
            ));
        }
        if !self.host_dir.is_dir() {
            return Err(format!(
                "shared directory {} does not exist",
                self.host_dir.display()
            ));
        }
        Ok(())
    }
}

/// A network device: a tap device the caller opened (in the pod's network namespace) and the
/// MAC address the guest's NIC gets. The VM's hypervisor receives its own copy of the fd.
#[derive(Debug, Clone)]
pub struct NetDevice {
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    /// "aa:bb:cc:dd:ee:ff".
    pub mac: String,
}

/// A disk: a raw image file the guest sees as `/dev/vdX` (in the order given), served by
/// husk's block device (the builtin VMM's, or `husk-vhost-user block` for QEMU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    /// The serial id the guest reads (`/sys/block/vdX/serial`), at most 20 bytes of
    /// `[A-Za-z0-9_.-]`.
    pub serial: Option<String>,
}

/// Most disks one VM may have.
pub const MAX_DISKS: usize = 8;

/// Longest disk serial id (virtio-blk's GET_ID field).
pub const MAX_SERIAL: usize = 20;

/// Checks the disks: at most [`MAX_DISKS`], each an existing regular file, serial ids bounded.
pub fn check_disks(disks: &[Disk]) -> Result<(), String> {
    if disks.len() > MAX_DISKS {
        return Err(format!(
            "{} disks, over the limit of {MAX_DISKS}",
            disks.len()
        ));
    }
    for d in disks {
        if !d.path.is_file() {
            return Err(format!("disk image {} is not a file", d.path.display()));
        }
        if let Some(s) = &d.serial {
            let ok = !s.is_empty()
                && s.len() <= MAX_SERIAL
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(format!(
                    "disk serial {s:?} must be 1-{MAX_SERIAL} of [A-Za-z0-9_.-]"
                ));
            }
        }
    }
    Ok(())
}

/// Most network devices one VM may have.
pub const MAX_NICS: usize = 8;

/// Checks the network devices: at most [`MAX_NICS`], each MAC of the form aa:bb:cc:dd:ee:ff.
pub fn check_nics(nics: &[NetDevice]) -> Result<(), String> {
    if nics.len() > MAX_NICS {
        return Err(format!(
            "{} network devices, over the limit of {MAX_NICS}",
            nics.len()
        ));
    }
    for n in nics {
        if husk_protocols::mac::parse(&n.mac).is_none() {
            return Err(format!(
                "MAC address {:?} is not of the form aa:bb:cc:dd:ee:ff",
                n.mac
            ));
        }
    }
    Ok(())
}

/// Boot configuration of one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Unique id; names the run and log directories.
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Extra kernel command-line words, appended last (so they win).
    pub extra_cmdline: Vec<String>,
    /// Parent of the VM's socket directory.
    pub run_root: PathBuf,
    /// Parent of the VM's log directory.
    pub log_root: PathBuf,
    /// Deterministic instruction counting under TCG (`-icount shift=0,sleep=off`): guest time
    /// advances one nanosecond per instruction. For benchmarks.
    pub icount: bool,
    /// Host directories shared into the guest (one virtiofsd each).
    pub shares: Vec<Share>,
    /// virtio-net devices backed by tap devices (none: the guest has only loopback).
    pub nics: Vec<NetDevice>,
    /// virtio-blk disks (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: Vec<Disk>,
    /// Listen for the guest's spans (vsock port 10240, `husk.tracing=1`): the VM then hands
    /// out a trace listener ([`crate::Vm::take_trace_listener`]).
    pub trace: bool,
    /// With `trace`, the W3C `traceparent` of the host span booting the VM: husk-init's boot
    /// span becomes its child (`husk.traceparent=`).
    pub traceparent: Option<String>,
}

impl VmConfig {
    /// A configuration with defaults and a fresh id.
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        Self {
            id: fresh_id(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            extra_cmdline: Vec::new(),
            run_root: DEFAULT_RUN_ROOT.into(),
            log_root: DEFAULT_LOG_ROOT.into(),
            icount: false,
            shares: Vec::new(),
            nics: Vec::new(),
            disks: Vec::new(),
            trace: false,
            traceparent: None,
        }
    }

    /// The kernel command-line words husk adds for this VM: [`Self::extra_cmdline`], and
    /// `husk.tracing=1` (with `husk.traceparent=` when known) when the VM traces (only a VM
    /// whose host listens for spans runs the guest's tracer).
    pub fn cmdline_words(&self) -> Vec<String> {
        use husk_protocols::cmdline::{TRACEPARENT, TRACING};
        let mut words = Vec::new();
        if self.trace {
            words.push(format!("{TRACING}=1"));
            if let Some(tp) = &self.traceparent {
                words.push(format!("{TRACEPARENT}={tp}"));
            }
        }
        words.extend(self.extra_cmdline.iter().cloned());
        words
    }

    /// The VM's log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.log_root.join(&self.id)
    }
}

/// `<pid>-<n>` in base 36: unique on this host while the process lives, and short enough
/// that socket paths under the run root stay within `sun_path`'s 108 bytes.
pub fn fresh_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}", base36(std::process::id()), base36(n))
}

/// The pid of the husk process that made `id` with [`fresh_id`], if `id` is one of ours.
pub fn creator_pid(id: &str) -> Option<u32> {
    let (pid, n) = id.split_once('-')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    if !valid(pid) || !valid(n) {
        return None;
    }
    u32::from_str_radix(pid, 36).ok()
}

pub(crate) fn base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_tags_are_checked() {
        let share = |tag: &str| Share {
            tag: tag.into(),
            host_dir: "/".into(),
            read_only: false,
        };
        assert!(share("rootfs").validate().is_ok());
        assert!(share("").validate().is_err());
        assert!(share("../x").validate().is_err());
        assert!(share(&"a".repeat(37)).validate().is_err());
        let missing = Share {
            tag: "a".into(),
            host_dir: "/nonexistent/dir".into(),
            read_only: true,
        };
        assert!(missing.validate().unwrap_err().contains("does not exist"));
    }

    #[test]
    fn nics_are_checked() {
        let fd: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let tap = std::sync::Arc::new(fd);
        let nic = |mac: &str| NetDevice {
            tap: tap.clone(),
            mac: mac.into(),
        };
        assert!(check_nics(&[nic("02:00:0a:00:00:02")]).is_ok());
        assert!(check_nics(&[nic("02:00:0a:00:00")]).is_err());
        assert!(check_nics(&[nic("02:00:0a:00:00:0g")]).is_err());
        assert!(check_nics(&[nic("02:00:0a:00:00:02,x=1")]).is_err());
        let many: Vec<_> = (0..=MAX_NICS).map(|_| nic("02:00:0a:00:00:02")).collect();
        assert!(check_nics(&many).unwrap_err().contains("limit"));
    }

    #[test]
    fn ids_are_unique_and_short() {
        let a = fresh_id();
        let b = fresh_id();
        assert_ne!(a, b);
        assert!(a.len() < 16);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36), "10");
        assert_eq!(creator_pid(&a), Some(std::process::id()));
        assert_eq!(creator_pid("not-a-vm!"), None);
        assert_eq!(creator_pid("nodash"), None);
    }
}
