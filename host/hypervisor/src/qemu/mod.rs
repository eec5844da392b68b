//! The `qemu` back end: an external `qemu-system-x86_64 -M microvm` (KVM where it can run a
//! stock guest, TCG otherwise) with a vhost-user vsock back end process for hybrid vsock.
//!
//! Owns starting and stopping those processes. Must never leave one behind: every process is
//! a [`ChildProcess`] (killed and reaped on drop) and every socket lives in the VM's run
//! directory (removed on drop), including on every error path of [`QemuBackend::boot`].

mod cmdline;
mod qmp;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_protocols::ports::GUEST_CID;

use crate::backend::Plan;
use crate::config::VmConfig;
use crate::error::VmError;
use crate::helper_process::{log_file, log_tail, spawn_backend};
use crate::host_probe::{self, HostPaths};
use crate::process::{die_with_parent, pass_fds, ChildProcess};
use crate::serial::Serial;
use crate::stage::Staged;
use crate::vm::{Machine, Vm, VmParts};
use crate::{virtiofs, Hypervisor};

pub use cmdline::kernel_cmdline;

/// QMP command timeout.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// QEMU's fd number for the first tap device (0-2 are its stdio).
const FIRST_NIC_FD: i32 = 3;

/// The QEMU back end, configured for this host.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    plan: Plan,
    vsock_backend: PathBuf,
    /// husk-vhost-user for block devices (the vsock back end too, except in the vsock
    /// benchmark's reference runs).
    device_backend: Option<PathBuf>,
    /// Only needed by VMs with shared directories.
    virtiofsd: Option<PathBuf>,
    tsc_khz: Option<u64>,
}

impl QemuBackend {
    /// Resolves the tools the back end needs on the host described by `paths`.
    pub fn new(plan: Plan, paths: &HostPaths) -> Result<Self, VmError> {
        let vsock_backend =
            host_probe::find_vsock_backend(paths).ok_or(VmError::ToolMissing {
                what: "the vhost-user vsock back end (husk-vhost-user)",
                path: paths.vsock_backend.clone(),
                fix: "build it with `cargo build -p husk-vmm --bin husk-vhost-user` (or run scripts/setup.sh), \
                      next to husk or in $PATH",
            })?;
        let husk_devices = HostPaths {
            vsock_backend: host_probe::VSOCK_BACKEND.into(),
            ..paths.clone()
        };
        Ok(Self {
            plan,
            vsock_backend,
            device_backend: host_probe::find_vsock_backend(&husk_devices),
            virtiofsd: host_probe::find_program(&paths.virtiofsd),
            tsc_khz: host_probe::tsc_khz(paths),
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// The vsock back end's arguments: husk's own (`husk-vhost-user vsock ...`), or, for the vsock
/// benchmark's reference run only, rust-vmm's `vhost-device-vsock` (`--vm guest-cid=...`), told
/// apart by the program's file name.
fn vsock_args(program: &Path, vhost_socket: &Path, vsock_path: &Path) -> Vec<OsString> {
    if program.file_name() == Some(std::ffi::OsStr::new(REFERENCE_VSOCK)) {
        let mut vm = OsString::from(format!("guest-cid={GUEST_CID},socket="));
        vm.push(vhost_socket);
        vm.push(",uds-path=");
        vm.push(vsock_path);
        return vec!["--vm".into(), vm];
    }
    vec![
        "vsock".into(),
        "--socket".into(),
        vhost_socket.into(),
        "--uds-path".into(),
        vsock_path.into(),
        "--guest-cid".into(),
        GUEST_CID.to_string().into(),
    ]
}

/// rust-vmm's vhost-user vsock back end: the reference of `husk bench vsock`.
pub const REFERENCE_VSOCK: &str = "vhost-device-vsock";

/// QEMU and its vsock back end, for one VM.
#[derive(Debug)]
struct QemuMachine {
    qemu: ChildProcess,
    vsock: ChildProcess,
    virtiofsd: Vec<ChildProcess>,
    /// `husk-vhost-user block`, one per disk.
    disks: Vec<ChildProcess>,
    qmp: PathBuf,
    qemu_log: PathBuf,
}

impl Machine for QemuMachine {
    fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.qemu.pidfd()
    }

    fn try_exit(&mut self) -> Option<String> {
        self.qemu.try_status().map(|s| s.to_string())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<String> {
        self.qemu.wait_timeout(timeout).map(|s| s.to_string())
    }

    fn pause(&mut self) -> Result<(), VmError> {
        qmp::execute(&self.qmp, "stop", QMP_TIMEOUT).map_err(|detail| VmError::BackendFailed {
            what: "QMP stop",
            detail,
        })
    }

    fn resume(&mut self) -> Result<(), VmError> {
        qmp::execute(&self.qmp, "cont", QMP_TIMEOUT).map_err(|detail| VmError::BackendFailed {
            what: "QMP cont",
            detail,
        })
    }

    fn kill(&mut self) {
        self.qemu.kill();
        self.vsock.kill();
        for d in self.virtiofsd.iter_mut().chain(&mut self.disks) {
            d.kill();
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.qemu.pid(), self.vsock.pid()];
        pids.extend(self.virtiofsd.iter().map(ChildProcess::pid));
        pids.extend(self.disks.iter().map(ChildProcess::pid));
        pids
    }

    fn diagnostics(&self) -> Option<String> {
        let len = std::fs::metadata(&self.qemu_log)
            .map(|m| m.len())
            .unwrap_or(0);
        (len > 0).then(|| log_tail(&self.qemu_log))
    }
}

impl Hypervisor for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn describe(&self) -> String {
        format!("qemu ({}): {}", self.plan.accel.name(), self.plan.reason)
    }

    fn boot(&self, config: &VmConfig) -> Result<Vm, VmError> {
        let _span = tracing::info_span!(
            "vm.launch",
            otel.name = "vm launch",
            vm.backend = "qemu",
            vm.accel = self.plan.accel.name(),
            vm.id = %config.id,
            vm.memory_mib = config.memory_mib,
            vm.vcpus = config.vcpus,
        )
        .entered();
        crate::config::check_nics(&config.nics).map_err(VmError::BadNic)?;
        let Staged {
            run,
            run_dir,
            log_dir,
            vsock_path,
            init_listener,
            trace_listener,
        } = Staged::new(config)?;
        let vhost_socket = run_dir.join("vhost-vsock.sock");
        let qmp_socket = run_dir.join("qmp.sock");

        let vsock_log = log_dir.join("vsock-backend.log");
        let vsock = spawn_backend(
            "the vhost-user vsock back end",
            &self.vsock_backend,
            &vsock_args(&self.vsock_backend, &vhost_socket, &vsock_path),
            &vhost_socket,
            &vsock_log,
        )?;

        let mut virtiofsd = Vec::new();
        let mut shares = Vec::new();
        for share in &config.shares {
            let (process, socket) =
                virtiofs::spawn(self.virtiofsd.as_deref(), share, &run_dir, &log_dir)?;
            virtiofsd.push(process);
            shares.push((share.tag.clone(), socket));
        }

        let mut disks = Vec::new();
        let mut disk_sockets = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let program = self.device_backend.as_ref().ok_or_else(|| VmError::ToolMissing {
                what: "husk-vhost-user (needed for disks)",
                path: host_probe::VSOCK_BACKEND.into(),
                fix: "build it with `cargo build -p husk-vmm --bin husk-vhost-user` (or run scripts/setup.sh)",
            })?;
            let socket = run_dir.join(format!("blk-{i}.sock"));
            let mut args: Vec<OsString> = vec![
                "block".into(),
                "--socket".into(),
                socket.clone().into(),
                "--path".into(),
                disk.path.clone().into(),
            ];
            if disk.read_only {
                args.push("--read-only".into());
            }
            if let Some(serial) = &disk.serial {
                args.extend(["--serial".into(), serial.into()]);
            }
            let log = log_dir.join(format!("block-{i}.log"));
            disks.push(spawn_backend(
                "husk-vhost-user block",
                program,
                &args,
                &socket,
                &log,
            )?);
            disk_sockets.push(socket);
        }

        // Each tap fd is QEMU's fd FIRST_NIC_FD + i.
        let nics: Vec<(i32, String)> = config
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| (FIRST_NIC_FD + i as i32, n.mac.clone()))
            .collect();
        let cmdline = kernel_cmdline(
            if config.icount { None } else { self.tsc_khz },
            &config.cmdline_words(),
        );
        let args = cmdline::QemuArgs {
            name: &config.id,
            accel: self.plan.accel,
            icount: config.icount,
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            kernel: &config.kernel,
            initrd: &config.initrd,
            cmdline: &cmdline,
            vhost_vsock_socket: &vhost_socket,
            qmp_socket: &qmp_socket,
            shares: &shares,
            nics: &nics,
            disks: &disk_sockets,
        };
        let qemu_log = log_dir.join("qemu.log");
        let launched_at = Instant::now();
        let Some(qemu) = &self.plan.qemu else {
            return Err(VmError::BackendUnavailable {
                backend: "qemu",
                why: "no QEMU binary in the plan".into(),
            });
        };
        let mut cmd = Command::new(qemu);
        die_with_parent(&mut cmd);
        pass_fds(
            &mut cmd,
            config.nics.iter().map(|n| n.tap.as_raw_fd()).collect(),
            FIRST_NIC_FD,
        );
        let mut child = cmd
            .args(cmdline::argv(&args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(&qemu_log)?)
            .spawn()
            .map_err(|source| VmError::Spawn {
                what: "qemu-system-x86_64",
                source,
            })?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let qemu = ChildProcess::new("qemu", child).map_err(|source| VmError::Spawn {
            what: "qemu",
            source,
        })?;
        let serial = Serial::start(
            stdout
                .ok_or_else(|| VmError::io("qemu stdout")(std::io::ErrorKind::BrokenPipe.into()))?,
            stdin.map(|s| Box::new(s) as Box<dyn std::io::Write + Send>),
            &log_dir.join("serial.log"),
        )
        .map_err(VmError::io("starting the serial console reader"))?;
        tracing::debug!(vm = %config.id, qemu = qemu.pid(), backend = vsock.pid(), "VM launched");

        Ok(Vm::from_parts(VmParts {
            id: config.id.clone(),
            machine: Box::new(QemuMachine {
                qemu,
                vsock,
                virtiofsd,
                disks,
                qmp: qmp_socket,
                qemu_log,
            }),
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
