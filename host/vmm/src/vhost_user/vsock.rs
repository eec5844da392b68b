//! The vsock model as a vhost-user back end (stub).

use std::path::PathBuf;

/// What `husk-vhost-user vsock` serves.
#[derive(Debug, Clone)]
pub struct VsockBackendConfig {
    /// The vhost-user socket QEMU connects to (`-chardev socket,path=`).
    pub socket: PathBuf,
    /// The hybrid vsock Unix socket (`CONNECT <port>\n`; guest connections to `<uds>_<port>`).
    pub uds_path: PathBuf,
    /// The guest's context id.
    pub guest_cid: u64,
}

/// Why the back end stopped.
#[derive(Debug, thiserror::Error)]
pub enum VsockBackendError {
    #[error("not implemented yet")]
    Unimplemented,
}

/// Serves one VM until QEMU disconnects.
pub fn serve(config: &VsockBackendConfig) -> Result<(), VsockBackendError> {
    let _ = config;
    Err(VsockBackendError::Unimplemented)
}
