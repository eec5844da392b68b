//! virtio-fs: a vhost-user front end to virtiofsd (stub).
