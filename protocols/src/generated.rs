//! Code generated at build time from `proto/*.proto` (see build.rs). Never edited by hand;
//! the versioned modules ([`crate::agent`], [`crate::health`]) re-export what callers use.
#![allow(
    warnings,
    missing_debug_implementations,
    unused_qualifications,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::unwrap_used
)]

pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}
pub mod containerd_cgroups_v2 {
    include!(concat!(env!("OUT_DIR"), "/containerd_cgroups_v2.rs"));
}
pub mod console {
    include!(concat!(env!("OUT_DIR"), "/console.rs"));
}
