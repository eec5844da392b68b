//! containerd-shim-husk-v2: containerd's shim v2 for husk. containerd starts it per pod
//! (`ctr run --runtime io.containerd.husk.v2`, or a Kubernetes RuntimeClass); it boots the
//! pod's VM and drives the guest agent.
//!
//! This file owns start-up only. The shim's life is in [`shim`], the Task service in
//! [`task`].

mod io;
mod metrics;
mod network;
mod pod;
mod rootfs;
mod shim;
mod task;
mod telemetry;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

#[tokio::main]
async fn main() {
    // Before any span: the tracing layer is process-wide.
    telemetry::install();
    containerd_shim::asynchronous::run::<shim::HuskShim>(RUNTIME_ID, None).await;
}
