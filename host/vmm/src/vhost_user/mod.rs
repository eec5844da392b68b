//! vhost-user back ends: husk's device models served to an external VMM (QEMU) over a
//! vhost-user socket, so the same device code faces a real Linux guest under QEMU-TCG.
//!
//! Each back end adapts a model (`devices::virtio::<dev>`) to `vhost-user-backend`'s
//! `VhostUserBackendMut`: the framework's vrings give the model its `virtio_queue::Queue`s, its
//! kick eventfds and its call eventfds. Must never reimplement a device's behaviour here.

pub mod block;
pub mod vsock;

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};

use crate::seccomp::{self, Enforcement, SeccompError, ThreadKind};

/// Why serving a front end ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("accepting the front end: {0}")]
    Accept(String),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("serving: {0}")]
    Serve(String),
}

/// Accepts one front end on `listener`, confines the whole process with the device filter
/// (setup is over: the front end is connected and every thread exists), and serves until the
/// front end leaves, which is how a VM ends (not an error).
pub fn serve_one<T>(
    daemon: &mut VhostUserDaemon<T>,
    listener: &mut Listener,
    confinement: Enforcement,
) -> Result<(), ServeError>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: vhost_user_backend::bitmap::BitmapReplace
        + vm_memory::bitmap::NewBitmap
        + Clone
        + Send
        + Sync,
    T::Vring: Clone + Send + Sync,
{
    daemon
        .start(listener)
        .map_err(|e| ServeError::Accept(e.to_string()))?;
    seccomp::apply_to_process(ThreadKind::Device, confinement)?;
    match daemon.wait() {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(ServeError::Serve(e.to_string())),
    }
}
