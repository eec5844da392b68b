//! The block model as a vhost-user back end (stub).

use std::path::PathBuf;

/// What `husk-vhost-user block` serves.
#[derive(Debug, Clone)]
pub struct BlockBackendConfig {
    /// The vhost-user socket QEMU connects to.
    pub socket: PathBuf,
    /// The raw disk image.
    pub path: PathBuf,
    pub read_only: bool,
    /// The serial id the guest reads (VIRTIO_BLK_T_GET_ID), at most 20 bytes.
    pub serial: Option<String>,
}

/// Why the back end stopped.
#[derive(Debug, thiserror::Error)]
pub enum BlockBackendError {
    #[error("not implemented yet")]
    Unimplemented,
}

/// Serves one VM until QEMU disconnects.
pub fn serve(config: &BlockBackendConfig) -> Result<(), BlockBackendError> {
    let _ = config;
    Err(BlockBackendError::Unimplemented)
}
