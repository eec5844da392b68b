//! What this host offers for running VMs: the kind of `/dev/kvm`, whether QEMU is installed,
//! and the TSC frequency the guest should assume.
//!
//! Owns reading `/dev/kvm`, `/sys/module` and `/proc/cpuinfo`. Must never open a VM or change
//! anything; all paths are injectable so tests can describe any host.

use std::path::{Path, PathBuf};

/// husk's vhost-user back end binary (built by `cargo build -p husk-vmm --bin husk-vhost-user`).
pub const VSOCK_BACKEND: &str = "husk-vhost-user";

/// Where installed husk binaries live when they are not in `$PATH`.
const INSTALL_DIR: &str = "/usr/local/bin";

/// Where the probe looks; [`HostPaths::system`] for the real host.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub dev_kvm: PathBuf,
    pub sys_module: PathBuf,
    pub cpuinfo: PathBuf,
    /// The QEMU binary, or a bare name looked up in `$PATH`.
    pub qemu: PathBuf,
    /// The vhost-user vsock back end (`husk-vhost-user`), or a bare name looked up beside the
    /// running executable, in `$PATH` and in `/usr/local/bin` ([`find_vsock_backend`]).
    pub vsock_backend: PathBuf,
    /// The virtio-fs daemon, or a bare name looked up in `$PATH`.
    pub virtiofsd: PathBuf,
}

impl HostPaths {
    pub fn system() -> Self {
        Self {
            dev_kvm: "/dev/kvm".into(),
            sys_module: "/sys/module".into(),
            cpuinfo: "/proc/cpuinfo".into(),
            qemu: "qemu-system-x86_64".into(),
            vsock_backend: VSOCK_BACKEND.into(),
            virtiofsd: "virtiofsd".into(),
        }
    }
}

/// What `/dev/kvm` is on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualisation (`kvm_intel` / `kvm_amd`): runs stock guests.
    Hardware { module: String },
    /// `kvm_pvm`: software "pagetable-based" virtualisation; stock kernels die under it.
    Pvm,
    /// `/dev/kvm` exists but its provider is unknown: treated as unusable for stock guests.
    Unknown,
    /// No usable `/dev/kvm`.
    Absent { reason: String },
}

impl KvmKind {
    /// Whether a stock (non-PVM) Linux guest can run on this KVM.
    pub fn runs_stock_guests(&self) -> bool {
        matches!(self, KvmKind::Hardware { .. })
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            KvmKind::Hardware { module } => format!("hardware virtualisation ({module})"),
            KvmKind::Pvm => "kvm_pvm (software PVM; cannot run a stock Linux guest)".into(),
            KvmKind::Unknown => {
                "present, provider unknown (no kvm_intel/kvm_amd/kvm_pvm module)".into()
            }
            KvmKind::Absent { reason } => format!("not usable: {reason}"),
        }
    }
}

/// Classifies `/dev/kvm`.
pub fn kvm_kind(paths: &HostPaths) -> KvmKind {
    match std::fs::metadata(&paths.dev_kvm) {
        Err(e) => {
            return KvmKind::Absent {
                reason: format!("{}: {e}", paths.dev_kvm.display()),
            };
        }
        Ok(_) => {
            if let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&paths.dev_kvm)
            {
                return KvmKind::Absent {
                    reason: format!("cannot open {}: {e}", paths.dev_kvm.display()),
                };
            }
        }
    }
    // kvm_pvm is checked first: it may coexist with a hardware module that failed to load.
    if paths.sys_module.join("kvm_pvm").exists() {
        return KvmKind::Pvm;
    }
    for module in ["kvm_intel", "kvm_amd"] {
        if paths.sys_module.join(module).exists() {
            return KvmKind::Hardware {
                module: module.into(),
            };
        }
    }
    KvmKind::Unknown
}

/// Resolves a program name through `$PATH` (or checks an explicit path).
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_owned());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// Resolves the vhost-user vsock back end: an explicit path is checked as is; a bare name is
/// looked up beside the running executable (and one directory up, since test binaries live in
/// `target/<profile>/deps`), then in `$PATH`, then in `/usr/local/bin`.
pub fn find_vsock_backend(paths: &HostPaths) -> Option<PathBuf> {
    let program = paths.vsock_backend.as_path();
    if program.components().count() > 1 {
        return find_program(program);
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned));
    let beside = exe_dir
        .iter()
        .flat_map(|d| [Some(d.clone()), d.parent().map(Path::to_owned)])
        .flatten()
        .map(|d| d.join(program));
    beside
        .chain(find_program(program))
        .chain(std::iter::once(Path::new(INSTALL_DIR).join(program)))
        .find(|p| is_executable(p))
}

/// Whether `p` is a regular file with an execute bit.
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo` when the CPU has an invariant TSC.
/// Guests under TCG need it on their command line (`tsc_early_khz=`) or ~half of boots hang
/// in clock calibration.
pub fn tsc_khz(paths: &HostPaths) -> Option<u64> {
    let text = std::fs::read_to_string(&paths.cpuinfo).ok()?;
    parse_tsc_khz(&text)
}

fn parse_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let first_cpu = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        first_cpu
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let flags = field("flags")?;
    if !flags.split_whitespace().any(|f| f == "constant_tsc") {
        return None;
    }
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(modules: &[&str], kvm: bool) -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("module");
        for m in modules {
            std::fs::create_dir_all(sys.join(m)).unwrap();
        }
        let dev_kvm = dir.path().join("kvm");
        if kvm {
            std::fs::write(&dev_kvm, b"").unwrap();
        }
        let paths = HostPaths {
            dev_kvm,
            sys_module: sys,
            ..HostPaths::system()
        };
        (dir, paths)
    }

    #[test]
    fn classifies_kvm() {
        let (_d, p) = fake_host(&["kvm", "kvm_pvm"], true);
        assert_eq!(kvm_kind(&p), KvmKind::Pvm);
        let (_d, p) = fake_host(&["kvm", "kvm_intel"], true);
        assert_eq!(
            kvm_kind(&p),
            KvmKind::Hardware {
                module: "kvm_intel".into()
            }
        );
        assert!(kvm_kind(&p).runs_stock_guests());
        let (_d, p) = fake_host(&["kvm"], true);
        assert_eq!(kvm_kind(&p), KvmKind::Unknown);
        let (_d, p) = fake_host(&["kvm_intel"], false);
        assert!(matches!(kvm_kind(&p), KvmKind::Absent { .. }));
    }

    #[test]
    fn tsc_from_cpuinfo() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2445.402\nflags\t\t: fpu tsc constant_tsc\n\nprocessor\t: 1\n";
        assert_eq!(parse_tsc_khz(info), Some(2445402));
        assert_eq!(parse_tsc_khz("cpu MHz : 2000\nflags : fpu\n"), None);
    }

    #[test]
    fn finds_programs() {
        assert!(find_program(Path::new("sh")).is_some());
        assert!(find_program(Path::new("/nonexistent/qemu")).is_none());
        assert!(find_program(Path::new("husk-no-such-program")).is_none());
    }

    #[test]
    fn finds_the_vsock_backend_beside_the_executable_first() {
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        let paths = HostPaths {
            vsock_backend: "/nonexistent/husk-vhost-user".into(),
            ..HostPaths::system()
        };
        assert_eq!(find_vsock_backend(&paths), None);
        // The test binary itself stands in for a program beside the executable.
        let me = std::env::current_exe().unwrap();
        let paths = HostPaths {
            vsock_backend: me.file_name().unwrap().into(),
            ..HostPaths::system()
        };
        assert_eq!(
            find_vsock_backend(&paths),
            Some(exe_dir.join(me.file_name().unwrap()))
        );
        let paths = HostPaths {
            vsock_backend: "sh".into(),
            ..HostPaths::system()
        };
        assert!(find_vsock_backend(&paths).is_some());
    }
}
