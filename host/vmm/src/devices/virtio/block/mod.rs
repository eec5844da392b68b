//! virtio-blk (stub).
