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
    /// `qemu` or `builtin`.
    pub backend: &'static str,
    /// How guest code runs (always KVM for `builtin`).
    pub accel: Accel,
    /// The QEMU binary (`qemu` only).
    pub qemu: Option<PathBuf>,
    pub reason: String,
}

/// Decides how to run VMs on a host with `kvm`, where QEMU resolves to `qemu` (if installed).
///
/// `auto` takes the builtin VMM wherever `/dev/kvm` is hardware virtualisation (it boots
/// Linux in-process, faster and smaller than QEMU), and QEMU with its software CPU elsewhere.
pub fn plan(
    choice: BackendChoice,
    kvm: &KvmKind,
    qemu: Option<PathBuf>,
    qemu_name: &std::path::Path,
) -> Result<Plan, VmError> {
    let builtin = || Plan {
        backend: "builtin",
        accel: Accel::Kvm,
        qemu: None,
        reason: format!(
            "/dev/kvm is {}, so husk's own VMM, in-process",
            kvm.describe()
        ),
    };
    match choice {
        BackendChoice::Builtin if kvm.runs_stock_guests() => return Ok(builtin()),
        BackendChoice::Builtin => {
            return Err(VmError::BackendUnavailable {
                backend: "builtin",
                why: format!(
                    "it needs hardware virtualisation (kvm_intel or kvm_amd) to boot Linux, and \
                     /dev/kvm is {}; use --backend qemu (or auto), which runs the guest on \
                     QEMU's software CPU here",
                    kvm.describe()
                ),
            })
        }
        BackendChoice::Auto if kvm.runs_stock_guests() => return Ok(builtin()),
        BackendChoice::Auto | BackendChoice::Qemu => {}
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
            format!("/dev/kvm is {}; QEMU with KVM as asked", kvm.describe()),
        )
    } else {
        (
            Accel::Tcg,
            format!(
                "/dev/kvm is {}, so QEMU's software CPU (TCG); the builtin VMM needs \
                 hardware virtualisation",
                kvm.describe()
            ),
        )
    };
    Ok(Plan {
        backend: "qemu",
        accel,
        qemu: Some(qemu),
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
    fn auto_uses_qemu_tcg_on_pvm_and_the_builtin_vmm_on_hardware() {
        let q = Some(PathBuf::from("/usr/bin/qemu-system-x86_64"));
        let name = std::path::Path::new("qemu-system-x86_64");
        let p = plan(BackendChoice::Auto, &KvmKind::Pvm, q.clone(), name).unwrap();
        assert_eq!((p.backend, p.accel), ("qemu", Accel::Tcg));
        assert!(p.reason.contains("kvm_pvm"), "{}", p.reason);
        assert!(
            p.reason.contains("builtin VMM needs hardware"),
            "{}",
            p.reason
        );
        let hw = KvmKind::Hardware {
            module: "kvm_intel".into(),
        };
        let p = plan(BackendChoice::Auto, &hw, None, name).unwrap();
        assert_eq!((p.backend, p.accel, p.qemu), ("builtin", Accel::Kvm, None));
        let p = plan(BackendChoice::Qemu, &hw, q, name).unwrap();
        assert_eq!((p.backend, p.accel), ("qemu", Accel::Kvm));
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
    fn builtin_without_hardware_virtualisation_says_why_and_what_to_use() {
        let e = plan(
            BackendChoice::Builtin,
            &KvmKind::Pvm,
            None,
            std::path::Path::new("q"),
        )
        .unwrap_err();
        assert!(matches!(e, VmError::BackendUnavailable { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("kvm_pvm") && msg.contains("--backend qemu"),
            "{msg}"
        );
        assert!("bogus".parse::<BackendChoice>().is_err());
    }
}
