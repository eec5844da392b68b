//! The `builtin` back end: husk's own VMM ([`husk_vmm`]) runs the VM inside this process, on
//! hardware virtualisation only (`/dev/kvm` from kvm_intel or kvm_amd). Devices: serial console,
//! i8042 (reset ends the VM), the boot timer husk-init writes when it is ready, virtio-mmio
//! vsock (hybrid, the same muxer QEMU's back end serves), rng, block (disks), and virtio-fs
//! through `virtiofsd`. Pod networking (virtio-net on a tap) is QEMU's for now.
//!
//! Owns turning a [`VmConfig`] into a built VM and handing it to `machine::BuiltinMachine`.
//! Must never leave anything behind on an error path: every process is a [`crate::process::ChildProcess`],
//! the run directory a [`crate::run_dir::RunDir`], and a VMM that was built is stopped when dropped.

mod machine;

use std::path::PathBuf;
use std::time::Instant;

use husk_protocols::cmdline::BOOT_TIMER;
use husk_protocols::ports::GUEST_CID;
use husk_vmm::arch::x86_64::layout::BOOT_TIMER_ADDRESS;
use husk_vmm::builder::{BootSource, SerialOutput, VmBuilder, VmSpec};
use husk_vmm::devices::virtio::block::Block;
use husk_vmm::devices::virtio::rng::Rng;
use husk_vmm::devices::virtio::vsock::Vsock;
use husk_vmm::seccomp::Enforcement;

use crate::backend::Plan;
use crate::config::VmConfig;
use crate::error::VmError;
use crate::host_probe::{self, HostPaths};
use crate::serial::Serial;
use crate::stage::Staged;
use crate::vm::{Vm, VmParts};
use crate::{virtiofs, Hypervisor};

use machine::BuiltinMachine;

/// The builtin back end, configured for this host.
#[derive(Debug, Clone)]
pub struct BuiltinBackend {
    plan: Plan,
    /// Only needed by VMs with shared directories.
    virtiofsd: Option<PathBuf>,
    seccomp: Enforcement,
    /// Under `auto`: QEMU (with KVM) for VMs that need a device the builtin VMM lacks.
    fallback: Option<crate::qemu::QemuBackend>,
}

impl BuiltinBackend {
    pub fn new(plan: Plan, paths: &HostPaths) -> Self {
        Self {
            plan,
            virtiofsd: host_probe::find_program(&paths.virtiofsd),
            seccomp: Enforcement::Kill,
            fallback: None,
        }
    }

    /// Sends VMs with network devices (no virtio-net here yet) to `fallback` instead of
    /// refusing them.
    pub fn with_fallback(mut self, fallback: Option<crate::qemu::QemuBackend>) -> Self {
        self.fallback = fallback;
        self
    }
}

/// The kernel command-line words the builtin VMM adds to husk's own (`husk_vmm`'s defaults come
/// first: serial console, `reboot=k` through the i8042, no PCI).
fn cmdline_extra(config: &VmConfig) -> String {
    let mut words = vec![
        "quiet".to_owned(),
        format!("{BOOT_TIMER}={BOOT_TIMER_ADDRESS:#x}"),
    ];
    words.extend(config.cmdline_words());
    words.join(" ")
}

impl Hypervisor for BuiltinBackend {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn describe(&self) -> String {
        format!("builtin (kvm): {}", self.plan.reason)
    }

    fn boot(&self, config: &VmConfig) -> Result<Vm, VmError> {
        if !config.nics.is_empty() {
            if let Some(qemu) = &self.fallback {
                tracing::info!(vm = %config.id, "network devices: this VM runs on QEMU with KVM (the builtin VMM has no virtio-net yet)");
                return qemu.boot(config);
            }
            return Err(VmError::BadNic(
                "the builtin VMM has no virtio-net device yet: run pods with a network \
                 namespace on the qemu back end (hypervisor.backend = \"qemu\" or --backend qemu)"
                    .into(),
            ));
        }
        let _span = tracing::info_span!(
            "vm.launch",
            otel.name = "vm launch",
            vm.backend = "builtin",
            vm.id = %config.id,
            vm.memory_mib = config.memory_mib,
            vm.vcpus = config.vcpus,
        )
        .entered();
        let vcpus = u8::try_from(config.vcpus)
            .map_err(|_| VmError::BadConfig(format!("{} vCPUs is too many", config.vcpus)))?;
        let Staged {
            run,
            run_dir,
            log_dir,
            vsock_path,
            init_listener,
            trace_listener,
        } = Staged::new(config)?;

        let mut virtiofsd = Vec::new();
        let mut fs_devices = Vec::new();
        for share in &config.shares {
            let (process, socket) =
                virtiofs::spawn(self.virtiofsd.as_deref(), share, &run_dir, &log_dir)?;
            virtiofsd.push(process);
            fs_devices.push(
                husk_vmm::devices::virtio::fs::Fs::new(&socket, &share.tag, 1).map_err(|e| {
                    VmError::BackendFailed {
                        what: "virtio-fs",
                        detail: e.to_string(),
                    }
                })?,
            );
        }

        let (serial_out, serial_in) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| VmError::io("the serial console pipe")(e.into()))?;
        let spec = VmSpec {
            vcpus,
            mem_mib: u64::from(config.memory_mib),
            boot: BootSource::Kernel {
                kernel: config.kernel.clone(),
                initrd: Some(config.initrd.clone()),
                cmdline_extra: cmdline_extra(config),
            },
            serial: SerialOutput::Discard,
            boot_timer: true,
            seccomp: self.seccomp,
        };
        let vsock =
            Vsock::new(GUEST_CID.into(), &vsock_path).map_err(|e| VmError::BackendFailed {
                what: "vsock",
                detail: e.to_string(),
            })?;
        let mut builder = VmBuilder::new(spec);
        builder
            .serial_writer(Box::new(std::fs::File::from(serial_in)))
            .add_virtio(Box::new(vsock))
            .add_virtio(Box::new(Rng::new()));
        for fs in fs_devices {
            builder.add_virtio(Box::new(fs));
        }
        for disk in &config.disks {
            let block =
                Block::open(&disk.path, disk.read_only, disk.serial.as_deref()).map_err(|e| {
                    VmError::BackendFailed {
                        what: "virtio-blk",
                        detail: e.to_string(),
                    }
                })?;
            builder.add_virtio(Box::new(block));
        }
        let launched_at = Instant::now();
        let vmm = builder.build().map_err(|e| VmError::BackendFailed {
            what: "the builtin VMM",
            detail: e.to_string(),
        })?;
        let machine = BuiltinMachine::start(vmm, virtiofsd)?;
        let serial = Serial::start(
            std::fs::File::from(serial_out),
            Some(machine.console()),
            &log_dir.join("serial.log"),
        )
        .map_err(VmError::io("starting the serial console reader"))?;
        tracing::debug!(vm = %config.id, "VM launched on the builtin VMM");
        Ok(Vm::from_parts(VmParts {
            id: config.id.clone(),
            machine: Box::new(machine),
            serial,
            run_dir: run,
            vsock_path,
            log_dir,
            launched_at,
            init_listener,
            trace_listener,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_the_boot_timer_before_the_callers_words() {
        let mut c = VmConfig::new("/k", "/i");
        c.extra_cmdline = vec!["husk.hostname=x".into()];
        assert_eq!(
            cmdline_extra(&c),
            "quiet husk.boot_timer=0xc0000000 husk.hostname=x"
        );
    }
}
