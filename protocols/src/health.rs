//! `husk.health.v1`: agent liveness, served beside the agent API on the same vsock port.
//!
//! Re-exports the generated messages, client and service trait. Must never contain handlers.

pub use crate::generated::health::*;
pub use crate::generated::health_ttrpc::{create_health, Health, HealthClient};

/// Protocol package name.
pub const PROTOCOL: &str = "husk.health.v1";
