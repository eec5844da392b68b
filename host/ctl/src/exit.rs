//! Exit codes, so scripts can tell a host problem from a guest problem.
//!
//! `husk run` exits with the container's code, or 125 when husk failed and 127 when the command
//! is not in the image. Everything else: 0 success · 1 other error · 2 usage (clap) · 3 this host cannot run husk as set up (missing
//! KVM/QEMU/tool, kernel or image) · 4 the guest failed (panic, early exit, no readiness,
//! protocol). Owns the mapping only.

use std::process::ExitCode;

use husk_hypervisor::VmError;

pub const HOST_NOT_READY: u8 = 3;
pub const GUEST_FAILED: u8 = 4;

/// The exit code for an error chain.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    if let Some(r) = err
        .chain()
        .find_map(|e| e.downcast_ref::<crate::run::RunError>())
    {
        return ExitCode::from(r.code);
    }
    let Some(vm) = err.chain().find_map(|e| e.downcast_ref::<VmError>()) else {
        return ExitCode::FAILURE;
    };
    ExitCode::from(match vm {
        VmError::KernelMissing { .. }
        | VmError::KernelInvalid { .. }
        | VmError::ImageMissing { .. }
        | VmError::ImageInvalid { .. }
        | VmError::NoHypervisor { .. }
        | VmError::BackendUnavailable { .. }
        | VmError::ToolMissing { .. } => HOST_NOT_READY,
        VmError::GuestPanicked { .. }
        | VmError::GuestExited { .. }
        | VmError::NotReady { .. }
        | VmError::Protocol { .. }
        | VmError::VersionMismatch { .. }
        | VmError::ShutdownTimeout { .. } => GUEST_FAILED,
        _ => 1,
    })
}
