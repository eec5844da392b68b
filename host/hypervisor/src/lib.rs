//! husk's hypervisor interface: boot a guest kernel and image in a VM, reach it over hybrid
//! vsock, read its serial console, learn when init is ready, and stop it without leaving
//! anything behind.
//!
//! Back ends: `qemu` (an external QEMU, KVM or TCG, with husk's own vhost-user vsock device)
//! and `builtin` (husk's embedded VMM, host/vmm, in-process, on hardware virtualisation). This crate must never run a container or
//! speak the agent protocol: it ends at "a VM whose init is ready".

pub mod artifacts;
pub mod backend;
pub mod boot_files;
pub mod builtin;
pub mod config;
pub mod error;
pub mod helper_process;
pub mod host_probe;
pub mod process;
pub mod qemu;
pub mod run_dir;
pub mod serial;
pub mod stage;
pub mod virtiofs;
pub mod vm;
pub mod vsock;

pub use backend::{Accel, BackendChoice, Plan};
pub use config::VmConfig;
pub use error::VmError;
pub use host_probe::HostPaths;
pub use vm::{BootReport, ExitReport, Vm};

/// A way of running VMs.
pub trait Hypervisor: std::fmt::Debug + Send + Sync {
    /// Short name (`qemu`, `builtin`).
    fn name(&self) -> &'static str;
    /// One line for people: what runs the guest and why.
    fn describe(&self) -> String;
    /// Boots a VM. The returned [`Vm`] owns every process and socket it started.
    fn boot(&self, config: &VmConfig) -> Result<Vm, VmError>;
}

/// The hypervisor `choice` resolves to on the host described by `paths`.
pub fn for_host(choice: BackendChoice, paths: &HostPaths) -> Result<Box<dyn Hypervisor>, VmError> {
    let plan = backend::plan_for_host(choice, paths)?;
    Ok(match plan.backend {
        "builtin" => {
            // Under `auto`, VMs that need what the builtin VMM lacks (virtio-net) go to QEMU
            // with KVM, where it is installed.
            let fallback = (choice == BackendChoice::Auto)
                .then(|| backend::plan_for_host(BackendChoice::Qemu, paths).ok())
                .flatten()
                .and_then(|p| qemu::QemuBackend::new(p, paths).ok());
            Box::new(builtin::BuiltinBackend::new(plan, paths).with_fallback(fallback))
        }
        _ => Box::new(qemu::QemuBackend::new(plan, paths)?),
    })
}
