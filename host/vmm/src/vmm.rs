//! The running VM (stub).
