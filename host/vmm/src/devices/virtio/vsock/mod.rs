//! virtio-vsock with the hybrid Unix-socket muxer (stub).
