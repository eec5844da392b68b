//! Helper processes a back end starts beside a VM (vhost-user device back ends, virtiofsd):
//! spawned with their output in a log file, tied to the host process's life, and waited for
//! until their socket exists.
//!
//! Owns starting them and reading their logs for errors. Must never leave one running on an
//! error path (each is a [`ChildProcess`], killed and reaped on drop).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::VmError;
use crate::process::{die_with_parent, ChildProcess};

/// How long a helper gets to create its socket.
const BACKEND_START: Duration = Duration::from_secs(10);

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(10).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("{} (log: {})", tail.join(" / "), path.display())
}

pub fn log_file(path: &Path) -> Result<std::fs::File, VmError> {
    std::fs::File::create(path).map_err(VmError::io(format!("creating {}", path.display())))
}

/// Starts a vhost-user back end (logging to `log`) and waits for its socket.
pub fn spawn_backend(
    what: &'static str,
    program: &Path,
    args: &[std::ffi::OsString],
    socket: &Path,
    log: &Path,
) -> Result<ChildProcess, VmError> {
    let mut cmd = Command::new(program);
    die_with_parent(&mut cmd);
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file(log)?)
        .stderr(log_file(log)?)
        .spawn()
        .map_err(|source| VmError::Spawn { what, source })?;
    let mut backend =
        ChildProcess::new(what, child).map_err(|source| VmError::Spawn { what, source })?;
    wait_for_socket(&mut backend, socket, log)?;
    Ok(backend)
}

/// Waits until the back end's socket exists, failing early if the back end dies.
fn wait_for_socket(backend: &mut ChildProcess, socket: &Path, log: &Path) -> Result<(), VmError> {
    let deadline = Instant::now() + BACKEND_START;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if backend.try_status().is_some() {
            return Err(VmError::BackendFailed {
                what: backend.name(),
                detail: log_tail(log),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::BackendFailed {
                what: backend.name(),
                detail: format!(
                    "no socket at {} after {BACKEND_START:?}; {}",
                    socket.display(),
                    log_tail(log)
                ),
            });
        }
        // The socket appears within milliseconds; its exit is watched through the pidfd.
        backend.wait_timeout(Duration::from_millis(2));
    }
}
