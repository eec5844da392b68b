//! Choosing a back end: `auto`, `qemu` or `builtin`, and for QEMU whether to use KVM or TCG.
//!
//! Owns the decision and its explanation (shown by `husk check`). Must never start anything.

use std::path::PathBuf;

use crate::error::VmError;
use crate::host_probe::{self, HostPaths, KvmKind};

/// What the user asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendChoice {
    #[default]
    Auto,
    Qemu,
    Builtin,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "qemu" => Ok(Self::Qemu),
            "builtin" => Ok(Self::Builtin),
            other => Err(format!(
                "unknown back end {other:?}: use auto, qemu or builtin"
            )),
        }
    }
}

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software CPU.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The decision: which back end, with which accelerator, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub backend: &'static str,
    pub accel: Accel,
    pub qemu: PathBuf,
    pub reason: String,
}

/// Decides how to run VMs on a host with `kvm`, where QEMU resolves to `qemu` (if installed).
pub fn plan(
    choice: BackendChoice,
    kvm: &KvmKind,
    qemu: Option<PathBuf>,
    qemu_name: &std::path::Path,
) -> Result<Plan, VmError> {
    if choice == BackendChoice::Builtin {
        return Err(VmError::BackendUnavailable {
            backend: "builtin",
            why: "the embedded VMM cannot boot Linux yet; use --backend auto or qemu".into(),
        });
    }
    let Some(qemu) = qemu else {
        return Err(VmError::NoHypervisor {
            kvm: kvm.describe(),
            qemu: qemu_name.into(),
        });
    };
    let (accel, reason) = if kvm.runs_stock_guests() {
        (
            Accel::Kvm,
            format!(
                "/dev/kvm is {}; the builtin VMM cannot boot Linux yet, so QEMU with KVM",
                kvm.describe()
            ),
        )
    } else {
        (
            Accel::Tcg,
            format!(
                "/dev/kvm is {}, so QEMU's software CPU (TCG)",
                kvm.describe()
            ),
        )
    };
    Ok(Plan {
        backend: "qemu",
        accel,
        qemu,
        reason,
    })
}

/// [`plan`] for the host described by `paths`.
pub fn plan_for_host(choice: BackendChoice, paths: &HostPaths) -> Result<Plan, VmError> {
    let kvm = host_probe::kvm_kind(paths);
    plan(
        choice,
        &kvm,
        host_probe::find_program(&paths.qemu),
        &paths.qemu,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_tcg_on_pvm_and_kvm_on_hardware() {
        let q = Some(PathBuf::from("/usr/bin/qemu-system-x86_64"));
        let name = std::path::Path::new("qemu-system-x86_64");
        let p = plan(BackendChoice::Auto, &KvmKind::Pvm, q.clone(), name).unwrap();
        assert_eq!(p.accel, Accel::Tcg);
        assert!(p.reason.contains("kvm_pvm"));
        let hw = KvmKind::Hardware {
            module: "kvm_intel".into(),
        };
        assert_eq!(
            plan(BackendChoice::Auto, &hw, q, name).unwrap().accel,
            Accel::Kvm
        );
    }

    #[test]
    fn no_kvm_and_no_qemu_names_the_fix() {
        let e = plan(
            BackendChoice::Auto,
            &KvmKind::Absent {
                reason: "/dev/kvm: No such file or directory".into(),
            },
            None,
            std::path::Path::new("qemu-system-x86_64"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
        assert!(e.contains("/dev/kvm"), "{e}");
    }

    #[test]
    fn builtin_is_not_ready() {
        let e = plan(
            BackendChoice::Builtin,
            &KvmKind::Pvm,
            None,
            std::path::Path::new("q"),
        )
        .unwrap_err();
        assert!(matches!(e, VmError::BackendUnavailable { .. }));
        assert!("bogus".parse::<BackendChoice>().is_err());
    }
}
