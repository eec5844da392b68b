//! vhost-user back ends: husk's device models served to an external VMM (QEMU) over a
//! vhost-user socket, so the same device code faces a real Linux guest under QEMU-TCG.
//!
//! Each back end adapts a model (`devices::virtio::<dev>`) to `vhost-user-backend`'s
//! `VhostUserBackendMut`: the framework's vrings give the model its `virtio_queue::Queue`s, its
//! kick eventfds and its call eventfds. Must never reimplement a device's behaviour here.

pub mod block;
pub mod vsock;
