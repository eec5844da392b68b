//! The errors of the hypervisor interface: each names what went wrong and how to fix it.
//!
//! Owns the error enum only. Must never format log output or decide policy.

use std::path::PathBuf;
use std::time::Duration;

use crate::vsock::VsockError;

/// Shown after the last serial lines in errors about the guest.
fn lines(l: &[String]) -> String {
    if l.is_empty() {
        return " (the guest printed nothing on its serial console)".into();
    }
    let mut s = String::from("; last serial lines:");
    for line in l {
        s.push_str("\n    | ");
        s.push_str(line);
    }
    s
}

fn backend_said(log: &Option<String>) -> String {
    log.as_ref()
        .map(|l| format!("; the back end said: {l}"))
        .unwrap_or_default()
}

/// Why a VM could not be booted, reached or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("guest kernel not found at {}: build it with `kernel/build.sh` (or pass --kernel PATH)", path.display())]
    KernelMissing { path: PathBuf },
    #[error("{} is not a bootable x86-64 kernel ({why}): rebuild it with `kernel/build.sh --force` (or pass --kernel PATH)", path.display())]
    KernelInvalid { path: PathBuf, why: String },
    #[error("guest image not found at {}: build it with `husk image build` (or pass --image PATH)", path.display())]
    ImageMissing { path: PathBuf },
    #[error("{} is not an initramfs ({why}): rebuild it with `husk image build`", path.display())]
    ImageInvalid { path: PathBuf, why: String },
    #[error("cannot run VMs on this host: /dev/kvm is {kvm} and QEMU ({}) is not installed; install it with `apt-get install qemu-system-x86`", qemu.display())]
    NoHypervisor { kvm: String, qemu: PathBuf },
    #[error("the {backend} back end is not available: {why}")]
    BackendUnavailable { backend: &'static str, why: String },
    #[error("{what} not found ({}): {fix}", path.display())]
    ToolMissing {
        what: &'static str,
        path: PathBuf,
        fix: &'static str,
    },
    #[error("invalid shared directory: {0}")]
    BadShare(String),
    #[error("invalid VM configuration: {0}")]
    BadConfig(String),
    #[error("invalid network device: {0}")]
    BadNic(String),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} failed to start: {detail}")]
    BackendFailed { what: &'static str, detail: String },
    #[error("the guest kernel panicked: {message}{}", lines(last_lines))]
    GuestPanicked {
        message: String,
        last_lines: Vec<String>,
    },
    #[error(
        "the VM exited ({status}) before the guest reported ready{}{}",
        backend_said(backend_log),
        lines(last_lines)
    )]
    GuestExited {
        status: String,
        backend_log: Option<String>,
        last_lines: Vec<String>,
    },
    #[error(
        "the guest did not report ready within {timeout:?}{}",
        lines(last_lines)
    )]
    NotReady {
        timeout: Duration,
        last_lines: Vec<String>,
    },
    #[error("the guest broke the husk.init protocol: {detail}")]
    Protocol { detail: String },
    #[error("the guest speaks {guest}, this host speaks {host}: rebuild the guest image with this husk (`husk image build`)")]
    VersionMismatch { guest: String, host: String },
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(
        "the guest did not shut down within {timeout:?}; the VM was killed{}",
        lines(last_lines)
    )]
    ShutdownTimeout {
        timeout: Duration,
        last_lines: Vec<String>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl VmError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| VmError::Io { context, source }
    }
}
