//! Opening `/dev/kvm`, checking its API version and the capabilities the VMM relies on, and
//! telling hardware virtualisation from the software `kvm_pvm` module.
//!
//! Owns the system fd. Must never create a VM on its own (vm does); every error names the
//! problem and the fix.

use std::path::Path;

use kvm_bindings::CpuId;
use kvm_ioctls::Cap;

/// The device node.
pub const KVM_PATH: &str = "/dev/kvm";
/// The only stable KVM API version.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities the VMM cannot work without.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("{path} does not exist: load the kvm_intel or kvm_amd module (and enable virtualisation in the firmware), or use the qemu back end")]
    Missing { path: String },
    #[error("{path}: permission denied: run as root or add the user to the group owning {path} (usually `kvm`)")]
    Permission { path: String },
    #[error("{path}: cannot open: {source}")]
    Open {
        path: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "{path}: KVM API version {got}, need {KVM_API_VERSION}: the host kernel's KVM is unusable"
    )]
    ApiVersion { path: String, got: i32 },
    #[error("{path}: the host KVM lacks {cap}, which the VMM needs: use a newer host kernel or the qemu back end")]
    MissingCap { path: String, cap: &'static str },
    #[error("{path}: KVM_GET_SUPPORTED_CPUID failed: {source}")]
    Cpuid {
        path: String,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// What backs `/dev/kvm` on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavour {
    /// Intel VMX or AMD SVM: real guests run.
    Hardware,
    /// `kvm_pvm`: the KVM API works, but ring-0 guest code is emulated, so a stock Linux guest
    /// cannot run; tiny hand-made guests do.
    SoftwarePvm,
    /// No KVM module loaded.
    Absent,
}

/// Looks at the loaded modules (`/sys/module/kvm_{intel,amd,pvm}`).
pub fn flavour() -> KvmFlavour {
    flavour_in(Path::new("/sys/module"))
}

fn flavour_in(modules: &Path) -> KvmFlavour {
    if modules.join("kvm_intel").exists() || modules.join("kvm_amd").exists() {
        KvmFlavour::Hardware
    } else if modules.join("kvm_pvm").exists() {
        KvmFlavour::SoftwarePvm
    } else {
        KvmFlavour::Absent
    }
}

/// An open, checked `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    /// Opens [`KVM_PATH`] and checks it.
    pub fn open() -> Result<Self, KvmError> {
        Self::open_path(Path::new(KVM_PATH))
    }

    /// Opens `path` and checks its API version and [`REQUIRED_CAPS`].
    pub fn open_path(path: &Path) -> Result<Self, KvmError> {
        let p = path.display().to_string();
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| KvmError::Missing { path: p.clone() })?;
        let kvm = kvm_ioctls::Kvm::new_with_path(cpath).map_err(|source| match source.errno() {
            libc::ENOENT => KvmError::Missing { path: p.clone() },
            libc::EACCES | libc::EPERM => KvmError::Permission { path: p.clone() },
            _ => KvmError::Open {
                path: p.clone(),
                source,
            },
        })?;
        let got = kvm.get_api_version();
        if got != KVM_API_VERSION {
            return Err(KvmError::ApiVersion { path: p, got });
        }
        if let Some((_, cap)) = REQUIRED_CAPS.iter().find(|(c, _)| !kvm.check_extension(*c)) {
            return Err(KvmError::MissingCap { path: p, cap });
        }
        Ok(Self { kvm })
    }

    /// The rust-vmm handle.
    pub fn fd(&self) -> &kvm_ioctls::Kvm {
        &self.kvm
    }

    /// `KVM_GET_SUPPORTED_CPUID`, the base every vCPU's CPUID is filtered from.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| KvmError::Cpuid {
                path: KVM_PATH.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_follows_the_loaded_modules() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(flavour_in(d.path()), KvmFlavour::Absent);
        std::fs::create_dir(d.path().join("kvm_pvm")).unwrap();
        assert_eq!(flavour_in(d.path()), KvmFlavour::SoftwarePvm);
        std::fs::create_dir(d.path().join("kvm_intel")).unwrap();
        assert_eq!(flavour_in(d.path()), KvmFlavour::Hardware);
    }

    #[test]
    fn a_missing_device_names_the_path_and_the_fix() {
        let e = Kvm::open_path(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(e, KvmError::Missing { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/kvm") && msg.contains("kvm_intel"),
            "{msg}"
        );
    }
}
