//! virtio-rng (stub).
