//! Everything the husk host and guest must agree on: vsock ports, well-known guest paths,
//! kernel command-line keys, the image manifest schema and the versioned wire protocols.
//!
//! This crate owns definitions only. It must never perform I/O beyond encoding and decoding
//! frames on a caller-supplied reader or writer, and never depend on host- or guest-only code.
//! A released protocol package (`husk.init.v1`, `husk.agent.v1`, …) only ever gains optional fields; anything
//! breaking becomes a new package.

pub mod agent;
pub mod capabilities;
pub mod cmdline;
pub mod console;
pub mod container_record;
pub mod containerd;
pub mod frame;
mod generated;
pub mod health;
pub mod init;
pub mod mac;
pub mod manifest;
pub mod ports;
pub mod stdio;
pub mod trace_context;
pub mod trace_wire;
