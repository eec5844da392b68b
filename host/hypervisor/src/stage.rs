//! What every back end does before it starts anything for a VM: check the boot files and the
//! devices, make the VM's run directory (sockets) and log directory, and bind the init
//! channel's listener at `<vsock>_<INIT_PORT>` so husk-init can connect as soon as it runs.
//!
//! Owns those checks and paths only. Must never start a process or thread; the run directory
//! is removed again if the back end fails before a [`crate::Vm`] owns it.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use husk_protocols::ports::{INIT_PORT, TRACE_PORT};

use crate::boot_files;
use crate::config::{check_disks, VmConfig};
use crate::error::VmError;
use crate::run_dir::RunDir;
use crate::vm::listener_path;

/// A VM's checked configuration and its directories, ready for a back end to launch into.
#[derive(Debug)]
pub struct Staged {
    /// Removed on drop (until a [`crate::Vm`] takes it).
    pub run: RunDir,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The hybrid vsock socket the back end serves (`<run_dir>/vsock.sock`).
    pub vsock_path: PathBuf,
    pub init_listener: UnixListener,
    /// Bound at `<vsock>_<TRACE_PORT>` when the configuration traces: husk-tracer in the guest
    /// connects there to hand its spans over.
    pub trace_listener: Option<UnixListener>,
}

impl Staged {
    /// Checks `config`'s kernel, image, shares and disks, then makes the directories and the
    /// init listener. Network devices are each back end's to check.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        boot_files::check_kernel(&config.kernel)?;
        boot_files::check_initrd(&config.initrd)?;
        for share in &config.shares {
            share.validate().map_err(VmError::BadShare)?;
        }
        check_disks(&config.disks).map_err(VmError::BadConfig)?;
        let log_dir = config.log_dir();
        let run = RunDir::create(&config.run_root, &config.id)?;
        let run_dir = run.path().to_owned();
        std::fs::create_dir_all(&log_dir)
            .map_err(VmError::io(format!("creating {}", log_dir.display())))?;
        let vsock_path = run_dir.join("vsock.sock");
        let init_listener = UnixListener::bind(listener_path(&vsock_path, INIT_PORT))
            .map_err(VmError::io("binding the init channel listener"))?;
        let trace_listener = config
            .trace
            .then(|| UnixListener::bind(listener_path(&vsock_path, TRACE_PORT)))
            .transpose()
            .map_err(VmError::io("binding the trace listener"))?;
        Ok(Self {
            run,
            run_dir,
            log_dir,
            vsock_path,
            init_listener,
            trace_listener,
        })
    }
}
